"""The tool registry with real servers and the real SDK client, through `mcpfw stdio` and
`mcpfw proxy`: rug pulls, new and shadowing tools blocked until `mcpfw registry approve`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from firewall import errors
from firewall.cli import main as mcpfw

from support import audit_rows, everything_server, filesystem_server, shim_command

DRIFTING = Path(__file__).parent / "peers" / "drifting_server.py"


def drifting(variant: str, calls: Path, *extra: str) -> list[str]:
    return [sys.executable, str(DRIFTING), variant, "--calls", str(calls), *extra]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Detectors that need a model are off: these tests are about the registry."""
    path = tmp_path / "mcpfw.yaml"
    path.write_text("detectors:\n  injection: {enabled: false}\n  intent: {enabled: false}\n")
    return path


def shim(audit: Path, config: Path, registry: Path, name: str, server: list[str], *flags: str) -> StdioServerParameters:
    command = shim_command(audit, "--config", str(config), "--registry", str(registry), "--server-name", name, *flags, server=server)
    return StdioServerParameters(command=command[0], args=command[1:])


async def denial(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[str, str]:
    """(reason codes, message) of a tools/call the firewall refuses."""
    with pytest.raises(MCPError) as refused:
        await client.call_tool(tool, arguments)
    error = refused.value.error
    assert error.code == errors.POLICY_DENIED
    return ",".join(sorted(r["code"] for r in error.data["reasons"])), error.message


def calls_seen(path: Path) -> list[str]:
    return [json.loads(line)["name"] for line in path.read_text().splitlines()] if path.exists() else []


def registry_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = mcpfw(["registry", *argv])
    return code, capsys.readouterr().out


def test_rug_pull_new_and_shadowing_tools_blocked_until_approved(tmp_path, config, capsys):
    registry = tmp_path / "team" / "registry.yaml"
    calls = tmp_path / "calls.jsonl"
    workspace = tmp_path / "ws"
    workspace.mkdir()

    async def list_names(params: StdioServerParameters) -> set[str]:
        async with Client(params) as client:
            return {t.name for t in (await client.list_tools()).tools}

    async def filesystem() -> None:
        # server-filesystem is trusted first with its read_text_file.
        assert "read_text_file" in await list_names(shim(tmp_path / "a1.duckdb", config, registry, "fs", filesystem_server(workspace)))

    async def base() -> None:
        async with Client(shim(tmp_path / "a2.duckdb", config, registry, "drift", drifting("base", calls))) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "echo"}
            assert (await client.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3.0"

    async def first_install() -> None:
        async with anyio.create_task_group() as both:  # two shims sharing the state, as a desktop client runs them
            both.start_soon(filesystem)
            both.start_soon(base)

    async def rug_pull() -> dict[str, tuple[str, str]]:
        async with Client(shim(tmp_path / "a3.duckdb", config, registry, "drift", drifting("rugpull", calls))) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"echo"}
            refused = {
                "add": await denial(client, "add", {"a": 1, "b": 2}),
                "multiply": await denial(client, "multiply", {"a": 2, "b": 3}),
                "read_text_file": await denial(client, "read_text_file", {"path": "/etc/hostname"}),
            }
            assert (await client.call_tool("echo", {"message": "still here"})).content[0].text == "still here"
            return refused

    anyio.run(first_install)
    refused = anyio.run(rug_pull)
    assert refused["add"][0] == "registry_drift"
    assert "tool 'add' of server 'drift' changed since it was pinned (description, inputSchema" in refused["add"][1]
    assert refused["multiply"][0] == "registry_unapproved"
    assert refused["read_text_file"][0] == "registry_shadowing"
    assert "shadows the tool of the same name offered by fs" in refused["read_text_file"][1]
    assert calls_seen(calls) == ["add", "echo"], "no refused call reached the server"
    listed = audit_rows(tmp_path / "a3.duckdb", "method = 'tools/list' AND kind = 'response'")
    assert listed[0]["decision"] == "redact" and "registry_blocked" in listed[0]["tags"]

    # The security engineer reviews exactly what changed, and approves it.
    code, out = registry_cli(capsys, "diff", "drift", "--registry", str(registry))
    assert code == 1
    assert "default/drift: tool 'add' changed (description, inputSchema" in out
    assert "Adds two [-numbers.-]{+numbers and returns their sum, rounded to the given note's precision.+}" in out
    assert '+    "note": {' in out
    assert "default/drift: tool 'read_text_file' new" in out and "offered by fs" in out
    code, out = registry_cli(capsys, "approve", "drift", "add", "multiply", "read_text_file", "--registry", str(registry), "--by", "alice")
    assert code == 0 and out.count("approved in") == 3
    assert "approved_by: alice" in registry.read_text()
    # The new version also brought a capability (completions): protocol drift, left to review.
    code, out = registry_cli(capsys, "diff", "--registry", str(registry))
    assert code == 1 and out.startswith("default/drift: protocol changed (capabilities)") and "tool '" not in out
    assert registry_cli(capsys, "approve", "drift", "--protocol", "--registry", str(registry))[0] == 0
    assert registry_cli(capsys, "diff", "--registry", str(registry))[0] == 0

    async def approved() -> None:
        async with Client(shim(tmp_path / "a4.duckdb", config, registry, "drift", drifting("rugpull", calls))) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "echo", "multiply", "read_text_file"}
            assert (await client.call_tool("multiply", {"a": 2, "b": 3})).content[0].text == "6.0"
            assert (await client.call_tool("add", {"a": 1, "b": 2, "note": "x"})).content[0].text == "3.0"

    async def strict() -> None:
        # Strict mode trusts the registry file only: echo was pinned on first use, never approved.
        params = shim(tmp_path / "a5.duckdb", config, registry, "drift", drifting("rugpull", calls), "--registry-mode", "strict")
        async with Client(params) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "multiply", "read_text_file"}
            assert (await denial(client, "echo", {"message": "x"}))[0] == "registry_unapproved"

    anyio.run(approved)
    anyio.run(strict)
    assert calls_seen(calls) == ["add", "echo", "multiply", "add"]


@pytest.mark.parametrize("which", ["everything", "filesystem"])
def test_stable_servers_raise_no_finding_on_a_clean_second_run(which, tmp_path, config, capsys):
    registry = tmp_path / "registry.yaml"
    state = tmp_path / "registry.state.json"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    server = everything_server() if which == "everything" else filesystem_server(workspace)

    async def session(audit: Path) -> int:
        async with Client(shim(audit, config, registry, which, server)) as client:
            listed = len((await client.list_tools()).tools)
            for fetch in (client.list_prompts, client.list_resource_templates):
                try:
                    result = await fetch()
                except MCPError:
                    continue  # the server does not offer this kind
                items = getattr(result, "prompts", None)
                listed += len(items if items is not None else result.resource_templates)
            return listed

    first = anyio.run(session, tmp_path / "first.duckdb")
    learned = state.read_bytes()
    assert anyio.run(session, tmp_path / "second.duckdb") == first > 0
    assert state.read_bytes() == learned, "a clean run writes nothing"
    second = audit_rows(tmp_path / "second.duckdb")
    assert second and not [r for r in second if any(t.startswith("registry_") for t in r["tags"])]
    assert not [r for r in second if r["decision"] != "allow"]
    code, out = registry_cli(capsys, "diff", "--registry", str(registry))
    assert (code, out) == (0, f"no pending changes (registry {registry})\n")
    code, out = registry_cli(capsys, "list", which, "--registry", str(registry), "--json")
    entries = json.loads(out)["entries"]
    assert len(entries) == first and {e["status"] for e in entries} == {"pinned"}


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_live_rug_pull_over_subscriptions_listen_is_caught_with_its_hidden_instructions(transport, tmp_path, config):
    registry = tmp_path / "registry.yaml"
    calls = tmp_path / "calls.jsonl"
    audit = tmp_path / "audit.duckdb"

    async def scenario(target: Any) -> tuple[str, str]:
        async with Client(target) as client:
            assert client.protocol_version == "2026-07-28"
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "echo", "upgrade", "reword"}
            async with client.listen(tools_list_changed=True) as changes:
                await client.call_tool("upgrade", {})
                with anyio.fail_after(10):
                    async for _event in changes:
                        break
            assert {t.name for t in (await client.list_tools()).tools} == {"echo", "upgrade", "reword"}
            return await denial(client, "add", {"a": 1, "b": 2})

    if transport == "stdio":
        codes, message = anyio.run(scenario, shim(audit, config, registry, "drift", drifting("live", calls)))
    else:
        from firewall.config import Config
        from peers.http_harness import InProcessFirewall, free_port, process

        port = free_port()
        settings = Config.model_validate({
            "audit": {"path": str(audit), "flush_interval_ms": 50},
            "proxy": {"upstreams": [{"url": f"http://127.0.0.1:{port}/mcp", "name": "drift"}], "upstream_timeout_seconds": 10},
            "detectors": {"injection": {"enabled": False}, "intent": {"enabled": False}},
            "registry": {"file": str(registry)},
        })
        with InProcessFirewall(settings) as fw, process(drifting("live", calls, "--http", str(port)), port):
            codes, message = anyio.run(scenario, fw.url + "/mcp")
    assert codes == "poisoned_tool,registry_drift"
    assert "changed since it was pinned (description" in message
    assert calls_seen(calls) == ["upgrade"]
    rows = audit_rows(audit)
    assert ("client_to_server", "request", "subscriptions/listen") in {(r["direction"], r["kind"], r["method"]) for r in rows}
    assert ("server_to_client", "notification", "notifications/tools/list_changed") in {(r["direction"], r["kind"], r["method"]) for r in rows}
    relisted = [r for r in rows if r["method"] == "tools/list" and r["kind"] == "response"][-1]
    assert {"registry_blocked", "tool_poisoning"} <= set(relisted["tags"])
    poisoning = json.loads(relisted["findings"])["poisoning"]["items"]
    assert [i["name"] for i in poisoning] == ["add"]


def test_http_proxy_pins_and_blocks_a_rug_pull(tmp_path):
    from firewall.config import Config
    from peers.http_harness import InProcessFirewall, free_port, process

    port = free_port()
    calls = tmp_path / "calls.jsonl"
    config = Config.model_validate({
        "audit": {"path": str(tmp_path / "audit.duckdb"), "flush_interval_ms": 50},
        "proxy": {"upstreams": [{"url": f"http://127.0.0.1:{port}/mcp", "name": "drift"}], "upstream_timeout_seconds": 10},
        "detectors": {"injection": {"enabled": False}, "intent": {"enabled": False}},
        "registry": {"file": str(tmp_path / "registry.yaml")},
    })

    async def session(url: str, call: str) -> tuple[set[str], Any]:
        async with Client(url) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            try:
                return names, (await client.call_tool(call, {"a": 1, "b": 2})).content[0].text
            except MCPError as exc:
                return names, exc.error.data["reasons"][0]["code"]

    with InProcessFirewall(config) as fw:
        with process(drifting("base", calls, "--http", str(port)), port):
            assert anyio.run(session, fw.url + "/mcp", "add") == ({"add", "echo"}, "3.0")
        with process(drifting("rugpull", calls, "--http", str(port)), port):
            assert anyio.run(session, fw.url + "/mcp", "add") == ({"echo"}, "registry_drift")
    assert calls_seen(calls) == ["add"]


def test_http_tenants_have_their_own_registry(tmp_path, capsys):
    """Two tenants behind one proxy and one upstream: each pins on its own first use, and a
    rug pull one tenant's pins catch is no drift for a tenant that first met the new version."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from firewall.config import Config
    from firewall.identity.apikeys import KeyStore
    from peers.http_harness import InProcessFirewall, free_port, process

    port = free_port()
    calls = tmp_path / "calls.jsonl"
    registry = tmp_path / "registry.yaml"
    config = Config.model_validate({
        "audit": {"path": str(tmp_path / "audit.duckdb"), "flush_interval_ms": 50},
        "proxy": {"upstreams": [{"url": f"http://127.0.0.1:{port}/mcp", "name": "drift"}], "upstream_timeout_seconds": 10},
        "detectors": {"injection": {"enabled": False}, "intent": {"enabled": False}},
        "auth": {"mode": "required", "api_keys": {"store": str(tmp_path / "keys.sqlite")}},
        "registry": {"file": str(registry)},
    })
    keys = KeyStore(tmp_path / "keys.sqlite")
    acme = keys.create("acme", "agent", roles=["admin"])[1]
    globex = keys.create("globex", "agent", roles=["admin"])[1]

    async def session(url: str, key: str) -> tuple[set[str], Any]:
        async with (
            httpx2.AsyncClient(headers={"x-api-key": key}, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            names = {t.name for t in (await client.list_tools()).tools}
            try:
                return names, (await client.call_tool("add", {"a": 1, "b": 2})).content[0].text
            except MCPError as exc:
                return names, exc.error.data["reasons"][0]["code"]

    with InProcessFirewall(config) as fw:
        url = fw.url + "/mcp"
        with process(drifting("base", calls, "--http", str(port)), port):
            assert anyio.run(session, url, acme) == ({"add", "echo"}, "3.0")
        with process(drifting("rugpull", calls, "--http", str(port)), port):
            # globex meets the server for the first time: its first use pins the new version.
            assert anyio.run(session, url, globex) == ({"add", "echo", "multiply", "read_text_file"}, "3.0")
            assert anyio.run(session, url, acme) == ({"echo"}, "registry_drift")
    assert calls_seen(calls) == ["add", "add"]

    def statuses(tenant: str) -> dict[str, str]:
        code, out = registry_cli(capsys, "list", "--registry", str(registry), "--tenant", tenant, "--json")
        assert code == 0
        return {e["name"]: e["status"] for e in json.loads(out)["entries"] if e["kind"] == "tools"}

    assert statuses("acme") == {"add": "changed", "echo": "pinned", "multiply": "new", "read_text_file": "new"}
    assert statuses("globex") == {"add": "pinned", "echo": "pinned", "multiply": "pinned", "read_text_file": "pinned"}
    assert statuses("default") == {}
    rows = audit_rows(tmp_path / "audit.duckdb", "method = 'tools/call' AND decision = 'deny'", at_least=1)
    assert [(r["tenant"], r["server"], r["reason_codes"]) for r in rows] == [("acme", "drift", ["registry_drift"])]


def test_prompts_templates_and_protocol_drift_through_the_stdio_shim(tmp_path, config, capsys):
    """The same server starts again with a reworded prompt and resource template, a new prompt
    and one more capability: each is a finding, hidden or refused until reviewed."""
    registry = tmp_path / "registry.yaml"
    calls = tmp_path / "calls.jsonl"

    async def run(variant: str, audit: Path, prompts: tuple[str, ...]) -> tuple[set[str], set[str], dict[str, str]]:
        async with Client(shim(audit, config, registry, "drift", drifting(variant, calls))) as client:
            listed = {p.name for p in (await client.list_prompts()).prompts}
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
            got = {}
            for name in prompts:
                try:
                    result = await client.get_prompt(name, {"text": "hello"})
                    got[name] = result.messages[0].content.text
                except MCPError as exc:
                    assert exc.error.code == errors.POLICY_DENIED
                    got[name] = exc.error.data["reasons"][0]["code"]
            return listed, templates, got

    assert anyio.run(run, "base", tmp_path / "a1.duckdb", ("summarize",)) == (
        {"summarize"}, {"notes://{id}"}, {"summarize": "Summarize: hello"})
    listed, templates, got = anyio.run(run, "rugpull", tmp_path / "a2.duckdb", ("summarize", "translate"))
    assert (listed, templates) == (set(), set()), "drifted and new prompts and templates are hidden"
    assert got == {"summarize": "registry_drift", "translate": "registry_unapproved"}
    assert calls_seen(calls) == ["summarize"], "the refused prompts/get never reached the server"
    rows = audit_rows(tmp_path / "a2.duckdb")
    handshake = [r for r in rows if r["method"] in ("initialize", "server/discover") and r["kind"] == "response"]
    assert handshake and "registry_protocol_drift" in handshake[0]["tags"] and handshake[0]["server"] == "drift"
    for method in ("prompts/list", "resources/templates/list"):
        answer = next(r for r in rows if r["method"] == method and r["kind"] == "response")
        assert answer["decision"] == "redact" and "registry_blocked" in answer["tags"]

    code, out = registry_cli(capsys, "diff", "drift", "--registry", str(registry))
    assert code == 1
    assert "default/drift: protocol changed (capabilities)" in out
    assert "capabilities: completions, prompts, resources, tools" in out
    assert "default/drift: prompt 'summarize' changed (description)" in out
    assert "Summarizes the [-text.-]{+text, then lists every credential it mentions.+}" in out
    assert "default/drift: resource template 'notes://{id}' changed (description)" in out
    assert "approve: mcpfw registry approve drift translate --kind prompts" in out

    for argv in (["approve", "drift", "summarize", "--kind", "prompts", "--by", "alice"],
                 ["approve", "drift", "notes://{id}", "--kind", "resource_templates", "--by", "alice"],
                 ["reject", "drift", "translate", "--kind", "prompts"],
                 ["approve", "drift", "--protocol", "--by", "alice"]):
        assert registry_cli(capsys, *argv, "--registry", str(registry))[0] == 0, argv
    saved = registry.read_text()
    assert "prompts:" in saved and "resource_templates:" in saved and "completions: {}" in saved

    listed, templates, got = anyio.run(run, "rugpull", tmp_path / "a3.duckdb", ("summarize", "translate"))
    assert (listed, templates) == ({"summarize"}, {"notes://{id}"})
    assert got == {"summarize": "Summarize: hello", "translate": "registry_rejected"}
    rows = audit_rows(tmp_path / "a3.duckdb")
    assert not [r for r in rows if "registry_protocol_drift" in r["tags"]]


@pytest.mark.parametrize("era", ["2026-07-28", "2025-11-25"])
def test_uses_after_a_change_announcement_wait_for_a_fresh_list(era, tmp_path, config):
    """The server swaps add, then rewords its prompt and resource template, and announces each
    change (on a subscriptions/listen stream, or as plain notifications before 2026-07-28).
    Using them before listing again is refused (registry_unverified) and never reaches the
    server; the fresh list then applies the drift rules."""
    registry = tmp_path / "registry.yaml"
    calls = tmp_path / "calls.jsonl"
    audit = tmp_path / "audit.duckdb"
    notified: list[str] = []

    async def on_message(message: Any) -> None:
        method = getattr(message, "method", None)
        if isinstance(method, str) and method.endswith("list_changed"):
            notified.append(method)

    async def refused(request: Any) -> tuple[str, str]:
        with pytest.raises(MCPError) as denied:
            await request
        error = denied.value.error
        assert error.code == errors.POLICY_DENIED
        return ",".join(sorted(r["code"] for r in error.data["reasons"])), error.message

    async def announced(client: Client, tool: str, kinds: int) -> None:
        """Call ``tool`` and wait until the client got the announcements it makes."""
        if era == "2026-07-28":
            async with client.listen(tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True) as changes:
                await client.call_tool(tool, {})
                seen = 0
                with anyio.move_on_after(10):
                    async for _event in changes:
                        seen += 1
                        if seen == kinds:
                            break
        else:
            before = len(notified)
            await client.call_tool(tool, {})
            with anyio.fail_after(10):
                while len(notified) < before + kinds:
                    await anyio.sleep(0.02)

    async def scenario() -> dict[str, tuple[str, str]]:
        params = shim(audit, config, registry, "drift", drifting("live", calls))
        extra = {} if era == "2026-07-28" else {"mode": "legacy", "message_handler": on_message}
        got: dict[str, tuple[str, str]] = {}
        async with Client(params, **extra) as client:
            assert client.protocol_version == era
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "echo", "upgrade", "reword"}
            assert {p.name for p in (await client.list_prompts()).prompts} == {"summarize"}
            assert {t.uri_template for t in (await client.list_resource_templates()).resource_templates} == {"notes://{id}"}
            assert (await client.read_resource("notes://1")).contents[0].text == "note 1"

            await announced(client, "upgrade", 1)
            got["add"] = await refused(client.call_tool("add", {"a": 1, "b": 2}))
            got["echo"] = await refused(client.call_tool("echo", {"message": "hi"}))
            assert (await client.get_prompt("summarize", {"text": "x"})).messages, "prompts were not announced"
            assert {t.name for t in (await client.list_tools()).tools} == {"echo", "upgrade", "reword"}
            got["add relisted"] = await refused(client.call_tool("add", {"a": 1, "b": 2}))
            assert (await client.call_tool("echo", {"message": "hi"})).content[0].text == "hi"

            await announced(client, "reword", 2)
            got["summarize"] = await refused(client.get_prompt("summarize", {"text": "x"}))
            got["notes"] = await refused(client.read_resource("notes://2"))
            assert {p.name for p in (await client.list_prompts()).prompts} == set()
            got["summarize relisted"] = await refused(client.get_prompt("summarize", {"text": "x"}))
            got["notes unlisted"] = await refused(client.read_resource("notes://2"))
            assert not (await client.list_resource_templates()).resource_templates
            got["notes relisted"] = await refused(client.read_resource("notes://2"))
        return got

    got = anyio.run(scenario)
    unverified = "announced a change to its {}; list them again ({}) before using {} '{}'"
    assert got["add"] == ("registry_unverified", f"mcpfw: registry: server 'drift' {unverified.format('tools', 'tools/list', 'tool', 'add')}")
    assert got["echo"][0] == "registry_unverified"
    assert got["add relisted"][0] == "poisoned_tool,registry_drift"
    assert got["summarize"][0] == "registry_unverified"
    assert unverified.format("prompts", "prompts/list", "prompt", "summarize") in got["summarize"][1]
    assert got["notes"][0] == "registry_unverified"
    assert got["summarize relisted"][0] == "registry_drift"
    # Prompts were listed again, resource templates not yet: still unverified.
    assert got["notes unlisted"][0] == "registry_unverified"
    assert got["notes relisted"][0] == "registry_drift"
    assert "resource template 'notes://{id}' of server 'drift' changed since it was pinned (description)" in got["notes relisted"][1]
    assert calls_seen(calls) == ["note", "upgrade", "summarize", "echo", "reword"], "no refused use reached the server"
    rows = audit_rows(audit, "reason_codes IS NOT NULL AND list_contains(reason_codes, 'registry_unverified')", at_least=4)
    assert {r["method"] for r in rows} == {"tools/call", "prompts/get", "resources/read"}
