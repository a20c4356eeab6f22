"""Small SQLite files that hold the firewall's own security state (API keys, approvals).

They are created private (mode 0600, never world-readable, not even briefly) in WAL mode,
so that a CLI in another process can change them while a firewall reads them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_private_db(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to ``path`` (created 0600 with ``schema`` if needed), in autocommit mode.

    Raises ``OSError`` or ``sqlite3.Error``; the caller turns them into its own error.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn
