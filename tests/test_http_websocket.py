"""MCP over WebSocket: every message inspected both ways, denials answered on the socket."""

from __future__ import annotations

import json
import subprocess
import sys

import aiohttp
import anyio
import pytest

from firewall import errors
from support import audit_rows
from peers.http_harness import PEERS, InProcessFirewall, free_port, make_config, node22, process
from test_http_reverse import TEST_POLICY

TS_CLIENT = PEERS / "ts_http_client.mjs"


@pytest.fixture(scope="module")
def ws_upstream(tmp_path_factory):
    calls = tmp_path_factory.mktemp("ws") / "calls.jsonl"
    calls.touch()
    port = free_port()
    with process([sys.executable, str(PEERS / "ws_server.py"), "--port", str(port), "--calls", str(calls)], port):
        yield f"ws://127.0.0.1:{port}/mcp", calls


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_typescript_websocket_client(ws_upstream, tmp_path, engine):
    url, calls = ws_upstream
    config = make_config(tmp_path, [{"url": url, "name": "ws"}], policy=TEST_POLICY)
    plan = {"calls": [
        {"tool": "echo", "arguments": {"message": "over a socket"}},
        {"tool": "echo", "arguments": {"message": "forbidden"}},
        {"tool": "ask", "arguments": {"prompt": "hello"}},
        {"tool": "ask", "arguments": {"prompt": "deny me"}},
    ]}
    with InProcessFirewall(config, engine=engine) as fw:
        # The SDK uses the global WebSocket of Node 22 (Node 20 has none).
        done = subprocess.run([node22() or "node", str(TS_CLIENT), "websocket", f"ws://127.0.0.1:{fw.port}/mcp", json.dumps(plan)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    echo, denied, sampled, refused = out["results"]
    assert out["tools"] == ["echo", "ask"]
    assert echo["ok"] and echo["content"][0]["text"] == "over a socket"
    assert denied["error"]["code"] == errors.POLICY_DENIED
    assert sampled["content"][0]["text"] == "sampled: sampled by the TS client"
    # The server's own request was denied: it got the firewall's error, the client saw nothing.
    assert "no sampling of that" in refused["content"][0]["text"]
    assert out["seen"]["sampling"] == ["hello"]
    assert all(c["arguments"].get("message") != "forbidden" for c in map(json.loads, calls.read_text().splitlines()))
    rows = audit_rows(tmp_path / "audit.duckdb", "decision = 'deny'")
    assert {r["transport"] for r in rows} == {"websocket"} and len(rows) == 2
    # The firewall's own error for the denied call is not judged again as if the server sent it
    # (with mitmproxy it comes back through the message hook as an injected message).
    assert audit_rows(tmp_path / "audit.duckdb", "direction = 'server_to_client' AND kind = 'error_response'") == []


def test_malformed_message_is_answered_on_the_socket(ws_upstream, tmp_path):
    config = make_config(tmp_path, [{"url": ws_upstream[0]}])

    async def scenario(port: int):
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/mcp", protocols=("mcp",)) as ws:
            assert ws.protocol == "mcp"
            await ws.send_str('{"jsonrpc": "2.0", "id": 1, "method": "ping", "id": 2}')
            duplicate = json.loads((await ws.receive()).data)
            await ws.send_str('{"jsonrpc": "2.0", "id": 3, "method": "ping"}')
            pong = json.loads((await ws.receive()).data)
            return duplicate, pong

    with InProcessFirewall(config) as fw:
        duplicate, pong = anyio.run(scenario, fw.port)
    assert duplicate["error"]["code"] == errors.INVALID_REQUEST
    assert pong == {"jsonrpc": "2.0", "id": 3, "result": {}}


def test_an_oversized_message_is_answered_for_its_id(ws_upstream, tmp_path):
    config = make_config(tmp_path, [{"url": ws_upstream[0]}], limits={"max_message_bytes": 4096})

    async def scenario(port: int):
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/mcp", protocols=("mcp",)) as ws:
            big = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x" * 6_000}}, "id": 17}
            await ws.send_str(json.dumps(big))
            return json.loads((await ws.receive()).data)

    with InProcessFirewall(config) as fw:
        answer = anyio.run(scenario, fw.port)
    assert answer["id"] == 17 and answer["error"]["code"] == errors.MESSAGE_TOO_LARGE


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_a_handshake_goes_to_the_upstream_of_the_route_it_matched(ws_upstream, tmp_path, engine):
    """mitmproxy's own reverse target is the first upstream: the handshake must be retargeted."""
    dead = f"ws://127.0.0.1:{free_port()}/mcp"
    config = make_config(tmp_path, [{"url": dead, "name": "first"}, {"url": ws_upstream[0], "name": "by-host", "host": "a.example"}])

    async def scenario(port: int):
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"ws://127.0.0.1:{port}/mcp", protocols=("mcp",), headers={"host": "a.example"}) as ws:
            await ws.send_str('{"jsonrpc": "2.0", "id": 3, "method": "ping"}')
            return json.loads((await ws.receive()).data)

    with InProcessFirewall(config, engine=engine) as fw:
        pong = anyio.run(scenario, fw.port)
    assert pong == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert {r["server"] for r in audit_rows(tmp_path / "audit.duckdb", at_least=2)} == {"by-host"}


def test_websockets_count_against_the_connection_caps(ws_upstream, tmp_path):
    """An upgraded connection leaves the HTTP parser but not the caps: one address could
    otherwise hold any number of sockets (two descriptors each) past max_connections_per_client."""
    url, _calls = ws_upstream
    config = make_config(tmp_path, [{"url": url, "name": "ws"}], max_connections_per_client=3)

    async def scenario(port: int) -> tuple[int, bool, bool]:
        async with aiohttp.ClientSession() as http_session:
            sockets = []
            refused = 0
            for _ in range(5):
                try:
                    sockets.append(await http_session.ws_connect(f"ws://127.0.0.1:{port}/mcp", protocols=("mcp",)))
                except (aiohttp.ClientError, ConnectionError):
                    refused += 1
            for ws in sockets:
                await ws.close()
            await anyio.sleep(0.2)
            again = await http_session.ws_connect(f"ws://127.0.0.1:{port}/mcp", protocols=("mcp",))  # room again
            await again.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            answer = json.loads((await again.receive()).data)
            await again.close()
            return len(sockets), refused == 2, answer.get("id") == 1

    with InProcessFirewall(config) as fw:
        opened, refused, served = anyio.run(scenario, fw.port)
    assert opened == 3 and refused and served


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_a_silent_socket_outlives_the_idle_timeout(ws_upstream, tmp_path, engine):
    """An open WebSocket is not an idle connection (mitmproxy closed one silent for its tcp_timeout)."""
    config = make_config(tmp_path, [{"url": ws_upstream[0]}], idle_timeout_seconds=1)

    async def scenario(port: int):
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/mcp", protocols=("mcp",)) as ws:
            await anyio.sleep(2.5)
            await ws.send_str('{"jsonrpc": "2.0", "id": 3, "method": "ping"}')
            return json.loads((await ws.receive(timeout=5)).data)

    with InProcessFirewall(config, engine=engine) as fw:
        assert anyio.run(scenario, fw.port) == {"jsonrpc": "2.0", "id": 3, "result": {}}
