"""Shared fixtures: where the real MCP peers live and how to run them behind the shim."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"
FILESYSTEM = NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js"
TS_CLIENT = Path(__file__).parent / "peers" / "ts_client.mjs"
RECORDER = Path(__file__).parent / "peers" / "recorder.py"
NODE = shutil.which("node") or "node"
VENV_BIN = Path(sys.executable).parent


def pytest_configure(config):
    missing = [p for p in (EVERYTHING, FILESYSTEM) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"real MCP peers missing ({missing[0]}): run `scripts/dev setup`")


def shim_command(audit: Path, *options: str, server: list[str]) -> list[str]:
    """The command line a client would configure: mcpfw stdio [options] -- server..."""
    return [sys.executable, "-m", "firewall.cli", "stdio", "--audit", str(audit), *options, "--", *server]


def everything_server() -> list[str]:
    return [NODE, str(EVERYTHING), "stdio"]


def filesystem_server(*roots: Path) -> list[str]:
    return [NODE, str(FILESYSTEM), *map(str, roots)]


def time_server() -> list[str]:
    return [str(VENV_BIN / "mcp-server-time"), "--local-timezone", "UTC"]


@pytest.fixture
def audit_db(tmp_path: Path) -> Path:
    return tmp_path / "audit.duckdb"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real audit log or state."""
    monkeypatch.setenv("MCPFW_HOME", str(tmp_path / "mcpfw-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_COLOR", "1")
