"""Replay recorded traffic against a policy before enforcing it (``mcpfw policy replay``).

The audit log keeps each decision's policy input when ``audit.record_inputs`` is on (secrets
redacted, as everywhere in the log). Replaying evaluates another bundle on those inputs and
compares its decisions with the recorded ones, as a security team would before switching
policies. Nothing live is touched: the database is opened read-only, and the input already
holds what the enrichers saw at the time (detector findings, identity, rate counters,
registry events), so no counter is taken, no detector runs and no registry pin changes.

Limits: decisions made without the policy (invalid messages, an unavailable audit log, an
answer to no request) have no input and are not replayed; what redaction hid from the log
(credentials) is hidden from the replayed policy too, though the detectors' findings about
it are kept; the held/approved state of an approval is the store's, so a decision that asks
for approval is reported as held.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..audit.query import EXIT_SQL_ERROR, EXIT_UNAVAILABLE, QueryError, connect_read_only
from .base import PolicyEngine
from .decision import Decision, normalize_decision
from .errors import PolicyEvaluationError

__all__ = ["ReplayReport", "ReplayedDecision", "replay"]

_COLUMNS = ("decision_id", "ts", "direction", "kind", "method", "tool", "server", "decision", "reason_codes", "policy_input")
_CHUNK = 500
_CUT_MARK = "…[truncated, "  # the note redact_text leaves where it cut a long string


@dataclass(frozen=True, slots=True)
class ReplayedDecision:
    """One recorded decision and what the replayed policy decides for the same input."""

    decision_id: str
    ts: dt.datetime
    direction: str
    kind: str | None
    method: str | None
    tool: str | None
    server: str | None
    recorded: str
    recorded_codes: tuple[str, ...]
    replayed: str
    replayed_codes: tuple[str, ...]
    error: str | None = None
    input_redacted: bool = False  # the stored input lost something to redaction or a cut

    @property
    def changed(self) -> bool:
        return (self.recorded, self.recorded_codes) != (self.replayed, self.replayed_codes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id, "ts": self.ts.isoformat(), "direction": self.direction,
            "kind": self.kind, "method": self.method, "tool": self.tool, "server": self.server,
            "recorded": {"decision": self.recorded, "reason_codes": list(self.recorded_codes)},
            "replayed": {"decision": self.replayed, "reason_codes": list(self.replayed_codes)},
            "error": self.error, "input_redacted": self.input_redacted,
        }


@dataclass(slots=True)
class ReplayReport:
    """Counts over every replayed decision, and the changed ones (up to ``keep``)."""

    replayed: int = 0
    changed: int = 0
    changed_redacted: int = 0  # changed ones whose stored input lost something to redaction
    not_recorded: int = 0  # decisions in the selection without a stored input
    transitions: Counter[str] = field(default_factory=Counter)  # "allow -> deny": n
    changes: list[ReplayedDecision] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed, "unchanged": self.replayed - self.changed, "changed": self.changed,
            "changed_with_redacted_input": self.changed_redacted,
            "without_input": self.not_recorded, "transitions": dict(self.transitions.most_common()),
            "changes": [c.as_dict() for c in self.changes],
        }


def replay(
    db_path: str | Path, engine: PolicyEngine, *, where: str | None = None, limit: int | None = None,
    keep: int = 100,
) -> ReplayReport:
    """Evaluate ``engine`` on every recorded input of the audit database (selected by the SQL
    condition ``where``, oldest first, at most ``limit``) and compare with the recorded
    decisions. Raises :class:`~firewall.audit.query.QueryError` for an unreadable database."""
    report = ReplayReport()
    for row in _recorded(Path(db_path).expanduser(), where, limit, report):
        result = _judge(engine, row)
        report.replayed += 1
        if result.changed:
            report.changed += 1
            report.changed_redacted += result.input_redacted
            report.transitions[f"{result.recorded} -> {result.replayed}"] += 1
            if len(report.changes) < keep:
                report.changes.append(result)
    return report


def _recorded(path: Path, where: str | None, limit: int | None, report: ReplayReport) -> Iterator[tuple[Any, ...]]:
    if not path.is_file():
        raise QueryError(f"audit database not found: {path}", EXIT_UNAVAILABLE)
    con = connect_read_only(path, 2.0)
    try:
        condition = f"({where})" if where else "true"
        try:
            columns = {r[0] for r in con.execute("DESCRIBE decisions").fetchall()}
            if "policy_input" not in columns:
                raise QueryError(
                    f"{path} holds no policy inputs (written before mcpfw recorded them); "
                    "turn on audit.record_inputs and record traffic first", EXIT_UNAVAILABLE)
            missing = con.execute(
                f"SELECT count(*) FROM decisions WHERE policy_input IS NULL AND {condition}").fetchone()
            report.not_recorded = int(missing[0]) if missing else 0
            cursor = con.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM decisions WHERE policy_input IS NOT NULL AND {condition} "
                f"ORDER BY ts, decision_id" + (f" LIMIT {int(limit)}" if limit is not None else ""))
        except Exception as exc:  # duckdb.Error: a bad --where, say
            if isinstance(exc, QueryError):
                raise
            raise QueryError(f"SQL error: {exc}", EXIT_SQL_ERROR) from exc
        while True:
            rows = cursor.fetchmany(_CHUNK)
            if not rows:
                return
            yield from rows
    finally:
        con.close()


def _judge(engine: PolicyEngine, row: tuple[Any, ...]) -> ReplayedDecision:
    decision_id, ts, direction, kind, method, tool, server, recorded, codes, policy_input = row
    error = None
    try:
        decision = normalize_decision(engine.evaluate(_as_text(policy_input)))
    except PolicyEvaluationError as exc:  # the live firewall fails closed on these too
        decision = None
        error = str(exc)
    if decision is None:
        replayed, replayed_codes = "deny", ("policy_error",)
    else:
        replayed, replayed_codes = _as_enforced(decision)
        error = decision.error
    text = _as_text(policy_input)
    return ReplayedDecision(
        decision_id, ts, direction, kind, method, tool, server,
        recorded, tuple(sorted(codes or ())), replayed, tuple(sorted(replayed_codes)), error,
        input_redacted="[REDACTED" in text or _CUT_MARK in text)


def _as_enforced(decision: Decision) -> tuple[str, tuple[str, ...]]:
    """What the firewall would do with ``decision``: one asking for approval is held."""
    if decision.allow and decision.approvals:
        return "deny", ("approval_required",)
    return decision.action, tuple(r["code"] for r in decision.reasons)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode("utf-8")
