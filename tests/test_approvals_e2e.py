"""Require approval end to end: a policy holds a real server's tool call until
`mcpfw approvals approve`, then exactly one retry of the same call passes."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from firewall import errors
from support import audit_rows, filesystem_server, shim_command

POLICY = """package mcpfw

# Writes wait for a person; everything else passes.
decision := {
	"allow": true,
	"obligations": [{"type": "require_approval", "message": sprintf("write to %v", [input.tool.arguments.path])} |
		input.kind == "request"
		input.tool.name == "write_file"
	],
}
"""


def test_a_held_write_passes_once_after_approval(tmp_path):
    bundle = tmp_path / "policy" / "mcpfw"
    bundle.mkdir(parents=True)
    (bundle / "decision.rego").write_text(POLICY)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = tmp_path / "approvals.sqlite"
    config = tmp_path / "mcpfw.yaml"
    config.write_text(f"approvals:\n  store: {store}\n")
    audit = tmp_path / "audit.duckdb"
    command = shim_command(audit, "--config", str(config), "--policy", str(tmp_path / "policy"),
                           "--registry-mode", "off", server=filesystem_server(workspace))
    params = StdioServerParameters(command=command[0], args=command[1:])
    target = workspace / "report.txt"
    call = {"path": str(target), "content": "quarterly numbers"}

    async def attempt() -> tuple[str | None, MCPError | None]:
        async with Client(params) as client:
            try:
                done = await client.call_tool("write_file", call)
                return done.content[0].text, None
            except MCPError as exc:
                return None, exc

    _, held = anyio.run(attempt)
    assert held is not None and held.error.code == errors.APPROVAL_REQUIRED
    approval_id = held.error.data["approval_id"]
    assert approval_id in held.error.message and not target.exists()  # never reached the server
    _, again = anyio.run(attempt)
    assert again is not None and again.error.data["approval_id"] == approval_id and not target.exists()

    approve = subprocess.run([sys.executable, "-m", "firewall.cli", "approvals", "approve", approval_id,
                              "--store", str(store)], capture_output=True, text=True, timeout=60)
    assert approve.returncode == 0, approve.stderr
    text, error = anyio.run(attempt)
    assert error is None and target.read_text() == "quarterly numbers"
    target.unlink()
    _, once_only = anyio.run(attempt)
    assert once_only is not None and once_only.error.code == errors.APPROVAL_REQUIRED and not target.exists()

    rows = audit_rows(audit, "tool = 'write_file' AND direction = 'client_to_server'")
    assert [r["decision"] for r in rows] == ["deny", "deny", "allow", "deny"]
    assert rows[0]["reason_codes"] == ["approval_required"] and rows[0]["error_code"] == errors.APPROVAL_REQUIRED
    assert "approved" in rows[2]["tags"] and f"approval:{approval_id}" in rows[2]["tags"]
    status = json.loads(subprocess.run([sys.executable, "-m", "firewall.cli", "approvals", "list", "--json",
                                        "--store", str(store)], capture_output=True, text=True).stdout)
    assert sorted(s["status"] for s in status) == ["pending", "used"]
