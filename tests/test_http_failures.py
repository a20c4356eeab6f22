"""Upstream failures, oversized bodies and slow clients: a clear JSON-RPC error and an audit record."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from firewall import errors
from support import audit_rows
from peers.http_harness import InProcessFirewall, free_port, http, make_config

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class RawServer:
    """A TCP server whose every connection is handled by ``behaviour(sock)`` on a thread."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.behaviour(conn)
            except OSError:
                pass

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.sock.close()


def read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """One request from ``conn``: its head and its Content-Length body (None at end of input)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := conn.recv(65536)):
        body += chunk
    return head, body


def reset(conn: socket.socket) -> None:
    read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


def hang(conn: socket.socket) -> None:
    read_request(conn)
    time.sleep(4)


def broken_stream(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    event = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}\n\n'
    conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def firewall_for(tmp_path, port: int, *, engine: str = "lean", **limits) -> InProcessFirewall:
    config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "up"}],
                         upstream_timeout_seconds=1, client_timeout_seconds=1, limits=limits or None)
    return InProcessFirewall(config, engine=engine)


def reason_of(tmp_path, decision_id: str) -> dict:
    (row,) = audit_rows(tmp_path / "audit.duckdb", f"decision_id = '{decision_id}'")
    return row


@pytest.mark.parametrize("kind", ["refused", "reset", "timeout"])
def test_upstream_failures_become_jsonrpc_errors(tmp_path, kind):
    behaviours = {"reset": reset, "timeout": hang}
    if kind == "refused":
        server = None
        port = free_port()
    else:
        server = RawServer(behaviours[kind]).__enter__()
        port = server.port
    try:
        with firewall_for(tmp_path, port) as fw:
            started = time.monotonic()
            r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
            elapsed = time.monotonic() - started
    finally:
        if server is not None:
            server.__exit__()
    answer = r.json()
    assert r.status_code == (504 if kind == "timeout" else 502)
    assert answer["id"] == 7 and answer["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
    expected = {"refused": "refused", "reset": "connection", "timeout": "no response within 1 s"}[kind]
    assert expected in answer["error"]["message"].lower()
    assert elapsed < 3
    row = reason_of(tmp_path, answer["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and row["error_code"] == errors.UPSTREAM_UNAVAILABLE
    assert expected in row["error"].lower() and row["method"] == "tools/call" and row["message_id"] == "7"


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_stream_broken_off_midway_gets_an_error_event(tmp_path, engine):
    """The request left unanswered gets an error event and a record (on mitmproxy the client
    got the notification, then a close, and would wait for its answer for ever)."""
    with RawServer(broken_stream) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0]["method"] == "notifications/message"  # what came before the break went through
    assert events[-1]["id"] == 7 and events[-1]["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
    row = reason_of(tmp_path, events[-1]["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and "the event stream broke off" in row["error"]


def test_oversized_body_is_refused_before_the_upstream(tmp_path):
    seen = []
    with RawServer(lambda conn: seen.append(conn.recv(10))) as server, firewall_for(tmp_path, server.port, max_message_bytes=4096) as fw:
        big = {**CALL, "params": {"name": "echo", "arguments": {"message": "x" * 10_000}}}
        r = http("POST", f"{fw.url}/mcp", json_body=big, headers=HEADERS)
    assert r.status_code == 413 and r.json()["error"]["code"] == errors.MESSAGE_TOO_LARGE
    assert not seen
    rows = audit_rows(tmp_path / "audit.duckdb", "error_code = -32053")
    assert rows and rows[0]["decision"] == "deny"


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_oversized_answer_becomes_an_error_for_its_request(tmp_path, framing, engine):
    """Neither engine reads an answer over the size limit (by its length, or as its chunks
    arrive): the client gets -32053 for its request (not a 200 of padding), and the audit log
    says why."""
    result = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"' + b"x" * 200_000 + b'"}]}}'

    def answer(conn: socket.socket) -> None:
        read_request(conn)
        if framing == "length":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(result), result))
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(result), 1000):
                conn.sendall(b"%x\r\n%s\r\n" % (len(result[i:i + 1000]), result[i:i + 1000]))
            conn.sendall(b"0\r\n\r\n")
        time.sleep(0.5)

    with RawServer(answer) as server, firewall_for(tmp_path, server.port, engine=engine, max_message_bytes=4096) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 502
    error = r.json()
    assert error["id"] == 7 and error["error"]["code"] == errors.MESSAGE_TOO_LARGE
    row = reason_of(tmp_path, error["error"]["data"]["decision_id"])
    assert row["direction"] == "server_to_client" and row["error_code"] == errors.MESSAGE_TOO_LARGE and row["decision"] == "deny"


def test_slow_loris_clients_are_cut_off_while_others_are_served(tmp_path):
    with RawServer(hang) as server, firewall_for(tmp_path, server.port) as fw:
        slow_headers = socket.create_connection(("127.0.0.1", fw.port))
        slow_headers.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        slow_body = socket.create_connection(("127.0.0.1", fw.port))
        slow_body.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"js")
        started = time.monotonic()
        # Meanwhile another client is served at once (the upstream here never answers: 404 route check).
        quick = http("POST", f"{fw.url}/mcp", json_body={"jsonrpc": "2.0", "id": 1, "method": "bad/"}, headers={**HEADERS, "content-type": "text/plain"})
        assert quick.status_code == 504 and time.monotonic() - started < 1.5
        slow_headers.settimeout(5)
        slow_body.settimeout(5)
        head = slow_headers.recv(4096)
        body_answer = b""
        while chunk := slow_body.recv(4096):
            body_answer += chunk
            if b"}" in chunk:
                break
        elapsed = time.monotonic() - started
        slow_headers.close()
        slow_body.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert body_answer.startswith(b"HTTP/1.1 408") and b'"code":-32600' in body_answer
    assert elapsed < 4
    reasons = [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb")]
    assert reasons.count(["client_timeout"]) == 2


def _answer(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def test_a_header_that_never_ends_is_cut_at_the_head_limit(tmp_path):
    """httptools keeps an unfinished header in memory, copied at every chunk: the head limit
    must apply before the header ends, or one client stalls the event loop for all."""
    with RawServer(hang) as server, firewall_for(tmp_path, server.port) as fw:
        attacker = socket.create_connection(("127.0.0.1", fw.port))
        attacker.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        try:
            for _ in range(64):  # 1 MiB in 16 KiB pieces, each a read of its own
                attacker.sendall(b"a" * 16384)
                sent += 16384
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(attacker)
        attacker.close()
    assert answer.startswith(b"HTTP/1.1 431")
    assert sent < 1024 * 1024 or answer  # refused along the way
    rows = audit_rows(tmp_path / "audit.duckdb", "'unreadable_request' IN reason_codes", at_least=1)
    assert "request head over 65536 bytes" in rows[0]["error"]


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
@pytest.mark.parametrize("head", [
    b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n{}",
    b"POST /mcp HTTP/9\r\nHost: x\r\n\r\n",
], ids=["length_and_chunked", "two_lengths", "bad_version"])
def test_malformed_framing_is_refused_and_recorded(tmp_path, engine, head):
    """Framing a proxy and a server may read differently (request smuggling) is refused and
    recorded by both engines (mitmproxy sent its HTML page and wrote only a log line)."""
    with RawServer(hang) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        sock.sendall(head)
        answer = _answer(sock)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"<html" not in answer.lower()
    (row,) = audit_rows(tmp_path / "audit.duckdb", "'unreadable_request' IN reason_codes", at_least=1)
    assert row["error"].startswith("malformed HTTP request") and row["decision"] == "deny"


def test_silent_and_excess_connections_do_not_hold_the_listener(tmp_path):
    """A connection that sends nothing is closed at the client deadline (not after the 300 s
    idle sweep), and one client address cannot open more than its share."""
    config = make_config(tmp_path, [{"url": "http://127.0.0.1:9/mcp", "name": "up"}],
                         client_timeout_seconds=1, max_connections_per_client=3)
    with InProcessFirewall(config) as fw:
        silent = [socket.create_connection(("127.0.0.1", fw.port)) for _ in range(3)]
        extra = socket.create_connection(("127.0.0.1", fw.port))
        assert _answer(extra, timeout=2) == b""  # closed at once: the address has 3 open
        extra.close()
        started = time.monotonic()
        answers = [_answer(s, timeout=5) for s in silent]
        assert time.monotonic() - started < 3
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
        for s in silent:
            s.close()
        time.sleep(0.1)
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)  # room again
        assert r.status_code == 502  # (the upstream is a closed port)


@pytest.mark.parametrize("kind", ["refused", "reset"])
def test_mitmproxy_engine_answers_upstream_failures_with_jsonrpc_errors(tmp_path, kind):
    """The mitmproxy engine answers like the lean listener, not with mitmproxy's HTML page."""
    if kind == "refused":
        server = None
        port = free_port()
    else:
        server = RawServer(reset).__enter__()
        port = server.port
    config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "up"}],
                         upstream_timeout_seconds=1, client_timeout_seconds=1, listener="mitmproxy",
                         confdir=str(tmp_path / "mitm"))
    try:
        with InProcessFirewall(config, engine="mitmproxy") as fw:
            r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
            second = http("POST", f"{fw.url}/mcp", json_body={**CALL, "id": 8}, headers=HEADERS)  # not a one-off
    finally:
        if server is not None:
            server.__exit__()
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/json")
    answer = r.json()
    assert answer["id"] == 7 and answer["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
    assert "unavailable" in answer["error"]["message"]
    assert second.status_code == 502 and second.json()["id"] == 8
    row = reason_of(tmp_path, answer["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and row["error_code"] == errors.UPSTREAM_UNAVAILABLE
    assert row["method"] == "tools/call" and row["message_id"] == "7"


def test_mitmproxy_engine_gives_an_upstream_the_same_deadline(tmp_path):
    """mitmproxy has no deadline for an answer: a hung server held the client (here for the
    4 s the server waits) where the lean listener answers 504 after the upstream timeout."""
    with RawServer(hang) as server, firewall_for(tmp_path, server.port, engine="mitmproxy") as fw:
        started = time.monotonic()
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
        elapsed = time.monotonic() - started
    assert r.status_code == 504 and elapsed < 3
    answer = r.json()
    assert answer["id"] == 7 and "no response within 1 s" in answer["error"]["message"]
    row = reason_of(tmp_path, answer["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and "no response within 1 s" in row["error"]


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_a_response_head_that_never_ends_is_cut_at_the_head_limit(tmp_path, engine):
    """Neither HTTP parser bounds a response head (llhttp holds an unfinished field, h11's
    buffer grows): a server streaming one endless header field grew the firewall by its size."""
    sent = []

    def endless_head(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-pad: ")
        for _ in range(2000):  # 130 MB, if nothing stops it
            conn.sendall(b"a" * 65536)
            sent.append(1)

    with RawServer(endless_head) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 502
    answer = r.json()
    assert answer["id"] == 7 and answer["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
    assert "response head is over 65536 bytes" in answer["error"]["message"]
    assert len(sent) < 200  # the firewall stopped reading, then closed
    row = reason_of(tmp_path, answer["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and "response head" in row["error"]


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_a_broken_response_head_is_reported_without_its_bytes(tmp_path, engine):
    """mitmproxy names a broken answer with its bytes (``unexpected server response: b'...'``):
    header values a server sent must not reach the client's error or the audit log."""
    def broken(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nset-cookie: session=SECRET-4711\r\n")

    with RawServer(broken) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 502 and b"SECRET-4711" not in r.content
    row = reason_of(tmp_path, r.json()["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and "SECRET-4711" not in json.dumps(row, default=str)


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_response_trailer_fields_are_dropped(tmp_path, engine):
    """A chunked answer with trailer fields is relayed without them (mitmproxy's reader raised
    NotImplementedError and the client got its crash page), and the firewall goes on serving."""
    result = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}'

    def with_trailers(conn: socket.socket) -> None:
        while read_request(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"%x\r\n%s\r\n0\r\nx-trailing-secret: 1\r\n\r\n" % (len(result), result))

    with RawServer(with_trailers) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        first = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
        second = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    for r in (first, second):
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "hi"
        assert "x-trailing-secret" not in {k.lower() for k in r.headers}


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_an_event_split_over_reads_reaches_the_client_whole(tmp_path, engine):
    """A read that completes no event gave mitmproxy an empty piece to send, which on a
    chunked answer is the last chunk: the client's stream ended at the first event that
    arrived in two reads."""
    note = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"first"}}'
    result = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"done"}]}}'

    def split_events(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: " + note[:30], note[30:] + b"\n", b"\n", b"data: " + result + b"\n\n"):
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.1)
        conn.sendall(b"0\r\n\r\n")
        time.sleep(0.3)

    with RawServer(split_events) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e.get("method") or e["result"]["content"][0]["text"] for e in events] == ["notifications/message", "done"]


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
@pytest.mark.parametrize("breach", ["cut_short", "endless_chunk_extension"])
def test_an_answer_that_breaks_off_is_a_jsonrpc_error(tmp_path, engine, breach):
    """A JSON answer that ends before its length, or whose chunk size line never ends (h11,
    mitmproxy's parser, held all of it), is an upstream failure for its request: -32056 in
    JSON, not mitmproxy's HTML page."""
    def behaviour(conn: socket.socket) -> None:
        read_request(conn)
        if breach == "cut_short":
            conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"jsonrpc":"2.0","id":7,')
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5;ext=")
        for _ in range(300):  # 19 MiB of one chunk extension
            conn.sendall(b"a" * 65536)

    with RawServer(behaviour) as server, firewall_for(tmp_path, server.port, engine=engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/json")
    answer = r.json()
    assert answer["id"] == 7 and answer["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
    assert "broke off" in answer["error"]["message"]
    row = reason_of(tmp_path, answer["error"]["data"]["decision_id"])
    assert row["reason_codes"] == ["upstream_unavailable"] and "broke off" in row["error"]


def test_a_pooled_connection_the_server_closed_unheard_is_not_used():
    """Servers close idle keep-alive connections (Node and uvicorn after 5 s). A close that
    arrives while the firewall is busy is not heard before the next request takes the
    connection from the pool, and a POST, never sent twice, would fail with -32056 (seen with
    20 parallel calls while the classifier warmed up). An idle connection is checked first."""
    import asyncio

    from firewall.transports.http.upstream import Origin, UpstreamPool

    async def scenario() -> tuple[bool, bool]:
        listener = socket.create_server(("127.0.0.1", 0))
        origin = Origin("127.0.0.1", listener.getsockname()[1])
        pool = UpstreamPool(connect_timeout=2)
        fresh = await pool._connect(origin)
        pool.put(fresh)
        kept = pool._take(origin)  # just used: taken as it is
        assert kept is fresh
        pool.put(kept)
        kept.idle_since -= 2  # idle for a while ...
        accepted, _ = listener.accept()
        accepted.close()  # ... and closed by the server,
        time.sleep(0.1)  # while this loop is busy: no callback has run
        taken = pool._take(origin)
        listener.close()
        return taken is None, kept.closed or kept._keep is False

    discarded, dropped = asyncio.run(scenario())
    assert discarded and dropped


def test_fields_a_connection_header_names_are_not_forwarded(tmp_path):
    """RFC 9110 7.6.1: a proxy removes the fields the Connection header lists."""
    seen: list[bytes] = []
    result = b'{"jsonrpc":"2.0","id":7,"result":{"content":[]}}'

    def answer(conn: socket.socket) -> None:
        request = read_request(conn)
        if request is not None:
            seen.append(request[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: x-internal\r\n"
                         b"x-internal: upstream-only\r\ncontent-length: %d\r\n\r\n%s" % (len(result), result))

    with RawServer(answer) as server, firewall_for(tmp_path, server.port) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL,
                 headers={**HEADERS, "connection": "keep-alive, X-Secret", "x-secret": "s3cr3t", "x-kept": "yes"})
    assert r.status_code == 200 and "x-internal" not in {k.lower() for k in r.headers}
    (head,) = seen
    assert b"s3cr3t" not in head and b"x-kept: yes" in head.lower()


@pytest.mark.parametrize("answer", ["switch", "two_answers"])
def test_an_upstream_that_answers_out_of_protocol_is_a_failure(tmp_path, answer):
    """A 101 to a plain POST, or a second response glued after a 204, must not reach the client
    as if it were the answer (the 204's head over the 200's body)."""
    second = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"smuggled"}]}}'

    def behaviour(conn: socket.socket) -> None:
        read_request(conn)
        if answer == "switch":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(second), second))
        time.sleep(0.5)

    with RawServer(behaviour) as server, firewall_for(tmp_path, server.port) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert b"smuggled" not in r.content
    if answer == "switch":
        assert r.status_code == 502 and r.json()["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
        assert "switched protocols" in r.json()["error"]["message"]
    else:
        assert r.status_code == 204 and r.content == b""


@pytest.mark.parametrize("refusal", ["page", "idless_error"])
def test_a_retry_after_an_upstream_refusal_is_not_a_duplicate(tmp_path, refusal):
    """A 503 page or a 429 error without an id answers no request: the request is over, and a
    retry under the same id must reach the server (not be refused as a duplicate open id)."""
    answers = iter(["init", refusal, "result"])

    def behaviour(conn: socket.socket) -> None:
        while read_request(conn) is not None:
            kind = next(answers, "result")
            if kind == "init":
                body = (b'{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{},'
                        b'"serverInfo":{"name":"s","version":"1"}}}')
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s1\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
            elif kind == "page":
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nbusy")
            elif kind == "idless_error":
                body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"too many requests"}}'
                conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 0\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
            else:
                body = b'{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"done"}]}}'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}}
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}
    with RawServer(behaviour) as server, firewall_for(tmp_path, server.port) as fw:
        opened = http("POST", f"{fw.url}/mcp", json_body=init, headers=HEADERS)
        session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        first = http("POST", f"{fw.url}/mcp", json_body=call, headers=session)
        retry = http("POST", f"{fw.url}/mcp", json_body=call, headers=session)
    assert first.status_code in (503, 429)
    assert retry.status_code == 200 and retry.json()["result"]["content"][0]["text"] == "done"


def _mitm_for(tmp_path, port: int):
    config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "up"}],
                         upstream_timeout_seconds=2, client_timeout_seconds=2, listener="mitmproxy",
                         confdir=str(tmp_path / "mitm"))
    return InProcessFirewall(config, engine="mitmproxy")


def test_mitmproxy_engine_takes_no_shortcut_around_inspection(tmp_path):
    """A POST that claims a WebSocket upgrade went to the handshake path, which inspects
    nothing until WebSocket messages flow: servers serve it as an ordinary POST. An upstream
    101 to a plain POST would turn the connection into a raw tunnel. Connection-nominated and
    proxy fields, and fields with a bare CR, must not pass either."""
    seen: list[bytes] = []
    answer_101 = threading.Event()
    result = b'{"jsonrpc":"2.0","id":7,"result":{"content":[]}}'

    def behaviour(conn: socket.socket) -> None:
        while (request := read_request(conn)) is not None:
            seen.append(request[0] + b"\r\n\r\n" + request[1])
            if answer_101.is_set():
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: raw\r\nconnection: upgrade\r\n\r\n")
                time.sleep(0.5)
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(result), result))

    denied = {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
              "params": {"name": "read_file", "arguments": {"path": "/home/u/.ssh/id_rsa"}}}
    with RawServer(behaviour) as server, _mitm_for(tmp_path, server.port) as fw:
        upgrade = http("POST", f"{fw.url}/mcp", json_body=denied,
                       headers={**HEADERS, "connection": "Upgrade", "upgrade": "websocket"})
        assert upgrade.status_code == 400 and not seen
        refused = audit_rows(tmp_path / "audit.duckdb", "'unreadable_request' IN reason_codes", at_least=1)
        assert "Upgrade: websocket is only valid on a GET" in refused[0]["error"]
        plain = http("POST", f"{fw.url}/mcp", json_body=CALL, headers={
            **HEADERS, "connection": "keep-alive, X-Secret", "x-secret": "s3cr3t", "proxy-authorization": "Basic dTpw"})
        assert plain.status_code == 200
        assert b"s3cr3t" not in seen[-1] and b"proxy-authorization" not in seen[-1].lower()
        answer_101.set()
        sock = socket.create_connection(("127.0.0.1", fw.port))
        body = json.dumps(CALL).encode()
        sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"accept: application/json, text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        switched = _answer(sock, timeout=5)
        assert b" 101 " not in switched  # no tunnel: the connection is closed
        leaked = json.dumps(denied).encode()
        with contextlib.suppress(OSError):  # and nothing sent after it reaches the server unread
            sock.sendall(leaked)
        sock.close()
        time.sleep(0.3)
    assert all(b".ssh" not in request for request in seen)
    rows = audit_rows(tmp_path / "audit.duckdb", "'upstream_unavailable' IN reason_codes", at_least=1)
    assert "switched protocols" in rows[0]["error"]
