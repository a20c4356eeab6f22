"""Where the real MCP peers live and how to run them behind the shim (shared by tests)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"
FILESYSTEM = NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js"
TS_CLIENT = Path(__file__).parent / "peers" / "ts_client.mjs"
RECORDER = Path(__file__).parent / "peers" / "recorder.py"
NODE = shutil.which("node") or "node"
VENV_BIN = Path(sys.executable).parent


def shim_command(audit: Path, *options: str, server: list[str]) -> list[str]:
    """The command line a client would configure: mcpfw stdio [options] -- server...

    The tool registry goes next to the audit file unless ``options`` name one: SDK clients
    start servers with a minimal environment, so the tests' MCPFW_HOME never reaches the shim.
    """
    registry = ["--registry", str(audit.with_name(audit.stem + ".registry.yaml"))]
    return [sys.executable, "-m", "firewall.cli", "stdio", "--audit", str(audit), *registry, *options, "--", *server]


def everything_server() -> list[str]:
    return [NODE, str(EVERYTHING), "stdio"]


def filesystem_server(*roots: Path) -> list[str]:
    return [NODE, str(FILESYSTEM), *map(str, roots)]


def time_server() -> list[str]:
    return [str(VENV_BIN / "mcp-server-time"), "--local-timezone", "UTC"]


def audit_rows(db: Path, where: str = "true", *, at_least: int = 0, timeout: float = 10) -> list[dict[str, Any]]:
    """Rows of the audit log in write order.

    Retries while a firewall holds the file for a write, and, with ``at_least``, until that
    many rows match: a running firewall writes its audit batches a moment after the reply.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with duckdb.connect(str(db), read_only=True) as con:
                cur = con.execute(f"SELECT * FROM decisions WHERE {where} ORDER BY ts, decision_id")
                cols = [d[0] for d in cur.description]
                found = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
        except (duckdb.IOException, duckdb.ResourceInUseException, duckdb.CatalogException):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
