"""Tests of firewall.audit against real DuckDB files (no mocks)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import orjson
import pytest

from firewall.audit import (
    COLUMNS,
    SCHEMA_VERSION,
    AuditLog,
    AuditUnavailableError,
    SecretRulesError,
    args_digest,
    list_views,
    load_secret_rules,
    redact_for_audit,
    redact_text,
    run_sql,
)
from firewall.audit.rows import MAX_STORED_CHARS, to_spill_line, to_stored_row

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[1]

GITHUB_TOKEN = "ghp_" + "Q7x9" * 9
OPENAI_KEY = "sk-proj-" + "Zt4" * 12
PASSWORD = "hunter2-Very-Secret-Pw"
MARKER = "VISIBLE-MARKER-7f3a9c"


def make_row(i: int, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "decision_id": f"d-{i:06d}",
        "direction": "client_to_server",
        "kind": "request",
        "method": "tools/call",
        "tool": "read_file",
        "server": "fs",
        "session_id": "s1",
        "transport": "stdio",
        "arguments": {"path": f"/tmp/f{i}"},
        "decision": "allow",
        "reasons": [],
        "eval_ms": 0.05,
        "bytes": 120,
        "message_id": i,
    }
    row.update(extra)
    return row


def fetch(db: Path, sql: str, params: list[object] | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


class Locker:
    """Another process that opens a database file on request and holds it open
    (one process for the whole module: starting Python + DuckDB is slow)."""

    CODE = textwrap.dedent(
        """
        import sys, duckdb
        con = None
        for line in sys.stdin:
            command, _, arg = line.rstrip("\\n").partition(" ")
            if command == "hold":
                mode, path = arg.split(" ", 1)
                con = duckdb.connect(path, read_only=mode == "ro")
            elif con is not None:
                con.close()
                con = None
            print("ok", flush=True)
        """
    )

    def __init__(self) -> None:
        self._proc = subprocess.Popen([PYTHON, "-c", self.CODE], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self._lock = threading.Lock()
        self._holding = False

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        assert self._proc.stdout.readline().strip() == "ok"

    @contextmanager
    def holding(self, db: Path, *, read_only: bool = False) -> Iterator[Locker]:
        """Hold ``db`` open until the block ends or :meth:`release` is called."""
        with self._lock:
            self._send(f"hold {'ro' if read_only else 'rw'} {db}")
            self._holding = True
        try:
            yield self
        finally:
            self.release()

    def release(self) -> None:
        """Close the database in the other process; safe twice and from a timer."""
        with self._lock:
            if self._holding:
                self._send("release")
                self._holding = False

    def stop(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


@pytest.fixture(scope="module")
def locker() -> Iterator[Locker]:
    helper = Locker()
    yield helper
    helper.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.duckdb"


# ---------------------------------------------------------------- storage


def test_rows_round_trip_with_duckdb_types(db: Path) -> None:
    ts = 1_767_225_600.123456
    raw_args = {"path": "/etc/hosts", "token": GITHUB_TOKEN, "n": [1, 2.5, None, True]}
    with AuditLog(db) as audit:
        audit.record(
            make_row(
                1, ts=ts, message_id='"req-1"', arguments=raw_args, decision="deny",
                reasons=[{"code": "blocked_path", "message": "path outside roots"}],
                error_code=-32051, engine="regorus", bundle_digest="sha256:abc",
                findings={"paths": {"count": 1}}, tags=["pii", "prod"], error=None,
                tenant="acme", subject="alice", key_id="k1", auth_method="api_key",
                protocol_era="2025-11-25", protocol_version="2025-11-25", client_name="claude",
            )
        )
        audit.record(make_row(2, ts=dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC), message_id=7, arguments=None))
        audit.record(make_row(3, ts=dt.datetime(2026, 1, 1, 12, 0), reasons=["plain reason"]))
        # A response: no arguments stored, the digest covers its result.
        audit.record(make_row(4, kind="response", arguments=None, digest_of={"content": [{"text": "hi"}]}))
        assert audit.flush() is True

    types = dict(fetch(db, "SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_name = 'decisions'"))
    assert list(types) == [c.name for c in COLUMNS]
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert types["arguments"] == "JSON" and types["reason_codes"] == "VARCHAR[]" and types["error_code"] == "INTEGER"

    (first,) = fetch(db, "SELECT epoch_us(ts), message_id, arguments, reasons, reason_codes, error_code, "
                         "eval_ms, bytes, findings, tags, args_digest, tenant, decision "
                         "FROM decisions WHERE decision_id = 'd-000001'")
    assert first[0] == round(ts * 1e6)
    assert first[1] == '"req-1"'
    assert json.loads(first[2]) == {"path": "/etc/hosts", "token": "[REDACTED]", "n": [1, 2.5, None, True]}
    assert json.loads(first[3]) == [{"code": "blocked_path", "message": "path outside roots"}]
    assert first[4] == ["blocked_path"]
    assert first[5:8] == (-32051, 0.05, 120)
    assert json.loads(first[8]) == {"paths": {"count": 1}}
    assert first[9] == ["pii", "prod"]
    assert first[10] == args_digest(raw_args)  # digest of the unredacted value
    assert first[11:] == ("acme", "deny")

    rows = dict(fetch(db, "SELECT decision_id, (ts, message_id, arguments, args_digest, reason_codes) "
                          "FROM decisions"))
    noon = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert rows["d-000002"] == (noon, "7", None, None, [])  # a numeric id becomes its JSON text
    assert rows["d-000003"][0] == noon  # naive datetimes are UTC
    assert rows["d-000003"][4] == ["policy"]
    assert rows["d-000004"][2:4] == (None, args_digest({"content": [{"text": "hi"}]}))


def test_missing_ts_and_id_are_filled_and_ids_sort_by_time(db: Path) -> None:
    before = time.time()
    with AuditLog(db) as audit:
        for _ in range(3):
            audit.record({"decision": "allow"})
            time.sleep(0.002)
    rows = fetch(db, "SELECT epoch_us(ts) / 1e6, decision_id FROM decisions ORDER BY ts")
    assert len(rows) == 3 and all(before <= r[0] <= time.time() for r in rows)
    ids = [r[1] for r in rows]
    assert ids == sorted(ids) and all(len(i) == 36 and i[14] == "7" for i in ids)


def test_schema_is_idempotent_and_upgrades_older_files(db: Path) -> None:
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE decisions (ts TIMESTAMPTZ, decision_id VARCHAR, decision VARCHAR)")
    con.execute("INSERT INTO decisions VALUES (now(), 'old', 'allow')")
    con.close()
    for i in range(2):
        with AuditLog(db) as audit:
            audit.record(make_row(i, tenant="t"))
    assert fetch(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert fetch(db, "SELECT count(*), count(tenant) FROM decisions") == [(3, 2)]
    names = set(list_views())
    assert names == {"decisions_per_tool", "denials_by_reason", "recent_denials", "usage_per_server", "usage_per_tenant", "usage_per_key"}
    comments = dict(fetch(db, "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal"))
    assert set(comments) == names and all(comments.values())


def test_views_return_sensible_aggregates(db: Path) -> None:
    with AuditLog(db) as audit:
        for i in range(10):  # read_file: 6 allowed, 4 denied for blocked_path
            denied = i < 4
            audit.record(make_row(i, ts=1_000 + i, eval_ms=float(i + 1), decision="deny" if denied else "allow",
                                  reasons=[{"code": "blocked_path", "message": f"denied #{i}"}] if denied else []))
        audit.record(make_row(10, ts=1_100, tool="exec", server="shell", decision="deny",
                              reasons=[{"code": "blocked_path", "message": "a"}, {"code": "secret", "message": "b"}]))
        audit.record(make_row(11, ts=1_101, tool="exec", server="shell", kind="response",
                              direction="server_to_client", decision="redact"))
        audit.record(make_row(12, ts=1_102, tool=None, method="resources/read", server="fs", decision="deny",
                              reasons=[{"code": "secret", "message": "c"}], session_id="s2"))

    per_tool = {r[0]: r for r in fetch(db, "SELECT * FROM decisions_per_tool")}
    assert per_tool["read_file"][1:7] == ("fs", 10, 10, 6, 4, 0)
    assert per_tool["read_file"][7] == pytest.approx(5.5) and per_tool["read_file"][8] == pytest.approx(9.55)
    assert per_tool["exec"][1:7] == ("shell", 1, 2, 0, 1, 1)

    by_reason = {r[0]: r for r in fetch(db, "SELECT reason_code, denials, epoch(last_seen), example_tool, "
                                            "example_method FROM denials_by_reason")}
    assert by_reason["blocked_path"][1:4] == (5, 1_100, "exec")
    assert by_reason["secret"][1:5] == (2, 1_102, "exec", "resources/read")

    recent = fetch(db, "SELECT decision_id, reason_codes, reason_messages FROM recent_denials")
    assert [r[0] for r in recent] == ["d-000012", "d-000010", "d-000003", "d-000002", "d-000001", "d-000000"]
    assert recent[1][1:] == (["blocked_path", "secret"], "a; b")

    usage = {r[0]: r for r in fetch(db, "SELECT server, messages, requests, tool_calls, tools, sessions, "
                                        "denied, bytes FROM usage_per_server")}
    assert usage["fs"][1:] == (11, 11, 10, 1, 2, 5, 11 * 120)
    assert usage["shell"][1:] == (2, 1, 1, 1, 1, 1, 240)


# ---------------------------------------------------- locks, spill, health


def test_lock_conflict_is_retried_until_the_holder_releases(db: Path, locker: Locker) -> None:
    with AuditLog(db) as audit:
        audit.record(make_row(0))
        assert audit.flush()
    with AuditLog(db, lock_retry_seconds=5.0) as audit, locker.holding(db, read_only=True):
        for i in range(1, 21):
            audit.record(make_row(i))
        threading.Timer(0.25, locker.release).start()
        started = time.monotonic()
        assert audit.flush() is True
        assert time.monotonic() - started >= 0.2
        assert audit.stats.lock_retries > 0 and audit.healthy and not audit.spill_path.exists()
    assert fetch(db, "SELECT count(DISTINCT decision_id), count(*) FROM decisions") == [(21, 21)]


def test_lock_held_too_long_spills_then_ingests_back(db: Path, locker: Locker) -> None:
    with AuditLog(db) as audit:
        audit.record(make_row(0))
    audit = AuditLog(db, lock_retry_seconds=0.1)
    try:
        with locker.holding(db):
            for i in range(1, 11):
                command = f"git push https://bot:{PASSWORD}@example.com"
                audit.record(make_row(i, arguments={"cmd": command, "api_key": OPENAI_KEY}))
            assert audit.flush() is False
            assert not audit.healthy and not audit.accepting and audit.pending == 0
            audit.record(make_row(11))  # spilled while still unhealthy
            assert audit.flush() is False
            spilled = audit.spill_path.read_bytes()
            assert spilled.count(b"\n") == 11 and b"d-000011" in spilled
            assert PASSWORD.encode() not in spilled and OPENAI_KEY.encode() not in spilled
            locker.release()
        assert audit.flush() is True, audit.last_error
        assert audit.healthy and audit.accepting and not audit.spill_path.exists()
        assert audit.stats.rows_ingested_from_spill == 11
    finally:
        audit.close()
    assert fetch(db, "SELECT count(DISTINCT decision_id), count(*) FROM decisions") == [(12, 12)]


def test_spill_mode_keeps_accepting_while_unhealthy(db: Path) -> None:
    db.mkdir()  # a directory where the database file should be
    audit = AuditLog(db, on_failure="spill", spill_path=db.parent / "spill.jsonl")
    try:
        audit.record(make_row(1))
        assert audit.flush() is False
        assert not audit.healthy and audit.accepting
        assert audit.last_error
    finally:
        audit.close()
    assert len((db.parent / "spill.jsonl").read_bytes().splitlines()) == 1


def test_block_mode_does_not_start_without_a_writable_database(db: Path) -> None:
    """The first messages would pass unrecorded until the first flush found out."""
    db.mkdir()
    with pytest.raises(AuditUnavailableError, match="on_failure is block"):
        AuditLog(db, lock_retry_seconds=0.05)
    audit = AuditLog(db, on_failure="spill", lock_retry_seconds=0.05)  # spill mode starts, unhealthy
    try:
        assert not audit.healthy and audit.accepting and "cannot be written" in (audit.last_error or "")
    finally:
        audit.close()


def test_unwritable_path_blocks_spills_and_recovers(db: Path) -> None:
    audit = AuditLog(db, lock_retry_seconds=0.05)
    db.unlink()
    db.mkdir()  # the file turned into a directory while running
    try:
        assert audit.accepting
        for i in range(5):
            audit.record(make_row(i))
        assert audit.flush() is False
        assert not audit.healthy and not audit.accepting  # block mode fails closed
        assert len(audit.spill_path.read_bytes().splitlines()) == 5
        db.rmdir()
        audit.record(make_row(5))
        assert audit.flush() is True
        assert audit.healthy and audit.accepting and not audit.spill_path.exists()
    finally:
        audit.close()
    assert fetch(db, "SELECT count(*) FROM decisions") == [(6,)]


def test_corrupt_database_file_spills(db: Path) -> None:
    audit = AuditLog(db)
    db.write_bytes(b"this is not a duckdb database" * 200)  # replaced while running
    try:
        audit.record(make_row(1))
        assert audit.flush() is False
        assert not audit.healthy and not audit.accepting
        assert audit.spill_path.is_file()
    finally:
        audit.close()
    assert db.read_bytes().startswith(b"this is not")  # left alone for inspection


def test_rows_stay_in_memory_when_spill_fails_too(db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    db.mkdir()
    spill = db.parent / "spill-dir"
    spill.mkdir()  # the spill file cannot be created either
    audit = AuditLog(db, on_failure="spill", spill_path=spill, max_pending=10)
    try:
        for i in range(6):
            audit.record(make_row(i))
        assert audit.flush() is False
        assert audit.pending == 6 and audit.accepting  # spill mode, below max_pending
        for i in range(6, 12):
            audit.record(make_row(i))
        assert audit.flush() is False
        assert audit.pending == 12 and not audit.accepting  # past max_pending: every mode
        audit.record(make_row(12))
        audit.flush()
        assert capfd.readouterr().err.count("traffic is now refused") == 1
        db.rmdir()
        assert audit.flush() is True
        assert audit.pending == 0 and audit.accepting and audit.healthy
    finally:
        audit.close()
    assert fetch(db, "SELECT count(DISTINCT decision_id) FROM decisions") == [(13,)]


def test_spill_ingest_skips_rows_already_stored_and_keeps_bad_lines(db: Path) -> None:
    rules = load_secret_rules()
    with AuditLog(db) as audit:
        audit.record(make_row(1, ts=100.0))
    stored = [to_stored_row(make_row(i, ts=100.0 + i), rules) for i in (0, 1)]
    spill = db.with_name(db.name + ".spill.jsonl")
    # Row 1 is already in the database (a crash after COMMIT, before unlink);
    # the truncated last line is what a crash mid-write would leave.
    spill.write_bytes(b"".join(map(to_spill_line, stored)) + b'{"decision_id": "d-0000')
    with AuditLog(db) as audit:
        assert audit.flush() is True
        assert audit.stats.rows_ingested_from_spill == 2
    counts = fetch(db, "SELECT decision_id, count(*) FROM decisions GROUP BY ALL ORDER BY 1")
    assert counts == [("d-000000", 1), ("d-000001", 1)]
    assert not spill.exists()
    assert spill.with_name(spill.name + ".bad").read_bytes() == b'{"decision_id": "d-0000\n'


def test_close_flushes_pending_rows_and_is_idempotent(db: Path) -> None:
    audit = AuditLog(db, flush_interval=60, batch_size=10_000)
    for i in range(25):
        audit.record(make_row(i))
    assert audit.close() is True
    assert audit.close() is True
    assert not db.with_name(db.name + ".wal").exists()  # checkpointed at close
    audit.record(make_row(25))  # after close: written synchronously, not lost
    assert fetch(db, "SELECT count(*) FROM decisions") == [(26,)]


def test_pending_rows_are_flushed_at_interpreter_exit(db: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from firewall.audit import AuditLog
        audit = AuditLog({str(db)!r}, flush_interval=60, batch_size=10_000)
        for i in range(40):
            audit.record({{"decision_id": f"x{{i}}", "decision": "allow"}})
        audit.request_close()  # what a signal handler would call; no close() follows
        audit.record({{"decision_id": "late", "decision": "allow"}})
        """
    )
    subprocess.run([PYTHON, "-c", script], check=True, timeout=30)
    assert fetch(db, "SELECT count(*) FROM decisions") == [(41,)]


def test_rows_of_large_messages_wake_the_writer_before_the_interval(db: Path) -> None:
    # A waiting row holds its parsed message: a few large ones are written at once
    # rather than held for the flush interval.
    with AuditLog(db, flush_interval=60, batch_size=10_000) as audit:
        for i in range(3):
            audit.record({"decision_id": f"big{i}", "decision": "allow", "bytes": 3 << 20})
        deadline = time.monotonic() + 10
        while audit.stats.rows_written < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert audit.stats.rows_written == 3
        audit.record({"decision_id": "small", "decision": "allow", "bytes": 100})
        time.sleep(0.3)
        assert audit.stats.rows_written == 3  # a small one waits for the interval
    assert fetch(db, "SELECT count(*) FROM decisions") == [(4,)]


def test_rows_from_two_threads_all_arrive(db: Path) -> None:
    per_thread = 2_000
    with AuditLog(db, batch_size=200) as audit:
        def work(prefix: str) -> None:
            for i in range(per_thread):
                audit.record({"decision_id": f"{prefix}{i}", "decision": "allow", "arguments": {"i": i}})

        threads = [threading.Thread(target=work, args=(p,)) for p in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert audit.flush() is True
    total = 2 * per_thread
    assert fetch(db, "SELECT count(*), count(DISTINCT decision_id) FROM decisions") == [(total, total)]


def test_several_processes_share_one_database(db: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from firewall.audit import AuditLog
        with AuditLog(sys.argv[1], flush_interval=0.01, batch_size=20, lock_retry_seconds=10) as audit:
            for i in range(150):
                audit.record({{"decision_id": f"{{sys.argv[2]}}-{{i}}", "decision": "allow"}})
                if i % 30 == 0:
                    audit.flush()
            assert audit.flush() and audit.healthy
        """
    )
    procs = [subprocess.Popen([PYTHON, "-c", script, str(db), f"p{n}"]) for n in range(2)]
    with AuditLog(db, flush_interval=0.01, lock_retry_seconds=10) as audit:  # and this process too
        while any(p.poll() is None for p in procs):
            audit.record({"decision_id": f"parent-{audit.stats.rows_converted}-{time.monotonic_ns()}"})
            time.sleep(0.005)
        assert audit.flush() and audit.healthy
        parent_rows = audit.stats.rows_converted
    assert all(p.wait(timeout=60) == 0 for p in procs)
    expected = 300 + parent_rows
    assert fetch(db, "SELECT count(*), count(DISTINCT decision_id) FROM decisions") == [(expected, expected)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_writer_thread_runs_at_lower_cpu_priority_than_the_relay(db: Path) -> None:
    import os

    with AuditLog(db, flush_interval=60) as audit:
        audit.record(make_row(0))
        assert audit.flush() is True
        writer = audit._thread.native_id
        assert writer is not None and writer != threading.get_native_id()
        relay = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, writer) > relay


def test_a_writer_left_behind_slows_the_caller_instead_of_refusing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import firewall.audit.log as log_module

    convert = log_module.to_stored_row

    def slow_convert(row, rules):  # a writer that cannot keep up with the relay
        time.sleep(0.0002)
        return convert(row, rules)

    monkeypatch.setattr(log_module, "to_stored_row", slow_convert)
    rows = 3_000
    with AuditLog(db, batch_size=50, backlog_rows=100, max_pending=1_000) as audit:
        refused = 0
        peak = 0
        for i in range(rows):
            refused += not audit.accepting
            audit.record(make_row(i))
            peak = max(peak, audit.pending)
        assert audit.flush() is True
        assert audit.stats.backlog_pauses > 0
    assert refused == 0 and peak < 1_000  # never reached max_pending, where traffic is denied
    assert fetch(db, "SELECT count(DISTINCT decision_id) FROM decisions") == [(rows,)]


def test_record_leaves_conversion_and_storage_to_the_writer(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """record() only queues: digests, redaction and DuckDB happen on the writer thread.
    (Its cost is measured in bench/bench_audit.py, not here.)"""
    from firewall.audit import log as log_module

    converted_on: set[int] = set()
    convert = log_module.to_stored_row

    def watched(row, rules):
        converted_on.add(threading.get_ident())
        return convert(row, rules)

    monkeypatch.setattr(log_module, "to_stored_row", watched)
    rows = [make_row(i) for i in range(2_000)]
    with AuditLog(db, flush_interval=60, batch_size=10**9) as audit:
        for row in rows:
            audit.record(row)
        assert threading.get_ident() not in converted_on, "a row was converted on the calling thread"
        assert audit.flush() is True
    assert converted_on and threading.get_ident() not in converted_on
    assert fetch(db, "SELECT count(*) FROM decisions") == [(2_000,)]


# ---------------------------------------------------------------- secrets


def test_secrets_never_reach_the_database_file(db: Path) -> None:
    aws_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    with AuditLog(db) as audit:
        for i in range(20):
            audit.record(make_row(
                i,
                arguments={
                    "note": MARKER,
                    "password": PASSWORD,
                    "headers": {"Authorization": f"Bearer {OPENAI_KEY}"},
                    "script": f"export GH={GITHUB_TOKEN}; aws_secret_access_key={aws_secret}",
                    "argv": ["mysql", "--password", PASSWORD],
                },
                reasons=[{"code": "secret", "message": f"found {GITHUB_TOKEN}"}],
                findings={"secrets": [{"rule": "github-token", "match": GITHUB_TOKEN}]},
                error=f"upstream said {OPENAI_KEY}",
            ))
    for path in (p for p in db.parent.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for secret in (PASSWORD, OPENAI_KEY, GITHUB_TOKEN, aws_secret):
            assert secret.encode() not in data, (path.name, secret)
    assert MARKER.encode() in db.read_bytes()  # the grep does see plain strings
    (arguments,) = fetch(db, "SELECT arguments FROM decisions LIMIT 1")[0]
    assert json.loads(arguments) == {
        "note": MARKER,
        "password": "[REDACTED]",
        "headers": {"Authorization": "[REDACTED]"},
        "script": "export GH=[REDACTED:github-token]; aws_secret_access_key=[REDACTED:aws-secret-access-key]",
        "argv": ["mysql", "--password", "[REDACTED]"],
    }


@pytest.mark.parametrize(
    ("key", "secret"),
    [(k, True) for k in ("password", "DB_PASSWORD", "passwd", "client-secret", "apiKey", "X-API-Key", "access_key",
                         "Authorization", "Cookie", "private_key", "credentials", "sessionId", "session",
                         "access_token", "githubToken", "pwd", "oauth")]
    + [(k, False) for k in ("max_tokens", "tokens", "tokenizer", "author", "path", "keyword", "passenger")],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    redacted = redact_for_audit({key: "value-123", "other": {key: 42}, "flag": {key: True}})
    assert (redacted[key] == "[REDACTED]") is secret
    assert (redacted["other"][key] == "[REDACTED]") is secret
    assert redacted["flag"][key] is True  # booleans and None carry no secret


@pytest.mark.parametrize(
    ("text", "rule", "kept"),
    [
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "private-key-pem", ""),
        ("key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn", "private-key-pem", "key: "),
        ("id=AKIAIOSFODNN7EXAMPLE", "aws-access-key-id", "id="),
        ("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-access-key",
         "AWS_SECRET_ACCESS_KEY: "),
        ("use " + GITHUB_TOKEN, "github-token", "use "),
        # glued to a name: "_" and digits are word characters, so \b found no boundary there
        ("lookup_" + GITHUB_TOKEN, "github-token", "lookup_"),
        ("v2" + GITHUB_TOKEN, "github-token", "v2"),
        ("key_" + OPENAI_KEY, "openai-api-key", "key_"),
        ("github_pat_11AAAAAAA0aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "github-fine-grained-token", ""),
        ("glpat-x9Yz8WvU7tS6rQ5pO4nM", "gitlab-token", ""),
        ("xoxb-123456789012-abcdefABCDEF", "slack-token", ""),
        ("https://hooks.slack.com/services/T0AAAA/B0BBBB/cccccccccccccccccccc", "slack-webhook", ""),
        ("sk_live_51Habcdefghijklmnop", "stripe-secret-key", ""),
        ("sk-ant-api03-" + "a1B2" * 10, "anthropic-api-key", ""),
        (OPENAI_KEY, "openai-api-key", ""),
        ("AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6q", "google-api-key", ""),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl", "jwt", ""),
        # a payload whose JSON starts with a space verifies as well
        ("eyJhbGciOiJIUzI1NiJ9.IHsic3ViIjoiMTIzIn0.c2lnbmF0dXJl", "jwt", ""),
        ("key mcpfw_0123456789ab_" + "Ab-_9" * 8 + "xyz", "mcpfw-api-key", "key "),
        ("postgres://app:p@ss:w0rd@db:5432/x", "url-credentials", "postgres://app:"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "authorization-header", "Authorization: Basic "),
        ("send it with bearer abcDEF123456ghiJKL", "bearer-token", "send it with bearer "),
        ("psql --password=" + PASSWORD, "cli-secret-flag", "psql --password="),
        ('{"password": "two words"}', "password-assignment", '{"password": "'),
        ("API_KEY=8f7d6a5c4b3a2918f7e6d5c4", "generic-secret-assignment", "API_KEY="),
        ("PGPASSWORD=hunter2 psql -h db", "password-assignment", "PGPASSWORD="),
        ("password: hunter2\n", "password-assignment", "password: "),
        ('auth_token = "a8Fk2LmQ9zXw4RtY7uVb"', "generic-secret-assignment", 'auth_token = "'),
    ],
)
def test_credential_patterns(text: str, rule: str, kept: str) -> None:
    redacted = redact_text(text)
    assert redacted.startswith(kept + f"[REDACTED:{rule}]"), redacted


def test_token_rules_need_their_prefix_at_a_token_start() -> None:
    for text in ("task-" + "a" * 30, "mask-" + "b" * 25, "ahf_" + "c" * 36):
        assert redact_text(text) == text


def test_rules_read_the_original_text_not_each_others_output() -> None:
    """A bare secret key is recognised by the access key id written before it; redacting the
    id first must not hide that."""
    for sep in (" ", ",", "\t", " | ", " secret ", ", secret key: "):
        text = "AKIAIOSFODNN7EXAMPLE" + sep + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        assert redact_text(text) == f"[REDACTED:aws-access-key-id]{sep}[REDACTED:aws-secret-access-key-paired]"
    # Not a secret key: no digit or no capital in the 40 characters.
    assert "abcdefghijabcdefghijabcdefghijabcdefghij" in redact_text(
        "AKIAIOSFODNN7EXAMPLE abcdefghijabcdefghijabcdefghijabcdefghij")


@pytest.mark.parametrize(
    "text",
    [
        "The author wrote about tokens; max_tokens: 1000, password policy and session handling.",
        "see https://example.com:8443/path?a=b@c and /home/user/.ssh/config",
        "task-assessment-framework-version-2 and desk-lamp",
        "token: aaaaaaaaaaaaaaaaaaaaaaaa",  # long but not random: low entropy
        "sha256:" + "0" * 64,
        # Source code read through a filesystem server: names, calls and types, not secrets.
        "stored_tokens = get_stored_tokens()",
        "tokenizer.pre_tokenizer = BertPreTokenizer()",
        'ssl = {"keyfile_password": self.cfg.ssl_options.get("password")}',
        "def hash(self, password: str | bytes, salt: bytes) -> str:",
        "    Args:\n        password: Password to hash.",
        "headers.authorization = withAuthorizationPrefix(token);",
        "const login = {user: options.user, password: options.password};",
        "connect(keyfile=keyfile, password=password)",
        '"pbkdf2-password": "1.2.1",',
    ],
)
def test_benign_text_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_long_strings_are_cut_after_redaction(db: Path) -> None:
    content = "x" * (MAX_STORED_CHARS - 10) + " " + GITHUB_TOKEN + " " + "y" * 100_000  # token across the cut
    with AuditLog(db) as audit:
        audit.record(make_row(1, arguments={"path": "/big", "content": content}))
    ((arguments, digest),) = fetch(db, "SELECT arguments, args_digest FROM decisions")
    stored = json.loads(arguments)["content"]
    assert stored.startswith("x" * 100) and stored.endswith(f"…[truncated, {len(content)} chars]")
    assert len(stored) < MAX_STORED_CHARS + 40 and GITHUB_TOKEN[:12] not in stored
    assert digest == args_digest({"path": "/big", "content": content})


def test_redaction_copies_and_digest_is_canonical() -> None:
    value = {"b": [1, {"token": "x"}], "a": "é", "t": (1, 2)}
    redacted = redact_for_audit(value)
    assert value["b"][1] == {"token": "x"} and redacted["b"][1] == {"token": "[REDACTED]"}
    assert redacted["t"] == [1, 2]
    canonical = json.dumps({"a": "é", "b": [1, {"token": "x"}], "t": [1, 2]}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    assert args_digest(value) == hashlib.sha256(canonical.encode()).hexdigest()
    assert args_digest({"a": "é", "t": [1, 2], "b": [1, {"token": "x"}]}) == args_digest(value)
    assert args_digest({"big": 2**70}) == hashlib.sha256(b'{"big":1180591620717411303424}').hexdigest()


def test_rule_file_errors_are_reported(tmp_path: Path) -> None:
    rules = load_secret_rules()
    assert len({r.id for r in rules}) == len(rules) >= 20
    assert load_secret_rules() is rules  # compiled once
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - id: broken\n    regex: '(unclosed'\n")
    with pytest.raises(SecretRulesError, match="broken"):
        load_secret_rules(bad)
    bad.write_text("rules:\n  - {id: a, regex: x}\n  - {id: a, regex: y}\n")
    with pytest.raises(SecretRulesError, match="duplicate"):
        load_secret_rules(bad)
    with pytest.raises(SecretRulesError):
        load_secret_rules(tmp_path / "missing.yaml")
    custom = tmp_path / "custom.yaml"
    custom.write_text("rules:\n  - {id: acme, regex: 'ACME-[0-9]{6}', keywords: [acme-]}\n")
    assert redact_text("id ACME-123456", load_secret_rules(custom)) == "id [REDACTED:acme]"


# ---------------------------------------------------------------- queries


@pytest.fixture
def filled_db(db: Path) -> Path:
    with AuditLog(db) as audit:
        audit.record(make_row(1, ts=1_700_000_000.5, arguments={"path": "/a", "note": "x" * 100}))
        audit.record(make_row(2, ts=1_700_000_001.0, decision="deny", tags=["t1"],
                              reasons=[{"code": "blocked_path", "message": "no\nway"}]))
    return db


def test_query_table_format(filled_db: Path) -> None:
    out = io.StringIO()
    sql = "SELECT decision_id, decision, bytes, arguments, reason_codes FROM decisions ORDER BY 1"
    code = run_sql(filled_db, sql, out=out)
    lines = out.getvalue().splitlines()
    assert code == 0
    assert lines[0].split(" | ")[0].strip() == "decision_id" and set(lines[1]) <= {"-", "+"}
    bars = [i for i, ch in enumerate(lines[0]) if ch == "|"]
    assert bars == [i for i, ch in enumerate(lines[1]) if ch == "+"]  # columns align
    assert all(line[i] == "|" for line in lines[2:4] for i in bars)
    cells = lines[2].split(" | ")
    assert [c.strip() for c in cells[:3]] == ["d-000001", "allow", "120"]
    assert cells[2] == "  120"  # numbers are right-aligned
    assert cells[3].startswith('{"path":"/a"') and cells[3].endswith("…") and len(cells[3]) == 48
    assert lines[3].endswith('["blocked_path"]') and lines[-1] == "(2 rows)"


def test_query_json_format(filled_db: Path) -> None:
    out = io.StringIO()
    sql = "SELECT ts, arguments, tags, reasons, error_code FROM decisions ORDER BY ts"
    assert run_sql(filled_db, sql, "json", out) == 0
    rows = json.loads(out.getvalue())
    assert dt.datetime.fromisoformat(rows[0]["ts"]) == dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=dt.UTC)
    assert rows[0]["arguments"] == {"path": "/a", "note": "x" * 100}
    assert rows[1]["tags"] == ["t1"] and rows[1]["reasons"][0]["message"] == "no\nway"
    assert rows[1]["error_code"] is None


def test_query_csv_format(filled_db: Path) -> None:
    out = io.StringIO()
    sql = "SELECT decision_id, reason_codes, error_code, reasons FROM decisions ORDER BY 1"
    assert run_sql(filled_db, sql, "csv", out) == 0
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["decision_id", "reason_codes", "error_code", "reasons"]
    assert rows[1] == ["d-000001", "[]", "", "[]"]
    assert rows[2][1] == '["blocked_path"]' and orjson.loads(rows[2][3])[0]["message"] == "no\nway"


def test_query_errors_are_clear(filled_db: Path, tmp_path: Path) -> None:
    err = io.StringIO()
    assert run_sql(filled_db, "SELECT * FROM nope", out=io.StringIO(), err=err) == 1
    assert err.getvalue().startswith("mcpfw: error: SQL error: Catalog Error") and "Traceback" not in err.getvalue()
    err = io.StringIO()
    assert run_sql(filled_db, "DELETE FROM decisions", out=io.StringIO(), err=err) == 1
    assert "read-only" in err.getvalue()
    err = io.StringIO()
    assert run_sql(tmp_path / "missing.duckdb", "SELECT 1", out=io.StringIO(), err=err) == 2
    assert "not found" in err.getvalue()
    assert run_sql(filled_db, "SELECT 1", "xml", out=io.StringIO(), err=io.StringIO()) == 2
    assert fetch(filled_db, "SELECT count(*) FROM decisions") == [(2,)]


def test_query_gives_up_on_a_held_lock_or_waits_for_it(filled_db: Path, locker: Locker) -> None:
    with locker.holding(filled_db):
        err = io.StringIO()
        assert run_sql(filled_db, "SELECT 1", out=io.StringIO(), err=err, lock_retry_seconds=0.1) == 2
        assert "lock" in err.getvalue().lower() and "Traceback" not in err.getvalue()
        threading.Timer(0.2, locker.release).start()
        out = io.StringIO()
        assert run_sql(filled_db, "SELECT count(*) AS n FROM decisions", out=out) == 0
        assert out.getvalue().splitlines()[2].strip() == "2"


def test_views_are_listed_with_descriptions() -> None:
    views = list_views()
    assert all(description and "SELECT" in sql for description, sql in views.values())


def test_database_files_are_not_left_open(db: Path) -> None:
    # Between batches another process can open the file for writing.
    with AuditLog(db) as audit:
        audit.record(make_row(1))
        assert audit.flush()
        con = duckdb.connect(str(db))
        con.execute("INSERT INTO decisions (ts, decision_id, decision) VALUES (now(), 'other', 'allow')")
        con.close()
        audit.record(make_row(2))
    assert fetch(db, "SELECT count(*) FROM decisions") == [(3,)]


def test_a_credential_used_as_a_key_is_redacted_too() -> None:
    token = "ghp_" + "b" * 36
    value = {"headers": {f"Authorization: Bearer {token}": True, token: "x", "ghp_" + "c" * 36: "y"}}
    stored = redact_for_audit(value, load_secret_rules())
    assert "ghp_" not in orjson.dumps(stored).decode()
    assert stored["headers"] == {
        "Authorization: Bearer [REDACTED:authorization-header]": True,
        "[REDACTED:github-token]": "x", "[REDACTED:github-token]#2": "y"}


@pytest.mark.parametrize("spelling", [
    "key=" + __import__("base64").b64encode(GITHUB_TOKEN.encode()).decode(),  # base64
    "see " + GITHUB_TOKEN.replace("_", "%5F") + " ok",  # one %-escape
    "\uff47\uff48\uff50" + GITHUB_TOKEN[3:],  # full-width letters
    GITHUB_TOKEN[:8] + "\u200b" + GITHUB_TOKEN[8:],  # a zero-width space inside
    GITHUB_TOKEN.replace("_", "%255F"),  # a %-escape of a %-escape
    GITHUB_TOKEN.replace("_", "&#95;"),  # an HTML character reference
])
def test_credentials_spelled_otherwise_are_found_and_redacted(spelling: str) -> None:
    from detectors.secrets import SecretScanner

    assert [rule for _, _, rule in SecretScanner().scan_text(spelling)] == ["github-token"]
    stored = orjson.dumps(redact_for_audit({"a": spelling})).decode()
    assert "[REDACTED:github-token]" in stored and GITHUB_TOKEN[8:20] not in stored


def test_json_pointers_do_not_look_encoded_but_base64_and_hex_do():
    """The audit writer's fast path: a findings document full of pointers such as
    "/params/arguments/message" took the full redaction walk for every row."""
    import base64

    from firewall.audit.redact import may_hide_secret

    assert not may_hide_secret('{"pointer":"/params/arguments/message","other":"/result/content/0/text"}')
    token = "ghp_" + "Q7x9" * 9
    for encoded in (base64.b64encode(token.encode()).decode(), token.encode().hex(), "YWJj/ZGVm/" + "QUJD" * 5):
        assert may_hide_secret(f"value: {encoded}"), encoded



def test_encoded_run_search_finds_what_the_regex_finds() -> None:
    """The run search on ASCII text (byte marks and a substring search) answers as the
    regex it replaced on every text: runs at the edges, after a short run, next to a path,
    hex escapes, and non-ASCII text (which takes the regex)."""
    import random

    from firewall.audit.redact import _ENCODED_RUN, _PATH_LIKE, _has_encoded_run

    def reference(text: str) -> bool:
        return any(not _PATH_LIKE.fullmatch(m.group()) for m in _ENCODED_RUN.finditer(text))

    pieces = ["a", "Z", "0", "/", "_", "-", "+", "=", " ", '"', ":", "\\x4", "\\x41", "abcdefghij",
              "ABCDEFGHIJ", "/usr/lib/", "é", "%2F"]
    rng = random.Random(5)
    texts = ["", "x" * 19, "x" * 20, "/params/arguments/message", "a/" * 15, "\\x41" * 8, "\\x41" * 7,
             "é" + "Q" * 20, "short run, " + "Q7x9" * 6]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 24))) for _ in range(20_000)]
    found = 0
    for text in texts:
        assert _has_encoded_run(text) == reference(text), text
        found += reference(text)
    assert 0 < found < len(texts)  # both answers occur

def test_a_locked_database_does_not_stop_the_start(db: Path) -> None:
    """Held by another reader (a long `mcpfw audit sql`), the file is waited for as at run
    time; only a file that cannot be written at all stops a block-mode start."""
    AuditLog(db).close()
    with duckdb.connect(str(db), read_only=True):
        audit = AuditLog(db, lock_retry_seconds=0.05)
    try:
        audit.record(make_row(1))
        assert audit.flush() is True
    finally:
        audit.close()
