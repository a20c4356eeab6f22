"""Shared fixtures; the peers' locations and commands are in support.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import EVERYTHING, FILESYSTEM


def pytest_configure(config):
    missing = [p for p in (EVERYTHING, FILESYSTEM) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"real MCP peers missing ({missing[0]}): run `scripts/dev setup`")



@pytest.fixture
def audit_db(tmp_path: Path) -> Path:
    return tmp_path / "audit.duckdb"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real audit log or state."""
    monkeypatch.setenv("MCPFW_HOME", str(tmp_path / "mcpfw-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_COLOR", "1")
