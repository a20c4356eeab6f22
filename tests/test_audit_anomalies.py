"""Anomaly scoring on a real audit file written by the firewall's own audit log."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from firewall.audit import AuditLog
from firewall.audit.anomaly import AnomalySettings, find_anomalies, parse_duration

HOURS = 72  # three days of history, then the hour under test
START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
LAST = START + dt.timedelta(hours=HOURS)  # the bucket that is judged
NOW = LAST + dt.timedelta(hours=1)


def _call(ts: dt.datetime, n: int, tenant: str, subject: str, tool: str, decision: str = "allow") -> dict[str, object]:
    return {
        "ts": ts.timestamp(), "decision_id": f"{subject}-{n:07d}", "direction": "client_to_server",
        "kind": "request", "method": "tools/call", "tool": tool, "server": "fs", "session_id": f"s-{subject}",
        "transport": "http", "arguments": {"path": f"/srv/{n}"}, "decision": decision, "reasons": [],
        "tenant": tenant, "subject": subject, "eval_ms": 0.05, "bytes": 100, "message_id": n,
    }


def _hour(rows: list[dict[str, object]], hour: int, count: int, tenant: str, subject: str,
          tools: tuple[str, ...] = ("read_file",), denied: int = 0) -> None:
    base = START + dt.timedelta(hours=hour)
    for i in range(count):
        ts = base + dt.timedelta(seconds=(i * 3599) // max(count, 1))
        n = len(rows)
        rows.append(_call(ts, n, tenant, subject, tools[i % len(tools)], "deny" if i < denied else "allow"))
        # the server's answer: not a request, so not counted
        answer = dict(rows[-1], direction="server_to_client", kind="response", decision_id=f"r-{n:07d}")
        rows.append(answer)


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    rows: list[dict[str, object]] = []
    for hour in range(HOURS):
        _hour(rows, hour, rng.randint(15, 25), "acme", "alice")
        _hour(rows, hour, rng.randint(15, 25), "acme", "bob")
        _hour(rows, hour, 30, "globex", "carol", denied=1 if hour % 24 == 3 else 0)
        _hour(rows, hour, 60, "globex", "dave", tools=("read_file", "list_directory"))
        if hour % 3 == 0:  # a bursty but regular principal: 0 or ~90 calls an hour
            _hour(rows, hour, rng.randint(80, 100), "acme", "batch-job")
    _hour(rows, HOURS, 20, "acme", "alice")
    _hour(rows, HOURS, 200, "acme", "bob")  # ten times the usual volume
    _hour(rows, HOURS, 30, "globex", "carol", denied=12)  # the usual volume, many refusals
    _hour(rows, HOURS, 59, "globex", "dave", tools=("read_file", "list_directory"))
    _hour(rows, HOURS, 1, "globex", "dave", tools=("write_file",))  # a tool dave never used
    _hour(rows, HOURS, 95, "acme", "batch-job")
    _hour(rows, HOURS, 500, "acme", "erin")  # first seen this hour: no history to judge by
    path = tmp_path_factory.mktemp("anomalies") / "audit.duckdb"
    with AuditLog(path) as audit:
        for row in rows:
            audit.record(row)
    return path


def _settings(**overrides: object) -> AnomalySettings:
    values: dict[str, object] = {"since": LAST, "min_history": 24}
    values.update(overrides)
    return AnomalySettings(**values)  # type: ignore[arg-type]


def test_spikes_denials_and_first_uses_are_flagged_and_the_steady_are_not(audit_file: Path) -> None:
    found = find_anomalies(audit_file, _settings(), now=NOW)
    flagged = {(a.principal, a.signal) for a in found}
    assert flagged == {("bob", "request_rate"), ("carol", "denial_rate"), ("dave", "new_tool")}
    by_key = {(a.principal, a.signal): a for a in found}
    bob = by_key["bob", "request_rate"]
    assert bob.observed == 200 and 15 <= bob.expected <= 25 and bob.score > 20
    assert bob.bucket == LAST and bob.tenant == "acme"
    carol = by_key["carol", "denial_rate"]
    assert carol.observed == 12 and carol.expected < 1 and "12 of 30 requests denied" in carol.why
    dave = by_key["dave", "new_tool"]
    assert dave.tool == "fs/write_file" and dave.score >= 3 and dave.bucket == LAST
    assert "after 4321 calls of 2 other tools" in dave.why  # 72 hours of 60 calls, and one this hour
    assert found == sorted(found, key=lambda a: -a.score)


def test_thresholds_and_history_are_the_users_to_choose(audit_file: Path) -> None:
    # erin has no history: judged only when the user asks for no history at all
    assert not any(a.principal == "erin" for a in find_anomalies(audit_file, _settings(), now=NOW))
    loose = find_anomalies(audit_file, _settings(min_history=0), now=NOW)
    assert any(a.principal == "erin" and a.signal == "request_rate" for a in loose)
    # a higher bar keeps only bob's tenfold spike
    strict = find_anomalies(audit_file, _settings(min_score=15), now=NOW)
    assert {(a.principal, a.signal) for a in strict} == {("bob", "request_rate")}
    # the history before the spike is quiet: nothing earlier is flagged
    earlier = find_anomalies(audit_file, _settings(since=START + dt.timedelta(hours=30)), now=LAST)
    assert earlier == []


def test_the_bursty_regular_principal_is_judged_by_its_own_spread(audit_file: Path) -> None:
    found = find_anomalies(audit_file, _settings(min_score=2), now=NOW)
    assert not any(a.principal in {"batch-job", "alice"} for a in found)


def test_cli_prints_json_and_fails_on_anomaly(audit_file: Path) -> None:
    since = LAST.isoformat()
    base = [sys.executable, "-m", "firewall.cli", "audit", "anomalies", "--db", str(audit_file), "--since", since]
    done = subprocess.run([*base, "--format", "json", "--fail-on-anomaly"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    rows = json.loads(done.stdout)
    assert {(r["principal"], r["signal"]) for r in rows} == {
        ("bob", "request_rate"), ("carol", "denial_rate"), ("dave", "new_tool")}
    assert rows[0]["principal"] == "bob" and rows[0]["bucket"].startswith(LAST.strftime("%Y-%m-%dT%H"))
    quiet = subprocess.run([*base, "--min-score", "1000", "--fail-on-anomaly"], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and "(0 rows)" in quiet.stdout
    bad = subprocess.run([*base, "--bucket", "soon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a duration" in bad.stderr and "Traceback" not in bad.stderr
    for option, value in (("--min-score", "nan"), ("--min-score", "inf"), ("--since", "yesterday")):
        bad = subprocess.run([*base, option, value], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("mcpfw: error:"), bad.stderr
    missing = subprocess.run([*base[:5], "--db", str(audit_file.parent / "nope.duckdb")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "audit database not found" in missing.stderr


def test_durations() -> None:
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("1.5h") == dt.timedelta(minutes=90)
    assert parse_duration("2w") == dt.timedelta(days=14)
    for text in ("", "1", "h", "-1h", "1y"):
        with pytest.raises(ValueError):
            parse_duration(text)
    with pytest.raises(ValueError):
        AnomalySettings(bucket=dt.timedelta(hours=2), lookback=dt.timedelta(hours=1))
