"""Where the real MCP peers live and how to run them behind the shim (shared by tests)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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
