"""The idle timeout (``proxy.idle_timeout_seconds``) closes idle connections only, on both
engines: a connection with an exchange in flight stays open however long it is silent."""

from __future__ import annotations

import json
import socket
import time

import pytest

from peers.http_harness import InProcessFirewall, make_config
from test_http_failures import CALL, HEADERS, RawServer, read_request

RESULT = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"late"}]}}'


def silent_then_answer(conn: socket.socket) -> None:
    """An SSE answer whose stream says nothing for 2.5 s (a slow tool), then the result."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    time.sleep(2.5)
    event = b"data: " + RESULT + b"\n\n"
    conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
    read_request(conn)  # (until the firewall closes its side)


def firewall(tmp_path, port: int, engine: str) -> InProcessFirewall:
    config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "up"}],
                         idle_timeout_seconds=1, upstream_timeout_seconds=5, client_timeout_seconds=5)
    return InProcessFirewall(config, engine=engine)


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_a_silent_stream_outlives_the_idle_timeout(tmp_path, engine):
    with RawServer(silent_then_answer) as server, firewall(tmp_path, server.port, engine) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        body = json.dumps(CALL).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()).encode()
        sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n%s" % (head, len(body), body))
        started = time.monotonic()
        sock.settimeout(8)
        answer = b""
        while not answer.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
            answer += chunk
        waited = time.monotonic() - started
        # Kept alive after the answer, then idle: closed about a second later.
        sock.settimeout(4)
        idle_from = time.monotonic()
        rest = sock.recv(100)
        closed_after = time.monotonic() - idle_from
        sock.close()
    assert b"late" in answer, answer[-300:]
    assert waited >= 2.4
    assert rest == b"" and 0.5 <= closed_after < 3.5, (rest, closed_after)
