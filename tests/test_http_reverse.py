"""Reverse mode in front of a Python SDK server, driven by the real Python SDK client.

Both spec eras, JSON and SSE answers, sampling over SSE, denials that never reach the
server, redaction, and the 2026-07-28 routing headers.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from firewall import errors
from support import audit_rows
from peers.http_harness import InProcessFirewall, conformance_server, free_port, make_config

TEST_POLICY = """package mcpfw

decision := {
	"allow": count(deny) == 0,
	"reasons": [r | some r in deny],
	"redact": [x | some x in redact],
}

deny contains {"code": "test_forbidden", "message": "the word forbidden"} if {
	input.tool.arguments.message == "forbidden"
}

deny contains {"code": "test_no_sampling", "message": "no sampling of that"} if {
	input.method == "sampling/createMessage"
	input.kind == "request"
	input.params.messages[0].content.text == "deny me"
}

deny contains {"code": "test_header", "message": "the policy saw Mcp-Name"} if {
	input.findings.http.headers["mcp-name"] == "policy_probe"
}

# Only where there is a message to redact: a pointer that does not resolve denies the call.
redact contains {"pointer": "/params/arguments/message", "pattern": "sk-[a-z0-9]+"} if {
	input.kind == "request"
	input.method == "tools/call"
	is_string(input.tool.arguments.message)
}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    calls = tmp / "calls.jsonl"
    calls.touch()
    port = free_port()
    with conformance_server(port, "--calls", str(calls)):
        yield f"http://127.0.0.1:{port}/mcp", calls


@pytest.fixture(scope="module")
def firewall(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fw")
    config = make_config(tmp, [{"url": upstream[0], "name": "fixtures"}], policy=TEST_POLICY)
    with InProcessFirewall(config) as fw:
        fw.audit = tmp / "audit.duckdb"
        yield fw


def calls_seen(calls: Path) -> list[dict]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def rows(fw, where: str) -> list[dict]:
    return audit_rows(fw.audit, where, at_least=1, timeout=5)


async def sampled(context, params) -> types.CreateMessageResult:
    sampled.seen.append(params.messages[0].content.text)
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="from the client"), model="m")


sampled.seen = []


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_allowed_calls_are_unchanged(upstream, firewall, mode):
    async def results(url: str) -> list:
        async with Client(url, mode=mode) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            out = [tools]
            for name, args in (("echo", {"message": "hello"}), ("test_multiple_content_types", {}), ("test_error_handling", {})):
                result = await client.call_tool(name, args)
                out.append((result.is_error, [c.model_dump() for c in result.content]))
            return out

    direct = anyio.run(results, upstream[0])
    through = anyio.run(results, f"{firewall.url}/mcp")
    assert through == direct
    assert through[1] == (False, [{"type": "text", "text": "hello", "annotations": None, "meta": None}]) or through[1][1][0]["text"] == "hello"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_denied_call_never_reaches_the_server(upstream, firewall, mode):
    async def scenario():
        async with Client(f"{firewall.url}/mcp", mode=mode) as client:
            with pytest.raises(MCPError) as denied:
                await client.call_tool("echo", {"message": "forbidden"})
            after = await client.call_tool("echo", {"message": "still here"})
            return denied.value.error, after.content[0].text

    error, after = anyio.run(scenario)
    assert error.code == errors.POLICY_DENIED
    assert "forbidden" in error.message and error.data["decision_id"]
    assert after == "still here"
    assert all(c["arguments"].get("message") != "forbidden" for c in calls_seen(upstream[1]))
    (row,) = rows(firewall, f"decision_id = '{error.data['decision_id']}'")
    assert row["decision"] == "deny" and row["transport"] == "http" and row["server"] == "fixtures"
    assert row["reason_codes"] == ["test_forbidden"]


def test_redaction_reaches_the_server_redacted(upstream, firewall):
    async def scenario():
        async with Client(f"{firewall.url}/mcp", mode="legacy") as client:
            return (await client.call_tool("echo", {"message": "key sk-abc123 here"})).content[0].text

    assert anyio.run(scenario) == "key [REDACTED] here"
    assert {"name": "echo", "arguments": {"message": "key [REDACTED] here"}} in calls_seen(upstream[1])


def test_sampling_over_sse_and_a_denied_server_request(firewall):
    sampled.seen.clear()

    async def scenario():
        async with Client(f"{firewall.url}/mcp", mode="legacy", sampling_callback=sampled) as client:
            ok = await client.call_tool("test_sampling", {"prompt": "hello"})
            with anyio.fail_after(10), pytest.raises(MCPError) as refused:
                await client.call_tool("test_sampling", {"prompt": "deny me"})
            return ok, refused.value.error

    ok, refused = anyio.run(scenario)
    assert ok.content[0].text == "LLM response: from the client"
    assert sampled.seen == ["hello"]  # the denied request never reached the client
    # The server got the firewall's error for its own request, and failed the tool call with it.
    assert "no sampling of that" in refused.message
    denials = rows(firewall, "method = 'sampling/createMessage' AND decision = 'deny'")
    assert denials and denials[-1]["direction"] == "server_to_client"


def test_modern_era_headers_reach_the_policy(firewall):
    async def scenario():
        async with Client(f"{firewall.url}/mcp") as client:
            ok = await client.call_tool("echo", {"message": "modern"})
            with pytest.raises(MCPError) as denied:
                await client.call_tool("policy_probe", {})
            return ok.content[0].text, denied.value.error

    text, error = anyio.run(scenario)
    assert text == "modern"
    assert error.code == errors.POLICY_DENIED and "Mcp-Name" in error.message
    (row,) = rows(firewall, f"decision_id = '{error.data['decision_id']}'")
    assert row["protocol_era"] == "2026-07-28"
    assert json.loads(row["findings"])["http"]["headers"]["mcp-name"] == "policy_probe"


def modern_call(name: str, arguments: dict) -> dict:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    return {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": name, "arguments": arguments, "_meta": meta}}


async def post(url: str, body: dict, headers: dict) -> tuple[int, str, bytes]:
    base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers={**base, **headers}) as r:
        return r.status, r.headers.get("content-type", ""), await r.read()


def test_header_body_mismatch_is_denied_at_the_firewall(upstream, firewall):
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "test_simple_text"}
    status, _, raw = anyio.run(post, f"{firewall.url}/mcp", modern_call("echo", {"message": "smuggled"}), headers)
    answer = json.loads(raw)
    assert status == 400 and answer["error"]["code"] == -32020 and answer["id"] == 5
    assert all(c["arguments"].get("message") != "smuggled" for c in calls_seen(upstream[1]))
    (row,) = rows(firewall, f"decision_id = '{answer['error']['data']['decision_id']}'")
    assert row["reason_codes"] == ["header_mismatch"] and row["error_code"] == -32020
    # Agreeing headers pass.
    headers["mcp-name"] = "echo"
    status, _, raw = anyio.run(post, f"{firewall.url}/mcp", modern_call("echo", {"message": "agreed"}), headers)
    assert status == 200 and b"agreed" in raw


def test_redaction_keeps_mcp_name_and_body_in_step(upstream, firewall):
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    status, _, raw = anyio.run(post, f"{firewall.url}/mcp", modern_call("echo", {"message": "sk-zzz"}), headers)
    assert status == 200 and b"[REDACTED]" in raw  # the server checked Mcp-Name against the rewritten body
    headers["mcp-param-message"] = "sk-zzz"
    status, _, raw = anyio.run(post, f"{firewall.url}/mcp", modern_call("echo", {"message": "sk-yyy"}), headers)
    assert status == 400 and json.loads(raw)["error"]["code"] == -32020
    assert all("sk-yyy" not in json.dumps(c) for c in calls_seen(upstream[1]))


def test_denial_in_the_framing_the_client_accepts(firewall):
    body = modern_call("echo", {"message": "forbidden"})
    status, ctype, raw = anyio.run(post, f"{firewall.url}/mcp", body, {"accept": "text/event-stream"})
    assert status == 200 and ctype.startswith("text/event-stream")
    assert raw.startswith(b"data: ") and b'"code":-32051' in raw
    status, ctype, raw = anyio.run(post, f"{firewall.url}/mcp", body, {})
    assert status == 200 and ctype.startswith("application/json") and json.loads(raw)["error"]["code"] == -32051


def test_session_lifecycle_headers(firewall):
    async def scenario():
        url = f"{firewall.url}/mcp"
        base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=init, headers=base) as r:
                sid = r.headers["mcp-session-id"]
                await r.read()
            session = {**base, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
            async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session) as r:
                assert r.status == 202
            async with http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=session) as r:
                assert r.status == 200 and r.headers["mcp-session-id"] == sid
                await r.read()
            async with http.delete(url, headers=session) as r:
                assert r.status in (200, 204)
            async with http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=session) as r:
                return r.status

    assert anyio.run(scenario) == 404  # the server ended the session; its answer came through


@pytest.mark.parametrize("flag", ["--json-response", "--stateless"])
def test_json_and_stateless_servers(tmp_path, flag):
    port = free_port()
    with conformance_server(port, flag):
        config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp"}], policy=TEST_POLICY)
        with InProcessFirewall(config) as fw:
            async def scenario():
                async with Client(f"{fw.url}/mcp", mode="legacy") as client:
                    ok = await client.call_tool("echo", {"message": "json"})
                    with pytest.raises(MCPError) as denied:
                        await client.call_tool("echo", {"message": "forbidden"})
                    return ok.content[0].text, denied.value.error.code

            assert anyio.run(scenario) == ("json", errors.POLICY_DENIED)


def test_recorded_inputs_over_http_replay_unchanged(upstream, tmp_path):
    # audit.record_inputs must hold on every transport: the HTTP side builds its own inspector.
    config = make_config(tmp_path, [{"url": upstream[0], "name": "fixtures"}], policy=TEST_POLICY)
    config = config.model_copy(update={"audit": config.audit.model_copy(update={"record_inputs": True})})

    async def call(url: str) -> None:
        async with Client(url) as client:
            await client.call_tool("echo", {"message": "hello"})
            with pytest.raises(MCPError):
                await client.call_tool("echo", {"message": "forbidden"})

    with InProcessFirewall(config) as fw:
        anyio.run(call, f"{fw.url}/mcp")
        recorded = audit_rows(tmp_path / "audit.duckdb", "method = 'tools/call' AND kind = 'request'", at_least=2, timeout=5)
    assert [json.loads(r["policy_input"])["tool"]["arguments"]["message"] for r in recorded] == ["hello", "forbidden"]
    from firewall.policy.engine import create_engine
    from firewall.policy.bundle import load_bundle
    from firewall.policy.replay import replay

    engine = create_engine("regorus", load_bundle(tmp_path / "policy"))
    try:
        report = replay(tmp_path / "audit.duckdb", engine)
    finally:
        engine.close()
    assert report.replayed >= 4 and report.changed == 0 and report.not_recorded == 0
