"""Where mcpfw finds its bundled files and keeps its state by default."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY_DIR = PROJECT_ROOT / "policies"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def state_dir() -> Path:
    """The directory for the audit log and learned state (``$MCPFW_HOME`` overrides)."""
    env = os.environ.get("MCPFW_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mcpfw"


def default_audit_path() -> Path:
    return state_dir() / "audit.duckdb"
