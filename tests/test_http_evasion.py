"""HTTP tricks that would carry a message past the inspection: each is refused or inspected.

A hostile client: trailer fields that would reach the server as headers, a JSON-RPC POST to a
path the server routes leniently with its "jsonrpc" key escaped, a JSON-RPC body in a GET.
A hostile server: an encoded body the firewall asked not to get, an answer under a media
type clients still parse as JSON, an event stream that hides an event behind a byte-order
mark after an event the firewall drops.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading

import pytest

from firewall import errors
from peers.http_harness import InProcessFirewall, http, make_config
from support import audit_rows
from test_http_failures import RawServer, read_request

SECRET = "AKIAIOSFODNN7EXAMPLE"
DENIED = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
          "params": {"name": "read_file", "arguments": {"path": "/home/user/.ssh/id_rsa"}}}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class Recorder:
    """An upstream that records each request's bytes and answers with ``reply(body)``."""

    def __init__(self, reply) -> None:
        self.requests: list[bytes] = []
        self.reply = reply
        self.lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        got = read_request(conn)
        if got is None:
            return
        head, body = got
        with self.lock:
            self.requests.append(head + b"\r\n\r\n" + body)
        conn.sendall(self.reply(body))


def json_answer(body: bytes, *, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    msg = json.loads(body) if body else {"id": None}
    out = json.dumps({"jsonrpc": "2.0", "id": msg.get("id"), "result": {"content": [{"type": "text", "text": SECRET}]}}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n%scontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        content_type, extra, len(out), out)


@pytest.fixture(params=["lean", "mitmproxy"])
def engine(request) -> str:
    return request.param


def firewall(tmp_path, port: int, engine: str, **limits) -> InProcessFirewall:
    config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "up"}],
                         upstream_timeout_seconds=2, client_timeout_seconds=2, limits=limits or None)
    return InProcessFirewall(config, engine=engine)


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_trailer_fields_never_reach_the_server(tmp_path, engine):
    upstream = Recorder(json_answer)
    body = json.dumps(CALL).encode()
    request = (b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"accept: application/json, text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
               b"%x\r\n%s\r\n0\r\nmcp-session-id: smuggled\r\nmcp-method: tools/list\r\n\r\n" % (len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert all(b"smuggled" not in seen and b"mcp-method" not in seen.lower() for seen in upstream.requests)
    if engine == "lean":  # trailer fields dropped, the request judged and passed
        assert answer.startswith(b"HTTP/1.1 200")
    else:  # mitmproxy cannot read request trailers: a 400 and a record, not its crash report
        assert answer.startswith(b"HTTP/1.1 400") and upstream.requests == []
        rows = audit_rows(tmp_path / "audit.duckdb", "'unreadable_request' IN reason_codes", at_least=1)
        assert "trailers" in rows[0]["error"]


@pytest.mark.parametrize("path", ["/MCP", "/mcp/", "/other"])
def test_a_jsonrpc_post_is_judged_whatever_its_path_and_spelling(tmp_path, path, engine):
    upstream = Recorder(json_answer)
    body = json.dumps(DENIED).encode().replace(b'"jsonrpc"', b'"\\u006asonrpc"')
    request = (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert b'"code":%d' % errors.POLICY_DENIED in answer
    assert upstream.requests == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_jsonrpc_body_outside_a_post_is_refused_and_audited(tmp_path, method, engine):
    upstream = Recorder(json_answer)
    body = json.dumps(DENIED).encode()
    request = (b"%s /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n%s" % (method.encode(), len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert answer.startswith(b"HTTP/1.1 400") and upstream.requests == []
    assert [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb")] == [["jsonrpc_outside_post"]]


def test_an_encoded_answer_is_refused_not_passed(tmp_path, engine):
    def gzipped_events(body: bytes) -> bytes:
        msg = json.loads(body)
        event = b"data: " + json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [{"type": "text", "text": SECRET}]}}).encode() + b"\n\n"
        out = gzip.compress(event)
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(out), out))

    with RawServer(Recorder(gzipped_events)) as server, firewall(tmp_path, server.port, engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 502 and "content-encoding" not in {k.lower() for k in r.headers}
    answer = r.json()
    assert answer["id"] == 7 and answer["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
    assert "gzip" in answer["error"]["message"]


@pytest.mark.parametrize("content_type", [b"application/json-seq", b"text/plain", b"application/x-ndjson"])
def test_an_answer_under_another_media_type_is_still_inspected(tmp_path, content_type, engine):
    with RawServer(Recorder(lambda body: json_answer(body, content_type=content_type))) as server, \
            firewall(tmp_path, server.port, engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 200
    assert SECRET not in r.text and "REDACTED" in r.text


def test_an_event_hidden_behind_a_byte_order_mark_is_not_passed(tmp_path, engine):
    """The firewall drops a first event too large to read; a client would take the next
    block's leading BOM for the start of its stream and read "\\ufeffdata" as data."""

    def bom_events(body: bytes) -> bytes:
        msg = json.loads(body)
        hidden = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [{"type": "text", "text": SECRET}]}}).encode()
        out = b"data: " + b"A" * 70_000 + b"\n\n" + b"\xef\xbb\xbfdata: " + hidden + b"\n\n"
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(out), out))

    with RawServer(Recorder(bom_events)) as server, firewall(tmp_path, server.port, engine, max_message_bytes=16_384) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert SECRET not in r.text and "\ufeff" not in r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    # The request is not left waiting: it gets an error for its id.
    assert [(e["id"], e["error"]["code"]) for e in events] == [(7, errors.UPSTREAM_UNAVAILABLE)]


def test_an_oversized_request_pipelined_behind_another_still_gets_its_413(tmp_path):
    upstream = Recorder(json_answer)
    first = json.dumps(CALL).encode()
    big = json.dumps({**CALL, "id": 8, "params": {"name": "echo", "arguments": {"message": "x" * 20_000}}}).encode()
    request = b"".join(
        b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"accept: application/json, text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        for body in (first, big))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, "lean", max_message_bytes=4096) as fw:
        answer = raw_exchange(fw.port, request)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 413" in answer
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("encoding", ["deflate", "gzip", "br"])
def test_an_encoded_request_body_is_refused_and_audited(tmp_path, engine, encoding):
    """A server that inflates the body (express.json() does) would run what was not judged."""
    import zlib

    upstream = Recorder(json_answer)
    body = zlib.compress(json.dumps(DENIED).encode()) if encoding == "deflate" else gzip.compress(json.dumps(DENIED).encode())
    request = (b"POST /message?sessionId=abc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-encoding: %s\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (encoding.encode(), len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert upstream.requests == []
    assert answer.startswith(b"HTTP/1.1 415")
    assert [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb")] == [["encoded_request_body"]]


def test_a_legacy_session_is_named_by_its_parameter_however_the_query_is_spelled():
    from firewall.transports.http.sessions import legacy_keys

    announced = set(legacy_keys("/message?sessionId=abc"))
    for variant in ("/message?sessionId=abc&x=1", "/message?x=1&sessionId=abc", "/MESSAGE/?sessionId=abc",
                    "/message?session%49d=abc"):
        assert announced & set(legacy_keys(variant)), variant
    assert not announced & set(legacy_keys("/message?sessionId=abd"))


@pytest.mark.parametrize("first", [b"", b"  "])
def test_an_empty_routing_header_does_not_hide_a_second_one(tmp_path, engine, first):
    upstream = Recorder(json_answer)
    body = json.dumps(CALL).encode()
    request = (b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"accept: application/json, text/event-stream\r\nmcp-method:%s\r\nmcp-method: tools/list\r\n"
               b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (first, len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert answer.startswith(b"HTTP/1.1 400") and upstream.requests == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://127.0.0.1:3201:80/x", "http://[::1/x"])
def test_unparseable_oauth_urls_from_the_upstream_are_left_alone(url):
    from firewall.transports.http.oauth import rewrite_metadata, rewrite_www_authenticate
    from firewall.transports.http.routes import Route

    route = Route("up", "http://127.0.0.1:3201/mcp", "http", "127.0.0.1:3201", "/mcp")
    challenge = f'Bearer resource_metadata="{url}"'
    assert rewrite_www_authenticate(challenge, route, "https://mcp.example") == challenge
    assert rewrite_metadata(json.dumps({"resource": url}).encode(), route, "https://mcp.example") is None


@pytest.mark.parametrize("endpoint", ["http://evil.example/message?sessionId=1", "//evil.example/message?sessionId=1",
                                      "/\\evil.example/message?sessionId=1"])
def test_a_legacy_endpoint_on_another_origin_is_not_passed(tmp_path, endpoint):
    def announce(_body: bytes) -> bytes:
        out = b"event: endpoint\ndata: " + endpoint.encode() + b"\n\n"
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(out), out))

    request = b"GET /sse HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nconnection: close\r\n\r\n"
    with RawServer(Recorder(announce)) as server, firewall(tmp_path, server.port, "lean") as fw:
        answer = raw_exchange(fw.port, request)
    assert b"evil.example" not in answer
    assert [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb", at_least=1)] == [["foreign_endpoint"]]


def _utf7(text: str) -> bytes:
    """UTF-7 (RFC 2152) with every character in base64 blocks: no "{" on the wire."""
    import base64

    return b"+" + base64.b64encode(text.encode("utf-16-be")).rstrip(b"=") + b"-"


@pytest.mark.parametrize("content_type, body", [
    # The TypeScript SDK's legacy SSE transport decodes by the declared charset (iconv-lite).
    (b"application/json; charset=utf-7", _utf7(json.dumps(DENIED))),
    (b'application/json; charset="ISO-8859-1"', json.dumps(DENIED).encode()),
    (b"application/json; charset=utf-8; charset=utf-7", _utf7(json.dumps(DENIED))),
    (b"application/json; charset=x-unknown-to-python", b"+AHs-"),
    # Malformed UTF-7 that Python's decoder reads as U+FFFD, swallowing the "{", and iconv-lite
    # as nothing: the call that follows is plain on the wire.
    (b"application/json; charset=utf-7", b"+AH-" + json.dumps(DENIED).encode()),
    (b"application/json; charset=utf-7", b"+" + json.dumps(DENIED).encode()),
    (b"application/json; charset=unicode-1-1-utf-7", b"+AHsA-" + json.dumps(DENIED).encode()[1:]),
])
def test_a_jsonrpc_body_in_another_charset_is_refused_and_audited(tmp_path, engine, content_type, body):
    upstream = Recorder(json_answer)
    request = (b"POST /message?sessionId=abc HTTP/1.1\r\nhost: x\r\ncontent-type: %s\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n%s" % (content_type, len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert answer.startswith(b"HTTP/1.1 415") and upstream.requests == []
    assert [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb")] == [["unsupported_charset"]]


def test_a_form_in_another_charset_still_reaches_a_cohosted_endpoint(tmp_path, engine):
    """What cannot be JSON-RPC in its charset or as UTF-8 (an OAuth token request) passes."""
    upstream = Recorder(lambda body: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
                                     b"connection: close\r\n\r\nok")
    body = b"grant_type=client_credentials&scope=caf%E9"
    request = (b"POST /token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded; charset=iso-8859-1\r\n"
               b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert answer.startswith(b"HTTP/1.1 200") and len(upstream.requests) == 1
    assert upstream.requests[0].endswith(body)


def test_utf7_cannot_carry_a_call_past_the_firewall_to_a_real_legacy_server(tmp_path):
    """server-everything's legacy HTTP+SSE transport (the TypeScript SDK's SSEServerTransport)
    decodes a POST by its declared charset: in UTF-7 a call has no "{" on the wire. The
    firewall refuses it; the same call in UTF-8 is inspected, passed and answered."""
    import time

    from peers.http_harness import everything_server, free_port

    port = free_port()
    with everything_server(port, "sse"):
        config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "everything"}])
        with InProcessFirewall(config) as fw, socket.create_connection(("127.0.0.1", fw.port), timeout=10) as stream:
            stream.sendall(b"GET /sse HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
            events = b""
            while b"event: endpoint" not in events or not events.split(b"event: endpoint", 1)[1].count(b"\n\n"):
                events += stream.recv(65536)
            endpoint = events.split(b"event: endpoint", 1)[1].split(b"data: ", 1)[1].split(b"\n", 1)[0].strip()

            def post(body: bytes, content_type: bytes = b"application/json") -> bytes:
                return raw_exchange(fw.port, b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: %s\r\n"
                                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                                             % (endpoint, content_type, len(body), body))

            def call(i: int, message: str) -> str:
                return json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                   "params": {"name": "echo", "arguments": {"message": message}}})

            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
            assert post(json.dumps(init).encode()).startswith(b"HTTP/1.1 202")
            assert post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').startswith(b"HTTP/1.1 202")
            assert post(_utf7(call(2, "smuggled")), b"application/json; charset=utf-7").startswith(b"HTTP/1.1 415")
            # Malformed UTF-7 before a plain call: Python's decoder swallows the "{", the server's keeps it.
            assert post(b"+AH-" + call(4, "smuggled").encode(), b"application/json; charset=utf-7").startswith(b"HTTP/1.1 415")
            assert post(call(3, "inspected").encode()).startswith(b"HTTP/1.1 202")
            stream.settimeout(0.5)
            deadline = time.monotonic() + 10
            while b"Echo: inspected" not in events and time.monotonic() < deadline:
                try:
                    events += stream.recv(65536)
                except TimeoutError:
                    pass
    assert b"Echo: inspected" in events and b"smuggled" not in events
    rows = audit_rows(tmp_path / "audit.duckdb", "method = 'tools/call' OR 'unsupported_charset' IN reason_codes", at_least=4)
    assert [r["reason_codes"] for r in rows if "unsupported_charset" in (r["reason_codes"] or [])] == [["unsupported_charset"]] * 2


def test_an_answer_in_another_charset_is_refused_not_passed(tmp_path, engine):
    """Python's requests decodes a JSON answer by its declared charset: in UTF-7 the server's
    answer would reach such a client unread by the firewall. A plain one still passes."""
    answer_body = _utf7(json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": SECRET}]}}))

    def utf7_answer(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-7\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(answer_body), answer_body))

    with RawServer(Recorder(utf7_answer)) as server, firewall(tmp_path, server.port, engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
    assert r.status_code == 502 and r.json()["id"] == 7
    assert r.json()["error"]["code"] == errors.UPSTREAM_UNAVAILABLE and "utf-7" in r.json()["error"]["message"]
    assert "unsupported_charset" in audit_rows(tmp_path / "audit.duckdb", "'unsupported_charset' IN reason_codes",
                                               at_least=1)[0]["reason_codes"]
    accepted = Recorder(lambda body: b"HTTP/1.1 202 Accepted\r\ncontent-type: text/plain; charset=iso-8859-1\r\n"
                                     b"content-length: 8\r\nconnection: close\r\n\r\nAccepted")
    with RawServer(accepted) as server, firewall(tmp_path / "b", server.port, engine) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=HEADERS)
    assert r.status_code == 202 and r.content == b"Accepted"


def test_two_content_types_are_refused_on_both_listeners(tmp_path, engine):
    """Node keeps the first Content-Type, other servers the last: a second one declaring UTF-7
    must not ride behind an innocent first one."""
    upstream = Recorder(json_answer)
    body = _utf7(json.dumps(DENIED))
    request = (b"POST /message?sessionId=abc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-type: application/json; charset=utf-7\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
               % (len(body), body))
    with RawServer(upstream) as server, firewall(tmp_path, server.port, engine) as fw:
        answer = raw_exchange(fw.port, request)
    assert answer.startswith(b"HTTP/1.1 400") and upstream.requests == []
    assert [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb")] == [["ambiguous_content_type"]]
