"""Require approval: requests the policy holds until a person approves them.

A decision with a ``{"type": "require_approval", "message": ...}`` obligation does not let its
request through. The firewall files an approval request (one per distinct call: server,
method, tool, arguments, tenant and subject) and answers the client with error -32059 naming
it. A security engineer reviews it (``mcpfw approvals list`` shows the arguments with secrets
redacted, and why the policy asked) and approves or denies it. When the client retries the same
call, an approved request lets it through once (single use), within the grant's lifetime.

Approvals live in a private SQLite file (default ``MCPFW_HOME/approvals.sqlite``) so that the CLI
and every firewall process on the host share them. Only requests that ask for approval touch it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from .audit.redact import args_digest, redact_for_audit
from .paths import state_dir
from .policy.decision import Decision, deny_decision
from .private_db import open_private_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    approval_id  TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    status       TEXT NOT NULL,            -- pending | approved | denied | used
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,            -- pending: until then; approved: the grant's end
    decided_at   REAL,
    decided_by   TEXT,
    used_at      REAL,
    server       TEXT, method TEXT, tool TEXT,
    tenant       TEXT, subject TEXT, key_id TEXT, session_id TEXT,
    arguments    TEXT,                     -- JSON, secrets redacted
    reasons      TEXT                      -- JSON list of the policy's messages
);
CREATE INDEX IF NOT EXISTS approvals_by_fingerprint ON approvals (fingerprint, status);
"""

PENDING_SECONDS = 24 * 3600.0
GRANT_SECONDS = 3600.0


class ApprovalStoreError(Exception):
    """The approval store cannot be opened or written, or an approval id is unknown."""


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request and what became of it."""

    approval_id: str
    fingerprint: str
    status: str
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str | None
    used_at: float | None
    server: str | None
    method: str | None
    tool: str | None
    tenant: str | None
    subject: str | None
    key_id: str | None
    session_id: str | None
    arguments: str | None
    reasons: str | None

    def effective_status(self, now: float | None = None) -> str:
        """The status, with ``expired`` for a pending request or grant past its time."""
        if self.status in ("pending", "approved") and self.expires_at <= (time.time() if now is None else now):
            return "expired"
        return self.status

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.effective_status()
        d["arguments"] = orjson.loads(self.arguments) if self.arguments else None
        d["reasons"] = orjson.loads(self.reasons) if self.reasons else []
        return d


_COLUMNS = ", ".join(Approval.__dataclass_fields__)


def fingerprint(server: str | None, method: str | None, tool: str | None, arguments: Any,
                identity: dict[str, Any] | None) -> str:
    """What makes two requests "the same call" for an approval."""
    who = identity or {}
    doc = [server, method, tool, args_digest(arguments), who.get("tenant"), who.get("subject")]
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


def default_approval_store() -> Path:
    return state_dir() / "approvals.sqlite"


class ApprovalStore:
    """Approval requests in a SQLite file shared by the CLI and firewall processes."""

    def __init__(self, path: Path, *, pending_seconds: float = PENDING_SECONDS) -> None:
        self.path = Path(path)
        self.pending_seconds = pending_seconds
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = open_private_db(self.path, _SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise ApprovalStoreError(f"{self.path}: cannot open the approval store: {exc}") from None
        return self._conn

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Approval]:
        with self._lock:
            try:
                rows = self._connect().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise ApprovalStoreError(f"{self.path}: {exc}") from None
        return [Approval(*row) for row in rows]

    # -- the firewall's side ---------------------------------------------------------------

    def settle(self, print_: str, details: dict[str, Any], reasons: list[str]) -> tuple[Approval, bool]:
        """(approval, granted): use up an approved grant for this call, or file/find a pending one.

        Atomic across processes: one ``BEGIN IMMEDIATE`` transaction, so a grant is used once.
        """
        now = time.time()
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        f"SELECT {_COLUMNS} FROM approvals WHERE fingerprint = ? AND status = 'approved' "
                        "AND expires_at > ? ORDER BY decided_at LIMIT 1", (print_, now)).fetchone()
                    if row is not None:
                        conn.execute("UPDATE approvals SET status = 'used', used_at = ? WHERE approval_id = ?",
                                     (now, row[0]))
                        conn.execute("COMMIT")
                        return Approval(*row), True
                    row = conn.execute(
                        f"SELECT {_COLUMNS} FROM approvals WHERE fingerprint = ? AND status = 'pending' "
                        "AND expires_at > ? ORDER BY created_at DESC LIMIT 1", (print_, now)).fetchone()
                    if row is None:
                        approval_id = secrets.token_hex(6)
                        arguments = redact_for_audit(details.get("arguments"), max_chars=8192)
                        conn.execute(
                            f"INSERT INTO approvals ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                            (approval_id, print_, "pending", now, now + self.pending_seconds, None, None, None,
                             details.get("server"), details.get("method"), details.get("tool"),
                             details.get("tenant"), details.get("subject"), details.get("key_id"),
                             details.get("session_id"), orjson.dumps(arguments).decode(),
                             orjson.dumps(reasons).decode()))
                        row = conn.execute(f"SELECT {_COLUMNS} FROM approvals WHERE approval_id = ?",
                                           (approval_id,)).fetchone()
                    conn.execute("COMMIT")
                    return Approval(*row), False
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise ApprovalStoreError(f"{self.path}: {exc}") from None

    # -- the reviewer's side ---------------------------------------------------------------

    def get(self, approval_id: str) -> Approval | None:
        found = self._run(f"SELECT {_COLUMNS} FROM approvals WHERE approval_id = ?", (approval_id,))
        return found[0] if found else None

    def list(self, status: str | None = None) -> list[Approval]:
        """Newest first; ``status`` filters by effective status (pending, approved, expired, ...)."""
        rows = self._run(f"SELECT {_COLUMNS} FROM approvals ORDER BY created_at DESC")
        return [r for r in rows if status is None or r.effective_status() == status]

    def decide(self, approval_id: str, *, approve: bool, by: str, grant_seconds: float = GRANT_SECONDS) -> Approval:
        """Approve (a grant valid for ``grant_seconds``, used once) or deny a pending request."""
        current = self.get(approval_id)
        if current is None:
            raise ApprovalStoreError(f"no approval request {approval_id!r}")
        if current.effective_status() != "pending":
            raise ApprovalStoreError(f"approval request {approval_id} is {current.effective_status()}, not pending")
        now = time.time()
        status = "approved" if approve else "denied"
        self._run("UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, expires_at = ? "
                  "WHERE approval_id = ? AND status = 'pending'",
                  (status, now, by, now + grant_seconds if approve else current.expires_at, approval_id))
        updated = self.get(approval_id)
        assert updated is not None
        return updated

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class ApprovalGate:
    """Turns a decision that asks for approval into what the pipeline does now.

    Returns None when the decision asks for none (or denies anyway). Otherwise: the same
    decision without its approval obligation when an approved grant for this exact call was
    waiting (used up now; tagged ``approved``), or a deny with reason ``approval_required``
    naming the approval request. Fails closed when the store cannot be used.
    """

    def __init__(self, store: ApprovalStore) -> None:
        self.store = store

    def settle(
        self, decision: Decision, *, is_request: bool, server: str | None, method: str | None, tool: str | None,
        arguments: Any, identity: dict[str, Any] | None, session_id: str | None,
    ) -> tuple[Decision, str | None] | None:
        """(decision to apply, approval id) or None to keep ``decision`` as it is."""
        if not decision.approvals or not decision.allow:
            return None
        why = "; ".join(decision.approvals)
        if not is_request:
            return deny_decision("approval_required", f"{why} (only requests can wait for approval)"), None
        who = identity or {}
        print_ = fingerprint(server, method, tool, arguments, identity)
        details = {"server": server, "method": method, "tool": tool, "arguments": arguments,
                   "tenant": who.get("tenant"), "subject": who.get("subject"), "key_id": who.get("key_id"),
                   "session_id": session_id}
        try:
            approval, granted = self.store.settle(print_, details, decision.approvals)
        except ApprovalStoreError as exc:
            return deny_decision("approval_store_unavailable", f"{why}; the approval store is unavailable",
                                 error=str(exc)), None
        if granted:
            approved = dataclasses.replace(
                decision, approvals=[], tags=[*decision.tags, "approved", f"approval:{approval.approval_id}"]
            )
            return approved, approval.approval_id
        message = (f"held for approval {approval.approval_id}: {why}. A security engineer approves it with "
                   f"`mcpfw approvals approve {approval.approval_id}`; then retry the same call")
        held = deny_decision("approval_required", message)
        held.tags = [f"approval:{approval.approval_id}"]
        return held, approval.approval_id
