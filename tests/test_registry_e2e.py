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
    assert (code, out) == (0, "no pending changes\n")
    code, out = registry_cli(capsys, "list", which, "--registry", str(registry), "--json")
    entries = json.loads(out)["entries"]
    assert len(entries) == first and {e["status"] for e in entries} == {"pinned"}


def test_live_rug_pull_over_subscriptions_listen_is_caught_with_its_hidden_instructions(tmp_path, config):
    registry = tmp_path / "registry.yaml"
    calls = tmp_path / "calls.jsonl"
    audit = tmp_path / "audit.duckdb"

    async def scenario() -> tuple[str, str]:
        async with Client(shim(audit, config, registry, "drift", drifting("live", calls))) as client:
            assert client.protocol_version == "2026-07-28"
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "echo", "upgrade"}
            async with client.listen(tools_list_changed=True) as changes:
                await client.call_tool("upgrade", {})
                with anyio.fail_after(10):
                    async for _event in changes:
                        break
            assert {t.name for t in (await client.list_tools()).tools} == {"echo", "upgrade"}
            return await denial(client, "add", {"a": 1, "b": 2})

    codes, message = anyio.run(scenario)
    assert codes == "poisoned_tool,registry_drift"
    assert "changed since it was pinned (description" in message
    assert calls_seen(calls) == ["upgrade"]
    rows = audit_rows(audit)
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
