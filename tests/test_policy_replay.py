"""mcpfw policy replay: traffic recorded through the stdio shim (server-filesystem, the MCP
Python SDK client) judged again by the same and by a stricter policy, read-only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import duckdb
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from support import filesystem_server

TOKEN = "ghp_" + "Q7x9" * 9


def mcpfw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firewall.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    """An audit log with recorded inputs: two allowed calls, two denied ones, a listing."""
    root = tmp_path_factory.mktemp("replay")
    ws = root / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("hello\n")
    cfg = root / "mcpfw.yaml"
    cfg.write_text(f"audit:\n  path: {root / 'audit.duckdb'}\n  record_inputs: true\nregistry:\n  file: {root / 'reg.yaml'}\n")
    command = [sys.executable, "-m", "firewall.cli", "stdio", "--config", str(cfg), "--root", str(ws),
               "--server-name", "fs", "--", *filesystem_server(ws)]

    async def drive():
        async with Client(StdioServerParameters(command=command[0], args=command[1:])) as client:
            await client.list_tools()
            await client.call_tool("read_text_file", {"path": str(ws / "notes.txt")})
            await client.call_tool("list_directory", {"path": str(ws)})
            for name, arguments in (("read_text_file", {"path": "/etc/passwd"}),
                                    ("write_file", {"path": str(ws / "x.txt"), "content": f"token {TOKEN}"})):
                with pytest.raises(MCPError):
                    await client.call_tool(name, arguments)

    anyio.run(drive)
    return root / "audit.duckdb", cfg


def replay(*args: str) -> dict:
    done = mcpfw("policy", "replay", "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_same_policy_reproduces_every_recorded_decision(recorded):
    db, cfg = recorded
    report = replay("--config", str(cfg))
    assert report["replayed"] >= 9 and report["changed"] == 0 and report["without_input"] == 0


def test_a_stricter_policy_shows_what_it_would_change(recorded, tmp_path):
    db, _ = recorded
    strict = tmp_path / "strict.yaml"
    strict.write_text(f"audit:\n  path: {db}\npolicy:\n  data:\n    mcpfw:\n      config:\n        rbac:\n          enforce: always\n")
    before = db.stat().st_mtime_ns, db.stat().st_size
    report = replay("--config", str(strict), "--where", "kind = 'request' AND method = 'tools/call'")
    assert report["replayed"] == 4 and report["changed"] == 4
    assert report["transitions"] == {"allow -> deny": 2, "deny -> deny": 2}
    allowed_before = [c for c in report["changes"] if c["recorded"]["decision"] == "allow"]
    assert {c["tool"] for c in allowed_before} == {"read_text_file", "list_directory"}
    assert all("unauthenticated" in c["replayed"]["reason_codes"] for c in report["changes"])
    assert (db.stat().st_mtime_ns, db.stat().st_size) == before  # read-only
    done = mcpfw("policy", "replay", "--config", str(strict), "--fail-on-change")
    assert done.returncode == 1 and "allow -> deny" in done.stdout


def test_recorded_inputs_keep_no_credential_but_keep_the_findings(recorded):
    db, _ = recorded
    with duckdb.connect(str(db), read_only=True) as con:
        stored = [json.loads(r[0]) for r in con.execute(
            "SELECT policy_input FROM decisions WHERE policy_input IS NOT NULL").fetchall()]
    assert stored and TOKEN not in json.dumps(stored)
    write = next(s for s in stored if s["kind"] == "request" and (s.get("tool") or {}).get("name") == "write_file")
    assert write["findings"]["secrets"][0]["rule"]


def test_errors_are_clear(recorded, tmp_path):
    db, cfg = recorded
    done = mcpfw("policy", "replay", "--config", str(cfg), "--where", "no_such_column = 1")
    assert done.returncode != 0 and "SQL error" in done.stderr
    old = tmp_path / "old.duckdb"
    with duckdb.connect(str(old)) as con:
        con.execute("CREATE TABLE decisions (ts TIMESTAMPTZ, decision_id VARCHAR)")
    done = mcpfw("policy", "replay", "--db", str(old))
    assert done.returncode == 2 and "record_inputs" in done.stderr


def test_stored_inputs_redact_message_keys_only():
    """"session" and "secrets" are the firewall's own members (a session id, a detector's
    findings) and stay readable; a value under a secret-looking key of the message does not."""
    from firewall.audit.redact import load_secret_rules
    from firewall.audit.rows import _stored_input

    document = {"session": {"id": "abc"}, "findings": {"secrets": [{"rule": "github-token"}]},
                "tool": {"name": "login", "arguments": {"password": "hunter2", "user": "ada", "note": TOKEN}}}
    stored = json.loads(_stored_input(json.dumps(document), load_secret_rules()))
    assert stored["session"] == {"id": "abc"} and stored["findings"] == document["findings"]
    assert stored["tool"]["arguments"]["user"] == "ada"
    assert "hunter2" not in json.dumps(stored) and TOKEN not in json.dumps(stored)
