"""An upstream's event stream cut into reads at random points reaches the client as the same
events, through both engines (mitmproxy's ended at the first event split over two reads)."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from peers.http_harness import http
from test_http_failures import CALL, HEADERS, RawServer, firewall_for, read_request


def sse_events(stream: str) -> list[str]:
    """The data of each event a client dispatches (the HTML standard's rules, LF/CRLF/CR ends)."""
    stream = stream.removeprefix("\ufeff")
    events, data, seen_data = [], [], False
    for line in stream.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]:
        if not line:
            if seen_data:
                events.append("\n".join(data))
            data, seen_data = [], False
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
            seen_data = True
    return events


def make_case(rng: random.Random) -> tuple[bytes, list[int]]:
    """A stream of notifications then the result for id 7, and where its writes end."""
    eol = rng.choice([b"\n", b"\r\n"])
    blocks = [b"\xef\xbb\xbf"] if rng.random() < 0.2 else []
    for n in range(rng.randint(0, 3)):
        if rng.random() < 0.3:
            blocks.append(b": ping" + eol + eol)
        text = "é✓" * rng.choice([1, 100, 5000, 20000]) + str(n)
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": text}}
        blocks.append(b"id: %d%sdata: %s%s%s" % (n, eol, json.dumps(note, ensure_ascii=False).encode(), eol, eol))
    result = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "done"}]}}
    blocks.append(b"data: " + json.dumps(result).encode() + eol + eol)
    stream = b"".join(blocks)
    cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.randint(1, 12))))
    return stream, cuts


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_random_splits_give_the_client_the_same_events(tmp_path, engine):
    rng = random.Random(20261207)
    cases = [make_case(rng) for _ in range(12)]
    current: list[tuple[bytes, list[int]]] = []

    def upstream(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while read_request(conn) is not None:
            stream, cuts = current[0]
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for start, end in zip([0, *cuts], [*cuts, len(stream)]):
                conn.sendall(b"%x\r\n%s\r\n" % (end - start, stream[start:end]))
                time.sleep(0.003)
            conn.sendall(b"0\r\n\r\n")

    with RawServer(upstream) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        for i, case in enumerate(cases):
            current[:] = [case]
            r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
            assert r.status_code == 200, i
            got = [json.loads(data) for data in sse_events(r.content.decode("utf-8"))]
            want = [json.loads(data) for data in sse_events(case[0].decode("utf-8"))]
            assert got == want, (i, case[1])
