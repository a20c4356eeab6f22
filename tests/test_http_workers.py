"""Two lean worker processes on one port: every session's state stays in one process."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from firewall import errors
from support import audit_rows
from peers.http_harness import everything_server, firewall_cli, free_port
from test_http_reverse import TEST_POLICY


@pytest.mark.parametrize("transport", ["streamableHttp", "sse"])
def test_sessions_across_workers(tmp_path, transport):
    bundle = tmp_path / "policy" / "mcpfw"
    bundle.mkdir(parents=True)
    (bundle / "decision.rego").write_text(TEST_POLICY)
    upstream, port = free_port(), free_port()
    audit = tmp_path / "audit.duckdb"

    async def one_client(url: str, n: int) -> list[str]:
        target = sse_client(url) if transport == "sse" else url
        out = []
        async with Client(target, mode="legacy") as client:
            for i in range(n):
                out.append((await client.call_tool("echo", {"message": f"m{i}"})).content[0].text)
            with anyio.fail_after(10), pytest.raises(MCPError) as denied:
                await client.call_tool("echo", {"message": "forbidden"})
            assert denied.value.error.code == errors.POLICY_DENIED
        return out

    async def many(url: str) -> list[list[str]]:
        results: list[list[str]] = []

        async def run(i: int) -> None:
            results.append(await one_client(url, 5))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(run, i)
        return results

    with everything_server(upstream, transport):
        path = "/sse" if transport == "sse" else "/mcp"
        with firewall_cli(f"http://127.0.0.1:{upstream}/mcp", port, audit, "--workers", "2", "--policy", str(bundle.parent)):
            results = anyio.run(many, f"http://127.0.0.1:{port}{path}")
    assert len(results) == 6 and all(len(r) == 5 and "m4" in r[-1] for r in results)
    calls = audit_rows(audit, "method = 'tools/call' AND direction = 'client_to_server'")
    assert len(calls) == 6 * 6
    # Every call was judged with its session's state, wherever its connection landed.
    assert {row["protocol_era"] for row in calls} == {"2025-11-25"}
    assert {row["client_name"] for row in calls} == {"mcp"} or all(row["client_name"] for row in calls)
    assert len({row["session_id"] for row in calls}) == 6


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"accept: application/json, text/event-stream\r\n%scontent-length: %d\r\n\r\n%s" % (extra, len(body), body))


def _read_response(sock, buf: bytearray) -> tuple[bytes, bytes]:
    """One chunked or sized response from a raw socket (``buf`` keeps what follows it)."""
    import re

    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    if head.startswith(b"HTTP/1.1 1"):
        return head, b""  # an interim response
    if m := re.search(rb"content-length: *(\d+)", head, re.IGNORECASE):
        size = int(m.group(1))
        while len(buf) < size:
            buf += sock.recv(65536)
        body = bytes(buf[:size])
        del buf[:size]
        return head, body
    body = b""
    while True:
        while b"\r\n" not in buf:
            buf += sock.recv(65536)
        line_end = buf.index(b"\r\n")
        size = int(bytes(buf[:line_end]), 16)
        while len(buf) < line_end + 2 + size + 2:
            buf += sock.recv(65536)
        body += bytes(buf[line_end + 2:line_end + 2 + size])
        del buf[:line_end + 2 + size + 2]
        if size == 0:
            return head, body


def test_connections_move_to_the_session_owner(tmp_path):
    """Keep-alive connections whose session another worker owns: the connection is handed
    over (or, with pipelined requests, relayed), and every request is answered in order."""
    import socket

    upstream, port = free_port(), free_port()
    audit = tmp_path / "audit.duckdb"
    init = (b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}')

    def call(i: int) -> bytes:
        return b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"message":"m%d"}}}' % (i, i)

    with everything_server(upstream, "streamableHttp"), \
            firewall_cli(f"http://127.0.0.1:{upstream}/mcp", port, audit, "--workers", "2"):
        for _ in range(8):  # connections land on either worker; sessions belong to either
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                buf = bytearray()
                sock.sendall(_post(init))
                head, _ = _read_response(sock, buf)
                sid = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                           if line.lower().startswith(b"mcp-session-id:"))
                extra = b"mcp-session-id: %s\r\nmcp-protocol-version: 2025-11-25\r\n" % sid
                sock.sendall(_post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', extra))
                assert _read_response(sock, buf)[0].startswith(b"HTTP/1.1 202")
                sock.sendall(_post(call(1), extra))
                assert b"Echo: m1" in _read_response(sock, buf)[1]
                # 100-continue, then two pipelined requests in one write
                sock.sendall(_post(call(2), extra + b"expect: 100-continue\r\n"))
                head, body = _read_response(sock, buf)
                if head.startswith(b"HTTP/1.1 100"):
                    head, body = _read_response(sock, buf)
                assert b"Echo: m2" in body
                sock.sendall(_post(call(3), extra) + _post(call(4), extra))
                assert b"Echo: m3" in _read_response(sock, buf)[1]
                assert b"Echo: m4" in _read_response(sock, buf)[1]
    calls = audit_rows(audit, "method = 'tools/call' AND direction = 'client_to_server'")
    assert len(calls) == 8 * 4
    assert len({row["session_id"] for row in calls}) == 8
