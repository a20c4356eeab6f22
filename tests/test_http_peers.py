"""server-everything (TypeScript) in its streamableHttp and sse modes behind the firewall,
driven by the real TypeScript and Python SDK clients."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from firewall import errors
from support import audit_rows
from peers.http_harness import InProcessFirewall, everything_server, free_port, http, make_config
from test_http_reverse import TEST_POLICY

TS_CLIENT = Path(__file__).parent / "peers" / "ts_http_client.mjs"
ENDPOINT = {"streamableHttp": "/mcp", "sse": "/sse"}


@pytest.fixture(scope="module", params=["streamableHttp", "sse"])
def everything(request, tmp_path_factory):
    transport = request.param
    port = free_port()
    tmp = tmp_path_factory.mktemp(transport)
    with everything_server(port, transport):
        config = make_config(tmp, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "everything"}], policy=TEST_POLICY)
        with InProcessFirewall(config) as fw:
            fw.audit = tmp / "audit.duckdb"
            yield transport, fw


def ts_client(transport: str, url: str, calls: list[dict]) -> dict:
    done = subprocess.run(["node", str(TS_CLIENT), transport, url, json.dumps({"calls": calls})],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_typescript_client(everything):
    transport, fw = everything
    url = fw.url + ENDPOINT[transport]
    probe = ts_client(transport, url, [])
    calls = [
        {"tool": "echo", "arguments": {"message": "through the firewall"}},
        {"tool": "echo", "arguments": {"message": "forbidden"}},
        {"tool": "get-sum", "arguments": {"a": 2, "b": 3}},
    ]
    if "trigger-sampling-request" in probe["tools"]:
        calls.append({"tool": "trigger-sampling-request", "arguments": {"prompt": "hello", "maxTokens": 10}})
    out = ts_client(transport, url, calls)
    echo, denied, total = out["results"][:3]
    assert echo["ok"] and "through the firewall" in echo["content"][0]["text"]
    assert not denied["ok"] and denied["error"]["code"] == errors.POLICY_DENIED
    assert total["ok"] and "5" in total["content"][0]["text"], total
    if len(out["results"]) > 3:
        assert out["results"][3]["ok"] and out["seen"]["sampling"][0].endswith("hello")
    rows = audit_rows(fw.audit, "decision = 'deny'", at_least=1)
    assert rows and rows[-1]["transport"] == ("sse" if transport == "sse" else "http")


def test_python_client(everything):
    transport, fw = everything
    url = fw.url + ENDPOINT[transport]

    async def scenario():
        target = sse_client(url) if transport == "sse" else url
        async with Client(target) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            ok = await client.call_tool("echo", {"message": "python"})
            with anyio.fail_after(10), pytest.raises(MCPError) as denied:
                await client.call_tool("echo", {"message": "forbidden"})
            again = await client.call_tool("echo", {"message": "again"})
            return names, ok.content[0].text, denied.value.error.code, again.content[0].text

    names, ok, code, again = anyio.run(scenario)
    assert "echo" in names and "python" in ok and "again" in again
    assert code == errors.POLICY_DENIED


def test_a_server_error_for_an_unknown_session_reaches_the_client(everything):
    """server-everything answers a request in a session it does not know with 400 and an
    error that has no "id" (JSON-RPC wants null there): the client must get that status and
    message, not the firewall's 502 for an answer it refused."""
    transport, fw = everything
    if transport != "streamableHttp":
        pytest.skip("sessions in headers are Streamable HTTP's")
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-session-id": "no-such-session", "mcp-protocol-version": "2025-11-25"}
    r = http("POST", fw.url + "/mcp", json_body=call, headers=headers)
    assert r.status_code == 400 and "session" in r.json()["error"]["message"].lower(), r.text


def test_the_firewalls_own_replies_carry_the_servers_cors_grant(everything):
    """A browser reads a cross-origin answer only with Access-Control-Allow-Origin: a denial the
    firewall writes must carry what the server granted that origin, or the browser client
    sees a network error instead of the JSON-RPC error. Nothing the server did not grant."""
    transport, fw = everything
    if transport != "streamableHttp":
        pytest.skip("one transport is enough: the replies are built alike")
    origin = "http://inspector.example:6274"
    base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "browser", "version": "1"}}}
    opened = http("POST", fw.url + "/mcp", json_body=init, headers={**base, "origin": origin})
    granted = opened.headers.get("access-control-allow-origin")
    assert granted in ("*", origin)  # server-everything's own grant, relayed
    session = {**base, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    http("POST", fw.url + "/mcp", json_body={"jsonrpc": "2.0", "method": "notifications/initialized"},
         headers={**session, "origin": origin})
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "forbidden"}}}
    denied = http("POST", fw.url + "/mcp", json_body=call, headers={**session, "origin": origin})
    assert denied.json()["error"]["code"] == errors.POLICY_DENIED
    assert denied.headers.get("access-control-allow-origin") == granted
    # A client that is no browser (no Origin) gets no CORS fields from the firewall.
    plain = http("POST", fw.url + "/mcp", json_body={**call, "id": 3}, headers=session)
    assert plain.json()["error"]["code"] == errors.POLICY_DENIED and "access-control-allow-origin" not in plain.headers
