"""The shim in front of real MCP servers, driven by the real SDK clients, in both eras."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from firewall import errors

from support import NODE, TS_CLIENT, audit_rows, everything_server, filesystem_server, shim_command, time_server


def params_for(command: list[str]) -> StdioServerParameters:
    return StdioServerParameters(command=command[0], args=command[1:])


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / ".ssh").mkdir(parents=True)
    (ws / "notes.txt").write_text("hello notes\n")
    (ws / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    return ws


def test_filesystem_server_python_client_allowed_and_denied(tmp_path, workspace, audit_db):
    outside = tmp_path / "outside.txt"
    secret_write = workspace / ".env"
    command = shim_command(audit_db, "--root", str(workspace), "--server-name", "fs", server=filesystem_server(workspace))

    async def scenario():
        async with Client(params_for(command)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"read_text_file", "write_file", "list_directory"} <= names
            ok = await client.call_tool("read_text_file", {"path": str(workspace / "notes.txt")})
            assert not ok.is_error and ok.content[0].text == "hello notes\n"
            with pytest.raises(MCPError) as denied:
                await client.call_tool("write_file", {"path": f"{workspace}/sub/../../outside.txt", "content": "x"})
            assert denied.value.error.code == errors.POLICY_DENIED
            assert "outside the allowed roots" in denied.value.error.message
            assert denied.value.error.data["decision_id"]
            with pytest.raises(MCPError) as denied_secret:
                await client.call_tool("write_file", {"path": str(secret_write), "content": "TOKEN=1"})
            assert denied_secret.value.error.code == errors.POLICY_DENIED
            with pytest.raises(MCPError):
                await client.call_tool("read_text_file", {"path": str(workspace / ".ssh" / "%69d_rsa")})
            # The session survives denials.
            again = await client.call_tool("list_directory", {"path": str(workspace)})
            assert "notes.txt" in again.content[0].text
            return denied.value.error.data["decision_id"]

    decision_id = run(scenario)
    # Proof from the server side: neither denied write reached the disk.
    assert not outside.exists()
    assert not secret_write.exists()
    rows = audit_rows(audit_db)
    by_id = {r["decision_id"]: r for r in rows}
    denied_row = by_id[decision_id]
    assert denied_row["decision"] == "deny" and denied_row["tool"] == "write_file"
    assert denied_row["reason_codes"] == ["path_outside_roots"]
    assert denied_row["server"] == "fs" and denied_row["transport"] == "stdio"
    assert denied_row["args_digest"] and len(denied_row["args_digest"]) == 64
    assert denied_row["engine"] == "regorus" and denied_row["bundle_digest"]
    methods = [(r["direction"], r["method"], r["decision"]) for r in rows]
    assert ("client_to_server", "initialize", "allow") in methods
    assert ("server_to_client", "tools/list", "allow") in methods
    # The Python client probes server/discover first (2026-07-28), the TS server refuses,
    # the client falls back to initialize: from then on the session is 2025-11-25.
    assert rows[0]["method"] == "server/discover" and rows[0]["protocol_era"] == "2026-07-28"
    assert {r["protocol_era"] for r in rows if r["method"] == "tools/call"} == {"2025-11-25"}
    assert sum(1 for r in rows if r["decision"] == "deny") == 3


def test_time_server_negotiates_stateless_era_through_shim(audit_db):
    command = shim_command(audit_db, server=time_server())

    async def scenario():
        async with Client(params_for(command)) as client:
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error
            payload = json.loads(result.content[0].text)
            assert payload["timezone"] == "UTC"
            converted = await client.call_tool(
                "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
            )
            assert "Asia/Tokyo" in converted.content[0].text

    run(scenario)
    rows = audit_rows(audit_db, "method = 'tools/call'")
    assert rows and all(r["protocol_era"] == "2026-07-28" for r in rows)
    assert {r["client_name"] for r in rows} - {None}, "client info from _meta reaches the audit"
    assert not audit_rows(audit_db, "method = 'initialize'"), "no initialize in the stateless era"


def test_everything_server_sampling_and_elicitation_round_trip(audit_db):
    command = shim_command(audit_db, server=everything_server())
    seen = {}

    async def on_sampling(context, params):
        from mcp.types import CreateMessageResult, TextContent

        seen["sampling"] = params.messages[0].content.text
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="sampled!"), model="m")

    async def on_elicit(context, params):
        from mcp.types import ElicitResult

        seen["elicitation"] = params.message
        return ElicitResult(action="accept", content={"name": "Ada", "check": True})

    async def scenario():
        async with Client(params_for(command), sampling_callback=on_sampling, elicitation_callback=on_elicit) as client:
            echo = await client.call_tool("echo", {"message": "through the firewall"})
            assert echo.content[0].text == "Echo: through the firewall"
            # A long test string: not language, and no injection (the classifier's first
            # release scored it 0.998 and the default policy redacted the result).
            long = await client.call_tool("echo", {"message": "abcdefghij" * 100})
            assert long.content[0].text == "Echo: " + "abcdefghij" * 100
            sampled = await client.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
            assert "sampled!" in sampled.content[0].text
            elicited = await client.call_tool("trigger-elicitation-request", {})
            assert "Ada" in " ".join(c.text for c in elicited.content if hasattr(c, "text"))
            assert any("User provided the requested information" in c.text for c in elicited.content if hasattr(c, "text"))
            total = await client.call_tool("get-sum", {"a": 2, "b": 3})
            assert "5" in total.content[0].text

    run(scenario)
    assert "hi" in seen["sampling"] and seen["elicitation"]
    rows = audit_rows(audit_db)
    flows = {(r["direction"], r["kind"], r["method"]) for r in rows}
    assert ("server_to_client", "request", "sampling/createMessage") in flows
    assert ("client_to_server", "response", "sampling/createMessage") in flows
    assert ("server_to_client", "request", "elicitation/create") in flows
    assert ("client_to_server", "response", "elicitation/create") in flows


@pytest.mark.parametrize("which", ["everything", "filesystem"])
def test_typescript_sdk_client_through_shim(which, workspace, audit_db):
    if which == "everything":
        server = everything_server()
        plan = {"calls": [{"tool": "echo", "arguments": {"message": "from TS"}},
                          {"tool": "trigger-sampling-request", "arguments": {"prompt": "ts", "maxTokens": 3}},
                          {"tool": "trigger-elicitation-request", "arguments": {}}]}
    else:
        server = filesystem_server(workspace)
        plan = {"calls": [{"tool": "read_text_file", "arguments": {"path": str(workspace / "notes.txt")}},
                          {"tool": "read_text_file", "arguments": {"path": str(workspace / ".ssh" / "id_rsa")}}]}
    command = shim_command(audit_db, "--root", str(workspace), server=server)
    proc = subprocess.run(
        [NODE, str(TS_CLIENT), json.dumps(plan), "--", *command],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    results = out["results"]
    if which == "everything":
        assert results[0]["ok"] and results[0]["result"]["content"][0]["text"] == "Echo: from TS"
        assert results[1]["ok"] and "sampled by the TS client" in results[1]["result"]["content"][0]["text"]
        assert results[2]["ok"] and out["seen"]["elicitation"]
    else:
        assert results[0]["ok"] and results[0]["result"]["content"][0]["text"] == "hello notes\n"
        assert not results[1]["ok"]
        assert results[1]["error"]["code"] == errors.POLICY_DENIED
        assert results[1]["error"]["data"]["reasons"][0]["code"] == "secret_file"


def test_relative_paths_are_checked_from_every_base_the_server_may_use(tmp_path, audit_db):
    """server-filesystem resolves a relative path against its allowed directory, not its
    working directory. With the root narrower than the server's directory and the shim
    started inside the root, "secret.txt" named a file outside the root and was passed."""
    served = tmp_path / "served"
    project = served / "project"
    project.mkdir(parents=True)
    (served / "secret.txt").write_text("outside the root\n")
    (project / "notes.txt").write_text("inside\n")
    command = shim_command(audit_db, "--root", str(project), server=filesystem_server(served))
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(project))

    async def scenario():
        async with Client(params) as client:
            with pytest.raises(MCPError) as denied:
                await client.call_tool("read_text_file", {"path": "secret.txt"})
            assert denied.value.error.code == errors.POLICY_DENIED
            assert str(served / "secret.txt") in denied.value.error.message
            ok = await client.call_tool("read_text_file", {"path": str(project / "notes.txt")})
            assert not ok.is_error and ok.content[0].text == "inside\n"

    run(scenario)


def test_relative_paths_are_read_from_the_clients_roots_and_tilde_names(tmp_path, audit_db):
    """server-filesystem replaces its directories with the roots a client lists, and reads
    "~name/..." as a relative path: both named a file outside --root that the firewall
    read from its own working directory."""
    from mcp import types

    served = tmp_path / "served"
    project, outside = served / "project", tmp_path / "outside"
    project.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the root\n")
    (project / "notes.txt").write_text("inside\n")
    command = shim_command(audit_db, "--root", str(project), server=filesystem_server(project))
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(project))

    async def roots(_context):
        return types.ListRootsResult(roots=[types.Root(uri=outside.as_uri(), name="elsewhere")])

    async def scenario():
        async with Client(params, list_roots_callback=roots) as client:
            for _ in range(50):  # the server asks for the roots after initialisation
                listed = await client.call_tool("list_allowed_directories", {})
                if str(outside) in listed.content[0].text:
                    break
                await anyio.sleep(0.1)
            for path in ("secret.txt", "~nobody/../secret.txt"):
                with pytest.raises(MCPError) as denied:
                    await client.call_tool("read_text_file", {"path": path})
                assert denied.value.error.code == errors.POLICY_DENIED, path
                assert str(outside / "secret.txt") in denied.value.error.message

    run(scenario)


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_git_server_reads_nothing_outside_the_root(tmp_path, audit_db):
    """mcp-server-git through the shim, run from outside the repository (as desktop clients
    do): a .git file pointing at a repository outside the root, and a credential file named
    by a revision ("HEAD:.env"), were read; a file or branch named relative to repo_path was
    denied, read from the shim's directory."""
    import sys

    root, outside = tmp_path / "root", tmp_path / "outside"
    repo, linked = root / "repo", root / "linked"
    for where in (repo, outside):
        where.mkdir(parents=True)
        _git("init", "-q", "-b", "main", cwd=where)
    (outside / "secret.txt").write_text("outside data\n")
    _git("add", "secret.txt", cwd=outside)
    _git("commit", "-q", "-m", "outside", cwd=outside)
    (repo / ".env").write_text("ADMIN_PIN=482913\n")
    (repo / "README.md").write_text("readme\n")
    _git("add", ".env", "README.md", cwd=repo)
    _git("commit", "-q", "-m", "first", cwd=repo)
    _git("branch", "feature/x", cwd=repo)
    linked.mkdir()
    (linked / ".git").write_text(f"gitdir: {outside / '.git'}\n")
    server = [str(Path(sys.executable).parent / "mcp-server-git")]
    command = shim_command(audit_db, "--root", str(root), server=server)
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(tmp_path))

    async def scenario():
        async with Client(params) as client:
            for name, arguments in (("git_log", {"repo_path": str(linked)}),
                                    ("git_show", {"repo_path": str(repo), "revision": "HEAD:.env"})):
                with pytest.raises(MCPError) as denied:
                    await client.call_tool(name, arguments)
                assert denied.value.error.code == errors.POLICY_DENIED, name
            (repo / "README.md").write_text("readme, changed\n")
            for name, arguments in (("git_add", {"repo_path": str(repo), "files": ["README.md"]}),
                                    ("git_diff", {"repo_path": str(repo), "target": "feature/x"})):
                done = await client.call_tool(name, arguments)
                assert not done.is_error, (name, done.content)

    run(scenario)


def test_filesystem_server_takes_percent_escapes_literally(tmp_path, audit_db):
    """server-filesystem does not percent-decode: "%00" is a name character (the symlink
    before it is followed) and "%2f" stays inside its segment ("a%2fb/../.." climbs two
    levels). Decoded, both paths stayed in the root and the firewall passed them."""
    served = tmp_path / "served"
    project, outside = served / "project", served / "outside"
    (project / "a%2fb").mkdir(parents=True)
    outside.mkdir()
    (project / "shared").symlink_to(outside)
    (served / "secret.txt").write_text("outside the root\n")
    (project / "a%2fb" / "notes.txt").write_text("inside\n")
    command = shim_command(audit_db, "--root", str(project), server=filesystem_server(served))

    async def scenario():
        async with Client(params_for(command)) as client:
            with pytest.raises(MCPError) as denied:
                await client.call_tool("write_file", {"path": f"{project}/shared/pwned%00.txt", "content": "x"})
            assert denied.value.error.code == errors.POLICY_DENIED
            with pytest.raises(MCPError) as denied:
                await client.call_tool("read_text_file", {"path": f"{project}/a%2fb/../../secret.txt"})
            assert denied.value.error.code == errors.POLICY_DENIED
            assert str(served / "secret.txt") in denied.value.error.message
            ok = await client.call_tool("read_text_file", {"path": f"{project}/a%2fb/notes.txt"})
            assert not ok.is_error and ok.content[0].text == "inside\n"

    run(scenario)
    assert not (outside / "pwned%00.txt").exists()
