"""``mcpfw demo``: the firewall in front of the real filesystem MCP server, driven by the real
MCP Python SDK client, then the audit query that shows what it decided."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from .paths import PROJECT_ROOT

_SERVER = PROJECT_ROOT / "node_modules" / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"


def _say(text: str) -> None:
    print(text, flush=True)


async def _drive(workspace: Path, audit: Path) -> list[tuple[str, bool]]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.shared.exceptions import MCPError

    node = shutil.which("node") or "node"
    params = StdioServerParameters(
        command=sys.executable,
        # The demo's own tool registry, next to its audit log: the user's stays untouched.
        args=["-m", "firewall.cli", "stdio", "--audit", str(audit), "--registry", str(audit.with_suffix(".registry.yaml")),
              "--root", str(workspace),
              "--server-name", "filesystem", "--", node, str(_SERVER), str(workspace)],
    )
    calls = [
        ("read a note inside the allowed root", "read_text_file", {"path": str(workspace / "notes.txt")}),
        ("read an SSH private key that sits inside the root", "read_text_file", {"path": str(workspace / ".ssh" / "id_rsa")}),
        ("write outside the root via ../", "write_file", {"path": f"{workspace}/../escaped.txt", "content": "owned"}),
        ("list the allowed directory", "list_directory", {"path": str(workspace)}),
    ]
    outcomes = []
    async with Client(params) as client:
        tools = await client.list_tools()
        _say(f"connected through mcpfw: {len(tools.tools)} tools, protocol {client.protocol_version}")
        for title, tool, arguments in calls:
            try:
                result = await client.call_tool(tool, arguments)
            except MCPError as exc:  # the firewall's JSON-RPC error for a denied request
                status, text, ok = "DENIED ", f"JSON-RPC error {exc.error.code}: {exc.error.message}", False
            else:
                text = " ".join(getattr(c, "text", "") for c in result.content).strip().replace("\n", " | ")
                status, ok = ("ERROR  " if result.is_error else "allowed"), not result.is_error
            _say(f"  [{status}] {title}: {tool}({_short(arguments)})\n            -> {text[:200]}")
            outcomes.append((tool, ok))
    return outcomes


def _short(arguments: dict) -> str:
    return ", ".join(f"{k}={str(v)[:60]!r}" for k, v in arguments.items())


def run_demo(audit_path: Path | None) -> int:
    if not _SERVER.exists():
        print(f"mcpfw demo: {_SERVER} is missing; run the setup (scripts/dev setup) first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mcpfw-demo-") as tmp:
        base = Path(tmp)
        workspace = base / "workspace"
        (workspace / ".ssh").mkdir(parents=True)
        (workspace / "notes.txt").write_text("Quarterly plan: ship the firewall.\n")
        (workspace / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n")
        audit = audit_path or base / "audit.duckdb"
        _say("== mcpfw demo: @modelcontextprotocol/server-filesystem behind `mcpfw stdio`, default policy ==")
        outcomes = asyncio.run(_drive(workspace, audit))
        escaped = (base / "escaped.txt").exists()
        _say(f"  the write outside the root reached the disk: {escaped}")
        _say("\n== the audit log (mcpfw audit sql) ==")
        from .audit.query import run_sql

        sql = (
            "SELECT strftime(ts, '%H:%M:%S') AS time, direction, method, tool, decision, "
            "array_to_string(reason_codes, ',') AS reasons, round(eval_ms, 3) AS eval_ms "
            "FROM decisions ORDER BY ts, decision_id"
        )
        _say(f'$ mcpfw audit sql --db {audit} "{sql}"')
        run_sql(audit, sql, fmt="table", out=sys.stdout)
        _say(f'\n$ mcpfw audit sql --db {audit} "SELECT * FROM denials_by_reason"')
        run_sql(audit, "SELECT * FROM denials_by_reason", fmt="table", out=sys.stdout)
        expected = [("read_text_file", True), ("read_text_file", False), ("write_file", False), ("list_directory", True)]
        ok = outcomes == expected and not escaped
        _say("\ndemo " + ("OK: allowed calls passed, denied calls never reached the server" if ok else f"FAILED: {outcomes}"))
        return 0 if ok else 1
