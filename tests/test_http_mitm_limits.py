"""The mitmproxy engine's client limits (head size, bodies, deadlines, connection caps),
on real sockets, as the lean listener enforces them (tests/test_http_failures.py)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from firewall import errors
from support import audit_rows
from peers.http_harness import InProcessFirewall, http, make_config
from test_http_failures import CALL, HEADERS, RawServer, _answer, hang, read_request, reason_of


def mitm(tmp_path, port: int, *, mode: str = "reverse", limits: dict | None = None, **proxy) -> InProcessFirewall:
    upstreams = [{"url": f"http://127.0.0.1:{port}/mcp", "name": "up"}] if mode == "reverse" else []
    settings = {"upstream_timeout_seconds": 2, "client_timeout_seconds": 1, **proxy}
    config = make_config(tmp_path, upstreams, limits=limits, mode=mode, listener="mitmproxy",
                         confdir=str(tmp_path / "mitm"), **settings)
    return InProcessFirewall(config, engine="mitmproxy")


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_a_head_that_never_ends_is_cut_at_64_kib(tmp_path, mode):
    with RawServer(hang) as server, mitm(tmp_path, server.port, mode=mode) as fw:
        before = rss_kib()
        attacker = socket.create_connection(("127.0.0.1", fw.port))
        target = b"/mcp" if mode == "reverse" else b"http://127.0.0.1:%d/mcp" % server.port
        attacker.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nX-Pad: " % target)
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:  # 64 MiB unless the connection is closed first
                attacker.sendall(b"a" * 16384)
                sent += 16384
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(attacker)
        attacker.close()
        grown = rss_kib() - before
    # Closed long before: what was sent past 64 KiB sits in socket buffers (loopback's grow to
    # tens of MiB: net.ipv4.tcp_rmem), never in the firewall, whose memory stays flat.
    assert sent < 48 * 1024 * 1024, sent
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB"
    if mode == "reverse":  # (a forward proxy does not know the server the head was for)
        rows = audit_rows(tmp_path / "audit.duckdb", "'unreadable_request' IN reason_codes", at_least=1)
        assert "request head over 65536 bytes" in rows[0]["error"]


def answer_empty_result(conn: socket.socket) -> None:
    """An upstream that answers one request with an empty JSON-RPC result for id 7."""
    read_request(conn)
    body = b'{"jsonrpc":"2.0","id":7,"result":{}}'
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def test_a_head_within_the_limit_still_passes(tmp_path):
    """60 KiB of fields in many reads: under the limit, answered by the server."""
    with RawServer(answer_empty_result) as server, mitm(tmp_path, server.port) as fw:
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers={**HEADERS, "x-pad": "a" * 60_000})
    assert r.status_code == 200 and r.json()["id"] == 7


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_oversized_mcp_body_is_refused_without_being_read(tmp_path, framing):
    seen = []
    with RawServer(lambda conn: seen.append(conn.recv(10))) as server, \
            mitm(tmp_path, server.port, limits={"max_message_bytes": 4096}) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port), timeout=10)  # (stuck: a failure, not a hang)
        head = b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        sent = 0
        if framing == "length":
            sock.sendall(head + b"content-length: 100000000\r\n\r\n")  # and not a byte of it
        else:
            sock.sendall(head + b"transfer-encoding: chunked\r\n\r\n")
            piece = b"%x\r\n%s\r\n" % (1024, b"x" * 1024)
            try:
                while sent < 4 * 1024 * 1024:
                    sock.sendall(piece)
                    sent += 1024
            except (BrokenPipeError, ConnectionResetError):
                pass
            except TimeoutError:
                pytest.fail(f"the firewall stopped reading after {sent} bytes of the body without closing")
        answer = _answer(sock, timeout=3)
        sock.close()
    # The body never ended (no last chunk, or 100 MB promised and none sent), yet the 413 came:
    # the firewall refused it unread. (How much the client got to send says nothing: loopback
    # socket buffers take megabytes before the close is seen.)
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == errors.MESSAGE_TOO_LARGE
    assert not seen
    row = reason_of(tmp_path, body["error"]["data"]["decision_id"])
    assert row["error_code"] == errors.MESSAGE_TOO_LARGE and row["decision"] == "deny"


def _chunked_body(conn: socket.socket, data: bytes) -> bytes:
    """The rest of a chunked body after ``data`` (raw, chunk framing included)."""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    out, rest = b"", data
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        rest = rest[n + 2:]
    return out


def test_regular_mode_streams_what_is_not_mcp_and_bounds_what_may_be(tmp_path):
    """Uploads and downloads far over the limit pass to a host that is not MCP, whole; a
    body over the limit that may be JSON-RPC, or a request marked as MCP, is refused."""
    # 1 MiB of an image: NULs from its fourth byte on, as binary data has (not UTF-16 or -32 text)
    big = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4096
    received: list[bytes] = []

    def server(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        if b"chunked" in head.lower():
            body = _chunked_body(conn, rest)
        else:
            length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
            body = rest
            while len(body) < length:
                body += conn.recv(65536)
        received.append(body)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % len(big) + big)

    def raw(proxy_port: int, server_port: int, head: bytes, body: bytes, chunked: bool = False) -> bytes:
        sock = socket.create_connection(("127.0.0.1", proxy_port))
        framing = b"transfer-encoding: chunked\r\n" if chunked else b"content-length: %d\r\n" % len(body)
        sock.sendall(b"POST http://127.0.0.1:%d/upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s%s\r\n" % (
            server_port, server_port, head, framing))
        try:
            if chunked:
                for i in range(0, len(body), 8192):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192]))
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        sock.settimeout(5)
        try:
            while chunk := sock.recv(1 << 20):
                answer += chunk
                if answer.startswith(b"HTTP/1.1 200") and len(answer) >= len(big):
                    head_end = answer.find(b"\r\n\r\n") + 4
                    if len(answer) - head_end >= len(big):
                        break
        except (TimeoutError, ConnectionResetError):
            pass
        sock.close()
        return answer

    with RawServer(server) as up, mitm(tmp_path, 0, mode="regular", limits={"max_message_bytes": 4096}) as fw:
        for chunked in (False, True):
            answer = raw(fw.port, up.port, b"content-type: image/png\r\n", big, chunked)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert answer.partition(b"\r\n\r\n")[2] == big  # the download, whole
        assert received == [big, big]  # the uploads, whole and unchanged
        json_like = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":"' + b"a" * 10_000 + b'"}}'
        refused = raw(fw.port, up.port, b"content-type: text/plain\r\n", json_like, True)
        wide = raw(fw.port, up.port, b"content-type: text/plain\r\n", json_like.decode().encode("utf-16-le"), True)
        marked = raw(fw.port, up.port, b"mcp-session-id: s1\r\ncontent-type: application/octet-stream\r\n", big)
    assert refused.startswith(b"HTTP/1.1 413") and marked.startswith(b"HTTP/1.1 413")
    assert wide.startswith(b"HTTP/1.1 413")  # UTF-16 JSON text is JSON to the servers that read it
    assert len(received) == 2  # none reached the server
    assert len(audit_rows(tmp_path / "audit.duckdb", "error_code = -32053", at_least=3)) == 3


def test_silent_and_slow_clients_are_cut_off_while_others_are_served(tmp_path):
    with RawServer(answer_empty_result) as server, mitm(tmp_path, server.port) as fw:
        silent = socket.create_connection(("127.0.0.1", fw.port))
        slow_head = socket.create_connection(("127.0.0.1", fw.port))
        slow_head.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        slow_body = socket.create_connection(("127.0.0.1", fw.port))
        slow_body.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        started = time.monotonic()
        for _ in range(3):  # trickled: each byte well within the deadline, the whole never
            time.sleep(0.3)
            slow_head.sendall(b"x")
            slow_body.sendall(b" ")
        quick = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)
        answers = [_answer(s, timeout=5) for s in (silent, slow_head, slow_body)]
        elapsed = time.monotonic() - started
        for s in (silent, slow_head, slow_body):
            s.close()
    assert quick.status_code == 200
    assert elapsed < 3
    assert answers[0] == b""  # nothing was asked (and it might have been TLS)
    assert answers[1].startswith(b"HTTP/1.1 408")
    assert answers[2].startswith(b"HTTP/1.1 408") and b'"code":-32600' in answers[2]
    reasons = [r["reason_codes"] for r in audit_rows(tmp_path / "audit.duckdb", "'client_timeout' IN reason_codes", at_least=3)]
    assert reasons.count(["client_timeout"]) == 3


@pytest.mark.parametrize("cap", ["max_connections_per_client", "max_connections"])
def test_connections_beyond_the_caps_are_closed_at_once(tmp_path, cap):
    def answer(conn: socket.socket) -> None:
        read_request(conn)
        body = b'{"jsonrpc":"2.0","id":7,"result":{}}'
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    with RawServer(answer) as server, mitm(tmp_path, server.port, client_timeout_seconds=5, **{cap: 3}) as fw:
        held = [socket.create_connection(("127.0.0.1", fw.port)) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", fw.port))
        started = time.monotonic()
        assert _answer(extra, timeout=2) == b"" and time.monotonic() - started < 1  # closed, not held
        extra.close()
        for s in held:
            s.close()
        time.sleep(0.2)
        r = http("POST", f"{fw.url}/mcp", json_body=CALL, headers=HEADERS)  # room again
    assert r.status_code == 200


def _ok(conn: socket.socket) -> None:
    while read_request(conn) is not None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def test_blank_lines_before_a_head_are_dropped_not_held(tmp_path):
    """h11 drops one blank line per read: 2 MiB of CRLF then a request would be held (and
    the request never read) had the wrapper not dropped them all."""
    with RawServer(_ok) as server, mitm(tmp_path, server.port, mode="regular") as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        sock.sendall(b"\r\n" * (1024 * 1024))
        sock.sendall(b"\r")  # a CR alone, its LF in the next read
        sock.sendall(b"\n" + b"GET http://127.0.0.1:%d/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % server.port)
        answer = _answer(sock, timeout=3)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]


def test_a_client_sending_only_blank_lines_is_bounded_and_closed(tmp_path):
    """CRLF without end: neither held in memory (each read passed the 64 KiB test, a blank
    line being in it) nor kept open past the head deadline."""
    with RawServer(hang) as server, mitm(tmp_path, server.port, mode="regular") as fw:
        before = rss_kib()
        sock = socket.create_connection(("127.0.0.1", fw.port))
        start, sent = time.monotonic(), 0
        try:
            while time.monotonic() - start < 4:
                sock.sendall(b"\r\n" * 32768)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed_after = time.monotonic() - start
        grown = rss_kib() - before
        sock.close()
    assert closed_after < 3, f"open for {closed_after:.1f} s (client_timeout_seconds is 1)"
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB after {sent >> 20} MiB of CRLF"


def test_a_head_pipelined_behind_a_pending_answer_is_bounded_too(tmp_path):
    """Bytes sent while an answer is pending are parsed after it by mitmproxy itself, not
    through the wrapped reader: a head over 64 KiB among them must not reach the server."""
    heads = []

    def slow(conn: socket.socket) -> None:
        while (request := read_request(conn)) is not None:
            heads.append(len(request[0]))
            time.sleep(0.5 if len(heads) == 1 else 0)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    with RawServer(slow) as server, mitm(tmp_path, server.port, mode="regular") as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        url = b"http://127.0.0.1:%d/" % server.port
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url)
        time.sleep(0.2)
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (url, b"a" * 300_000))
        _answer(sock, timeout=3)
        sock.close()
    assert heads and max(heads) < 65536, heads


@pytest.mark.parametrize("blank", [b" ", "\n".encode("utf-16-le")])
def test_regular_mode_does_not_stream_on_what_may_still_be_json_rpc(tmp_path, blank):
    """A body over the limit is streamed on unread only if its first bytes show it is not
    JSON: white space alone shows nothing (JSON parsers skip it; Python's reads UTF-16)."""
    seen = []

    def record(conn: socket.socket) -> None:
        seen.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")

    call = json.dumps(CALL).encode("utf-8" if blank == b" " else "utf-16-le")
    body = blank * (300_000 // len(blank)) + call  # white space past the first reads
    with RawServer(record) as server, mitm(tmp_path, server.port, mode="regular", limits={"max_message_bytes": 4096}) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        sock.sendall(b"POST http://127.0.0.1:%d/mcp HTTP/1.1\r\nHost: x\r\ncontent-type: text/plain\r\n"
                     b"content-length: %d\r\n\r\n" % (server.port, len(body)))
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock, timeout=3)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert not seen


def test_a_json_media_type_in_a_list_bounds_the_body(tmp_path):
    """"application/json, text/plain" is JSON to the Python SDK (it splits on ','): held to
    the limit, refused by its Content-Length without being read."""
    with RawServer(hang) as server, mitm(tmp_path, server.port, mode="regular", limits={"max_message_bytes": 4096}) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        sock.sendall(b"POST http://127.0.0.1:%d/mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json, text/plain\r\n"
                     b"content-length: 100000000\r\n\r\n" % server.port)
        answer = _answer(sock, timeout=3)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_tunnel_whose_tls_handshake_or_request_never_comes_is_closed(tmp_path):
    """The deadline set at a CONNECT runs through the TLS handshake to the first byte of the
    request inside: the handshake's bytes passing the tunnel must not cancel it (they did, and
    a tunnel with a TLS session and no request was held for mitmproxy's 600 s)."""
    import ssl

    from test_http_mitm import self_signed

    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with RawServer(hang) as server, mitm(tmp_path, 0, mode="regular", ssl_insecure=True) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port))
        sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (server.port, server.port))
        assert _answer(sock, timeout=0.5).startswith(b"HTTP/1.1 200")
        trust = ssl.create_default_context(cafile=str(tmp_path / "mitm" / "mitmproxy-ca-cert.pem"))
        trust.set_alpn_protocols(["http/1.1"])
        tls = trust.wrap_socket(sock, server_hostname="127.0.0.1")  # then nothing is asked
        started = time.monotonic()
        tls.settimeout(6)
        try:
            closed = tls.recv(10) == b""
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            closed = False
        elapsed = time.monotonic() - started
        tls.close()
    assert closed and elapsed < 3, f"open for {elapsed:.1f} s (client_timeout_seconds is 1)"


@pytest.mark.parametrize("split", ["blank line first", "request line in two writes", "client hello in two writes"])
def test_bytes_that_may_still_be_http_or_tls_do_not_make_a_raw_tunnel(tmp_path, split):
    """mitmproxy relays a tunnel as raw TCP, unread, when its first bytes do not look like
    HTTP or TLS yet: a blank line first (servers skip it), a first write without its line end
    (servers join the writes), a ClientHello's first two bytes alone. A call the policy denies
    reached the server that way with non_mcp: pass; the decision now waits for more bytes."""
    import ssl

    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        while (request := read_request(conn)) is not None:
            seen.append(request[0] + request[1])
            body = b'{"jsonrpc":"2.0","id":9,"result":{}}'
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    call = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "read_file", "arguments": {"path": "/home/user/.ssh/id_rsa"}}}).encode()
    with RawServer(record) as server, mitm(tmp_path, 0, mode="regular", ssl_insecure=True) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port), timeout=5)
        sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (server.port, server.port))
        assert _answer(sock, timeout=0.5).startswith(b"HTTP/1.1 200")
        request = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
                   b"accept: application/json, text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (server.port, len(call), call))
        if split == "client hello in two writes":
            # A raw tunnel would carry the ClientHello to the upstream, which speaks no TLS: the
            # handshake could not complete. It completes with mitmproxy's certificate, trusted
            # here alone: the tunnel is intercepted (what follows is every other request's path).
            trust = ssl.create_default_context(cafile=str(tmp_path / "mitm" / "mitmproxy-ca-cert.pem"))
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = trust.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            sock.sendall(hello[:2])
            time.sleep(0.2)
            sock.sendall(hello[2:])
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    assert data, "closed during the handshake"
                    incoming.write(data)
            sock.close()
            assert not seen, seen
            return
        else:
            writes = [b"\r\n" + request] if split == "blank line first" else [request[:4], request[4:]]
            for data in writes:
                sock.sendall(data)
                time.sleep(0.2)
            answer = _answer(sock, timeout=3)
        sock.close()
    assert not seen, seen
    assert b'"code":-32051' in answer or b'"code": -32051' in answer, answer[-300:]


def test_a_tunnel_that_is_neither_http_nor_tls_is_still_relayed(tmp_path):
    """What the raw-TCP decision waits for is only what may still be HTTP or TLS: a protocol
    whose first line is its own (SSH's banner) is relayed both ways with non_mcp: pass."""
    def echo(conn: socket.socket) -> None:
        while data := conn.recv(4096):
            conn.sendall(b"echo:" + data)

    with RawServer(echo) as server, mitm(tmp_path, 0, mode="regular") as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port), timeout=5)
        sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (server.port, server.port))
        assert _answer(sock, timeout=0.5).startswith(b"HTTP/1.1 200")
        sock.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        assert sock.recv(100) == b"echo:SSH-2.0-OpenSSH_9.2\r\n"
        sock.close()


def test_a_connection_closed_while_its_handler_waits_is_closed(tmp_path):
    """mitmproxy closed a connection's socket only if its handler was cancelled at a read:
    cancelled while waiting for the proxy's event lock (held by another task: a hook's end,
    a wakeup), the handler ended and left the socket open and unread, the client blocked
    in its send (under CPU load about one refused chunked body in three)."""
    import asyncio
    import gc

    from mitmproxy.proxy.server import ConnectionHandler

    with RawServer(hang) as server, mitm(tmp_path, server.port) as fw:
        sock = socket.create_connection(("127.0.0.1", fw.port), timeout=5)
        sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        time.sleep(0.2)
        (handler,) = [o for o in gc.get_objects() if isinstance(o, ConnectionHandler) and o.client.peername == sock.getsockname()]
        lock = handler._server_event_lock  # (the lock mitmproxy's server_event takes: the race, made certain)

        async def race() -> None:
            async with lock:
                sock.sendall(b"4\r\nabcd\r\n")  # the handler reads it, then waits for the lock
                await asyncio.sleep(0.2)
                handler.close_connection(handler.client)  # what a refusal's CloseConnection does

        asyncio.run_coroutine_threadsafe(race(), fw._loop).result(5)
        sock.settimeout(3)
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
        sock.close()
    assert closed


def test_a_chunk_size_line_that_never_ends_is_refused(tmp_path):
    """h11 holds a chunk's size line until it ends: a chunk extension sent without end was
    all held (189 MiB for 190 MiB sent). Refused at 64 KiB, recorded."""
    with RawServer(hang) as server, mitm(tmp_path, server.port) as fw:
        before = rss_kib()
        sock = socket.create_connection(("127.0.0.1", fw.port), timeout=10)
        sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n5;ext=")
        sent = 0
        try:
            while sent < 256:  # 16 MiB unless the connection is closed first
                sock.sendall(b"a" * 65536)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.close()
        grown = rss_kib() - before
    assert sent < 256 and grown < 8 * 1024
    rows = audit_rows(tmp_path / "audit.duckdb", "'unreadable_request' IN reason_codes", at_least=1)
    assert "chunk size line" in rows[0]["error"]
