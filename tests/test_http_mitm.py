"""Regular (forward) proxy mode on mitmproxy: plain HTTP, TLS interception with mitmproxy's
CA, and what happens to traffic that is not MCP."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
from pathlib import Path

import aiohttp
import anyio
import pytest

from firewall import errors
from support import audit_rows
from peers.http_harness import InProcessFirewall, conformance_server, free_port, make_config
from test_http_reverse import TEST_POLICY

ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "upstream.pem", tmp / "upstream.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def messages(body: bytes, content_type: str) -> list[dict]:
    if not body.strip():
        return []
    if content_type.startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in body.decode().splitlines() if line.startswith("data:") and line[5:].strip()]
    return [json.loads(body)]


async def mcp_session(url: str, proxy: str, ssl_ctx: ssl.SSLContext | bool = True) -> list[dict]:
    """initialize, an allowed call and a denied one, as a client configured with a proxy."""
    answers = []
    async with aiohttp.ClientSession() as http:
        async def post(body: dict, headers: dict) -> tuple[dict, dict]:
            async with http.post(url, json=body, headers={**ACCEPT, **headers}, proxy=proxy, ssl=ssl_ctx) as r:
                found = messages(await r.read(), r.headers.get("content-type", ""))
                return (found[-1] if found else {}), dict(r.headers)

        init, headers = await post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "proxied", "version": "1"}}}, {})
        session = {"mcp-session-id": headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        await post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        answers.append(init)
        for i, message in enumerate(("via the proxy", "forbidden"), start=2):
            answer, _ = await post({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                    "params": {"name": "echo", "arguments": {"message": message}}}, session)
            answers.append(answer)
    return answers


def test_regular_mode_plain_http(tmp_path):
    port = free_port()
    with conformance_server(port):
        config = make_config(tmp_path, [], policy=TEST_POLICY, mode="regular", confdir=str(tmp_path / "mitm"))
        with InProcessFirewall(config, engine="mitmproxy") as fw:
            init, ok, denied = anyio.run(mcp_session, f"http://127.0.0.1:{port}/mcp", fw.url)
    assert init["result"]["serverInfo"]["name"] == "mcpfw-conformance-fixtures"
    assert ok["result"]["content"][0]["text"] == "via the proxy"
    assert denied["error"]["code"] == errors.POLICY_DENIED
    rows = audit_rows(tmp_path / "audit.duckdb", "method = 'tools/call' AND direction = 'client_to_server'")
    assert [r["decision"] for r in rows][1:] == ["deny"] and rows[0]["server"] == f"127.0.0.1:{port}"  # named as reverse mode names it


def test_tls_interception_with_the_mitmproxy_ca(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    confdir = tmp_path / "mitm"
    with conformance_server(port, "--tls", str(cert), str(key)):
        config = make_config(tmp_path, [], policy=TEST_POLICY, mode="regular", confdir=str(confdir), ssl_insecure=True)
        with InProcessFirewall(config, engine="mitmproxy") as fw:
            # The client trusts mitmproxy's CA (step 3 of docs/http.md), nothing else.
            trust = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
            init, ok, denied = anyio.run(mcp_session, f"https://127.0.0.1:{port}/mcp", fw.url, trust)
            # Without the CA the interception is visible to the client, as it should be.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                anyio.run(mcp_session, f"https://127.0.0.1:{port}/mcp", fw.url, ssl.create_default_context())
    assert ok["result"]["content"][0]["text"] == "via the proxy"
    assert denied["error"]["code"] == errors.POLICY_DENIED
    rows = audit_rows(tmp_path / "audit.duckdb", "decision = 'deny'")
    assert rows and rows[0]["tool"] == "echo"


@pytest.mark.parametrize("http2", [False, True])
def test_intercepted_tls_clients_speak_http1_unless_configured(tmp_path, http2):
    """mitmproxy gives one HTTP/2 client connection at most five upstream connections: a client
    whose sampling calls each wait for its own answer (a new POST) deadlocked there, and the
    client limits cover HTTP/1 only. So HTTP/2 is not offered unless `proxy.http2` is set."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    confdir = tmp_path / "mitm"
    with conformance_server(port, "--tls", str(cert), str(key)):
        config = make_config(tmp_path, [], mode="regular", confdir=str(confdir), ssl_insecure=True, http2=http2)
        with InProcessFirewall(config, engine="mitmproxy") as fw:
            sock = socket.create_connection(("127.0.0.1", fw.port), timeout=5)
            sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port))
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            trust = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
            trust.set_alpn_protocols(["h2", "http/1.1"])
            with trust.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                chosen = tls.selected_alpn_protocol()
    assert chosen == ("h2" if http2 else "http/1.1")


@pytest.mark.parametrize("non_mcp", ["pass", "deny"])
def test_traffic_that_is_not_mcp(tmp_path, non_mcp):
    port = free_port()

    async def plain_requests(proxy: str) -> tuple[int, bytes, int]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/not-mcp", proxy=proxy) as r:
                page = (r.status, await r.read())
            async with http.post(f"http://127.0.0.1:{port}/form", data={"a": "b"}, proxy=proxy) as r:
                return page[0], page[1], r.status

    with conformance_server(port):
        config = make_config(tmp_path, [], mode="regular", non_mcp=non_mcp, confdir=str(tmp_path / "mitm"))
        with InProcessFirewall(config, engine="mitmproxy") as fw:
            status, body, form = anyio.run(plain_requests, fw.url)
            mcp_still_works = anyio.run(mcp_session, f"http://127.0.0.1:{port}/mcp", fw.url)
    if non_mcp == "pass":
        assert (status, form) == (404, 404)  # the server's own answers, untouched
    else:
        assert (status, form) == (403, 403) and b"only MCP" in body
    assert mcp_still_works[1]["result"]["content"][0]["text"] == "via the proxy"


def test_transparent_mode_options_reach_mitmproxy(tmp_path):
    from firewall.transports.http.mitm import _options
    from firewall.transports.http.runner import Listen

    config = make_config(tmp_path, [], mode="transparent", confdir=str(tmp_path / "mitm"), ssl_insecure=True)
    opts = _options(config, Listen("0.0.0.0", 8080))
    assert opts["mode"] == ["transparent"]
    assert (opts["listen_host"], opts["listen_port"]) == ("0.0.0.0", 8080)
    assert opts["confdir"] == str(tmp_path / "mitm") and opts["ssl_insecure"] is True
    assert opts["connection_strategy"] == "lazy" and opts["stream_large_bodies"] is None
    assert opts["http2"] is False


def test_transparent_mode_end_to_end(tmp_path, monkeypatch):
    """Transparent mode as after an iptables REDIRECT: the client connects to what it takes
    for the server, and mitmproxy asks the kernel where the connection was going.
    This machine has no iptables, so that one kernel query (SO_ORIGINAL_DST) answers
    with the server's address here; everything after it is the real path."""
    from mitmproxy import platform

    port = free_port()
    monkeypatch.setattr(platform, "original_addr", lambda sock: ("127.0.0.1", port))
    with conformance_server(port):
        config = make_config(tmp_path, [], policy=TEST_POLICY, mode="transparent", confdir=str(tmp_path / "mitm"))
        with InProcessFirewall(config, engine="mitmproxy") as fw:
            # No proxy setting: the client believes it talks to the server itself.
            init, ok, denied = anyio.run(mcp_session, f"http://127.0.0.1:{fw.port}/mcp", None)
    assert init["result"]["serverInfo"]["name"] == "mcpfw-conformance-fixtures"
    assert ok["result"]["content"][0]["text"] == "via the proxy"
    assert denied["error"]["code"] == errors.POLICY_DENIED
    rows = audit_rows(tmp_path / "audit.duckdb", "method = 'tools/call' AND direction = 'client_to_server'")
    # the first call carries the policy's (empty) redaction obligation
    assert [r["decision"] for r in rows] == ["redact", "deny"] and rows[0]["server"] == f"127.0.0.1:{port}"


def test_only_mcp_leaves_no_side_door(tmp_path):
    """With non_mcp: deny, requests that merely look like MCP (an event-stream Accept header, a
    session header on another method, a WebSocket upgrade without the mcp subprotocol) and raw
    TCP tunnels are refused and audited."""
    import socket
    import threading

    port = free_port()
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(4)
    echo_port = echo.getsockname()[1]

    def serve_echo() -> None:
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-banner\r\n")

    threading.Thread(target=serve_echo, daemon=True).start()

    async def side_doors(proxy: str) -> dict[str, int]:
        out = {}
        async with aiohttp.ClientSession() as http:
            target = f"http://127.0.0.1:{port}/not-mcp"
            async with http.get(target, proxy=proxy, headers={"accept": "text/event-stream"}) as r:
                out["sse-accept"] = r.status
            async with http.put(target, proxy=proxy, headers={"mcp-session-id": "x"}, data=b"hi") as r:
                out["put-session"] = r.status
            async with http.delete(target, proxy=proxy, headers={"mcp-session-id": "unknown"}) as r:
                out["delete-unknown-session"] = r.status
            async with http.get(target, proxy=proxy, headers={
                    "upgrade": "websocket", "connection": "upgrade", "sec-websocket-version": "13",
                    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                out["websocket-without-mcp"] = r.status
        return out

    def raw_tunnel(proxy_port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
            sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n\r\n" % (echo_port, echo_port))
            sock.recv(4096)  # 200 Connection established
            sock.sendall(b"SSH-2.0-client\r\n")  # neither TLS nor HTTP: a raw TCP stream
            got = b""
            try:
                while chunk := sock.recv(4096):
                    got += chunk
                    if b"banner" in got:
                        break
            except (TimeoutError, ConnectionResetError):
                pass
            return got

    try:
        with conformance_server(port):
            config = make_config(tmp_path, [], mode="regular", non_mcp="deny", confdir=str(tmp_path / "mitm"))
            with InProcessFirewall(config, engine="mitmproxy") as fw:
                statuses = anyio.run(side_doors, fw.url)
                tunnelled = raw_tunnel(fw.port)
    finally:
        echo.close()
    assert statuses == {name: 403 for name in statuses}, statuses
    assert b"banner" not in tunnelled
    assert len(audit_rows(tmp_path / "audit.duckdb", "'non_mcp_denied' = ANY(reason_codes)", at_least=5)) >= 5
