"""Writing audit rows into the DuckDB file that several processes share.

DuckDB lets one process at a time open a file for writing, several firewall
processes share one audit file, and ``mcpfw audit sql`` must read it while
they run. So the file is never kept open: a private in-memory DuckDB instance
(the "hub") stages each batch (an Arrow table it scans, see ``_stage``), then
ATTACHes the file, inserts, commits and DETACHes it, holding the file lock for a
few milliseconds. The hub exists because opening a DuckDB instance costs ~12 ms
and ATTACH well under 1 ms.

DETACH skips the checkpoint (5-25 ms of lock time per batch): the WAL,
fsync'd at COMMIT so rows are durable, is folded into the file once it passes
``CHECKPOINT_WAL_BYTES`` and at close. Every ATTACH replays the WAL, so it is
kept smallish: at 1 MiB (about 1,300 rows of typical traffic) a checkpoint comes every
third batch of a busy firewall, and the replay costs less than the checkpoints saved
(measured: 59 against 86 us of writer CPU a row with 256 KiB, batches of 400 rows).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson

try:  # Arrow hands DuckDB a batch as typed columns, the cheapest way in (see _stage)
    import pyarrow as pa
except ImportError:  # pragma: no cover - a declared dependency; the JSON path still works
    pa = None

from firewall.audit.rows import StoredRow, to_db_values, ts_datetime
from firewall.audit.schema import COLUMNS, ensure_schema
from firewall.audit.spill import SpillFile

log = logging.getLogger("mcpfw.audit")

CHECKPOINT_WAL_BYTES = 1024 * 1024
_ALIAS = "mcpfw_audit"  # name of the attached audit database inside the hub
_APPEND_CHUNK = 16  # rows handed to the DuckDB appender per call
_JSON_CHUNK_ROWS = 8192  # rows staged per JSON text (one INSERT) at most
_JSON_CHUNK_BYTES = 8 << 20  # ... and bytes of JSON text
_ARROW_SLICE_ROWS = 512  # rows of one column converted to Arrow between GIL hand-overs
_ARROW_SLICE_BYTES = 256 << 10  # ... or fewer, when their arguments and findings are this long
_GIL_SLICE = 0.0002  # seconds of Python work between GIL hand-overs
_GIL_PAUSE = 0.00005  # seconds the writer sleeps at each hand-over
_LOCK_MARKERS = (
    "could not set lock",
    "conflicting lock",
    "unique file handle conflict",
    "resource temporarily unavailable",
)


def _stage_column(index: int, name: str, type_: str) -> str:
    value = f"r[{index + 1}]"
    if type_.endswith("[]"):
        return f"from_json({value}, '[\"{type_[:-2]}\"]') AS {name}"
    return f"CAST({value} AS {type_}) AS {name}"


# One row per element of a JSON array of rows (each an array of the column values, in
# COLUMN order, as produced by to_db_values), every value read as text and cast.
_STAGE_SQL = (
    "INSERT INTO {table} SELECT "
    + ", ".join(_stage_column(i, c.name, c.type) for i, c in enumerate(COLUMNS))
    + " FROM (SELECT unnest(from_json(?, '[[\"VARCHAR\"]]')) AS r)"
)


def is_lock_conflict(exc: BaseException) -> bool:
    """True for DuckDB's "another process/instance holds this file" errors."""
    if isinstance(exc, duckdb.ResourceInUseException):
        return True
    text = str(exc).lower()
    return isinstance(exc, duckdb.Error) and any(marker in text for marker in _LOCK_MARKERS)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else repr(exc)


class GilYielder:
    """Hands the GIL over every ``_GIL_SLICE`` seconds of writer work.

    The writer shares the GIL with the relay threads. Left alone, a busy
    writer keeps it for a whole switch interval (5 ms) each time a relay
    thread asks, which would wreck the relay latency budget. ``sleep(0)``
    releases it, but the writer mostly takes it straight back before a woken
    relay thread gets to run (p99 wait ~0.25 ms in a test with a pipe reader);
    a real pause of ``_GIL_PAUSE`` lets the relay thread have it (p99 ~0.04 ms)
    and costs the writer nothing but wall time it has plenty of.
    """

    __slots__ = ("_next", "_urgent")

    def __init__(self, urgent: Callable[[], bool] | None = None) -> None:
        self._next = time.perf_counter() + _GIL_SLICE
        self._urgent = urgent  # while it answers True (the writer is behind), keep the GIL

    def tick(self) -> None:
        """Call once per unit of work; yields when the slice is used up."""
        if time.perf_counter() >= self._next:
            if self._urgent is None or not self._urgent():
                time.sleep(_GIL_PAUSE)
            self._next = time.perf_counter() + _GIL_SLICE


@dataclass
class AuditStats:
    """Counters of one :class:`firewall.audit.AuditLog` (read them after ``flush()``)."""

    rows_converted: int = 0
    rows_written: int = 0
    batches_written: int = 0
    rows_spilled: int = 0
    rows_ingested_from_spill: int = 0
    lock_retries: int = 0
    checkpoints: int = 0
    last_batch_rows: int = 0
    last_convert_ms: float = 0.0
    last_stage_ms: float = 0.0
    last_locked_ms: float = 0.0  # ATTACH + insert + COMMIT (+ checkpoint) + DETACH
    backlog_pauses: int = 0  # record() calls that paused because the writer was behind


class DuckDBStore:
    """Inserts batches of stored rows into the audit file; used by one thread at a time."""

    def __init__(self, path: Path, spill: SpillFile, stats: AuditStats) -> None:
        self.path = path
        self.last_error: str | None = None
        self._spill = spill
        self._stats = stats
        self.behind: Callable[[], bool] | None = None  # the owner's backlog test (see GilYielder)
        self._hub: duckdb.DuckDBPyConnection | None = None
        self._schema_ready = False
        self.locked = False  # the last failed ATTACH met another process's lock

    @property
    def wal_path(self) -> Path:
        """The file's write-ahead log."""
        return self.path.with_name(self.path.name + ".wal")

    def write(self, rows: list[StoredRow], *, include_spill: bool, retry_seconds: float) -> bool:
        """Insert ``rows`` (and, if asked, the spill file's rows) in one transaction.

        Lock conflicts are retried for ``retry_seconds``. On failure nothing is
        written, ``last_error`` says why, and the caller still owns ``rows``.
        """
        try:
            hub = self._hub_connection()
            started = time.perf_counter()
            staged = self._stage(hub, "staging", rows)
            self._stats.last_stage_ms = (time.perf_counter() - started) * 1e3
        except duckdb.Error as exc:
            self.last_error = f"staging failed: {_first_line(exc)}"
            return False
        try:
            started = time.perf_counter()
            self.locked = False
            if not self._attach(hub, retry_seconds):
                return False
            try:
                self._insert(hub, staged, include_spill)
            except (duckdb.Error, OSError) as exc:
                self.last_error = _first_line(exc)
                with contextlib.suppress(duckdb.Error):
                    hub.execute("ROLLBACK")
                self._schema_ready = False  # re-check: the file may have been replaced
                return False
            finally:
                with contextlib.suppress(duckdb.Error):
                    hub.execute("USE memory")
                with contextlib.suppress(duckdb.Error):
                    hub.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
        finally:
            _unregister(hub, staged)
        self.last_error = None
        self._stats.last_locked_ms = (time.perf_counter() - started) * 1e3
        if rows:
            self._stats.rows_written += len(rows)
            self._stats.batches_written += 1
            self._stats.last_batch_rows = len(rows)
        return True

    def close(self, *, checkpoint: bool) -> None:
        """Drop the in-memory instance, first folding our WAL into the file."""
        if self._hub is None:
            return
        if checkpoint and self.wal_path.exists():
            try:
                self._hub.execute(f"ATTACH {_sql_string(str(self.path))} AS {_ALIAS}")
                self._hub.execute(f"CHECKPOINT {_ALIAS}")
            except duckdb.Error as exc:  # best effort: the next opener replays the WAL
                log.debug("final checkpoint of %s skipped: %s", self.path, exc)
            finally:
                with contextlib.suppress(duckdb.Error):
                    self._hub.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
        with contextlib.suppress(duckdb.Error):
            self._hub.close()
        self._hub = None

    def _insert(self, hub: duckdb.DuckDBPyConnection, staged: str, include_spill: bool) -> None:
        # The spill file stays locked until its rows are committed and it is deleted.
        with self._spill.claim() if include_spill else contextlib.nullcontext() as claim:
            spilled = claim.rows if claim is not None else []
            # Staged before BEGIN: a DuckDB transaction writes to one database only.
            spill_staged = self._stage(hub, "spill_staging", spilled) if spilled else None
            try:
                hub.execute("BEGIN TRANSACTION")
                if not self._schema_ready:
                    hub.execute(f"USE {_ALIAS}")
                    ensure_schema(hub)
                    hub.execute("USE memory")
                if spill_staged is not None:
                    self._insert_spilled(hub, spill_staged)
                hub.execute(f"INSERT INTO {_ALIAS}.decisions BY NAME SELECT * FROM {staged}")
                hub.execute("COMMIT")
            finally:
                if spill_staged is not None:
                    _unregister(hub, spill_staged)
            if claim is not None:
                claim.consumed = True
                self._stats.rows_ingested_from_spill += len(spilled)
        self._schema_ready = True
        if self._wal_size() > CHECKPOINT_WAL_BYTES:
            with contextlib.suppress(duckdb.Error):  # rows are committed; retried next batch
                hub.execute(f"CHECKPOINT {_ALIAS}")
                self._stats.checkpoints += 1

    @staticmethod
    def _insert_spilled(hub: duckdb.DuckDBPyConnection, staged: str) -> None:
        # A crash between COMMIT and deleting the spill file would ingest the
        # same rows twice; skip ids already stored (the ts range limits the scan).
        hub.execute(
            f"""
            INSERT INTO {_ALIAS}.decisions BY NAME
            SELECT s.* FROM {staged} AS s
            WHERE NOT EXISTS (
                SELECT 1 FROM {_ALIAS}.decisions AS d
                WHERE d.decision_id = s.decision_id
                  AND d.ts BETWEEN (SELECT min(ts) FROM {staged})
                               AND (SELECT max(ts) FROM {staged})
            )
            """
        )

    def _wal_size(self) -> int:
        try:
            return self.wal_path.stat().st_size
        except OSError:
            return 0

    def _hub_connection(self) -> duckdb.DuckDBPyConnection:
        if self._hub is None:
            hub = duckdb.connect(":memory:", config={"threads": 1})
            hub.execute("PRAGMA disable_checkpoint_on_shutdown")
            columns = ", ".join(f"{c.name} {c.type}" for c in COLUMNS)
            hub.execute(f"CREATE TABLE staging ({columns})")
            hub.execute(f"CREATE TABLE spill_staging ({columns})")
            self._hub = hub
        return self._hub

    def _stage(self, hub: duckdb.DuckDBPyConnection, table: str, rows: list[StoredRow]) -> str:
        """Make ``rows`` readable by SQL in the hub; return the relation to select from.

        Arrow first: typed columns that DuckDB scans without the GIL, about 4 us a row
        against 15 for JSON text and 20 for the appender (which converts every value in
        Python, holding the GIL that the relay threads need). A batch Arrow refuses (a
        value it cannot encode, such as a lone surrogate) takes the JSON path into the
        ``table`` staging table, and what JSON refuses takes the appender.
        """
        yielder = GilYielder(self.behind)
        if pa is not None:
            arrow = _arrow_table(rows, yielder)
            if arrow is not None:
                name = f"{table}_arrow"
                hub.register(name, arrow)
                return name
        hub.execute(f"DELETE FROM {table}")
        # JSON text is parsed and converted by DuckDB without the GIL.
        sql = _STAGE_SQL.format(table=table)
        done = 0
        dumps, to_db = orjson.dumps, to_db_values
        while done < len(rows):
            # Each statement costs ~2 ms to plan: few, large chunks (bounded in bytes).
            parts: list[bytes] = []
            size = 0
            try:
                for row in rows[done : done + _JSON_CHUNK_ROWS]:
                    part = dumps(to_db(row))
                    parts.append(part)
                    size += len(part)
                    if size >= _JSON_CHUNK_BYTES:
                        break
                    yielder.tick()
                hub.execute(sql, [(b"[" + b",".join(parts) + b"]").decode("utf-8")])
            except (TypeError, orjson.JSONEncodeError, duckdb.Error):
                break  # a value JSON or DuckDB's JSON reading refuses: the appender takes the rest
            done += len(parts)
            yielder.tick()
        if done < len(rows):
            appender = hub.appender(table)
            for start in range(done, len(rows), _APPEND_CHUNK):
                appender.append_rows([to_db_values(row) for row in rows[start : start + _APPEND_CHUNK]])
                yielder.tick()
            appender.flush()
        return f"memory.{table}"

    def _attach(self, hub: duckdb.DuckDBPyConnection, retry_seconds: float) -> bool:
        """ATTACH the audit file, retrying lock conflicts with jittered backoff."""
        deadline = time.monotonic() + retry_seconds
        delay = 0.005
        if not self.path.exists():
            self._create_database(hub)
        while True:
            try:
                with contextlib.suppress(duckdb.Error):
                    hub.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
                hub.execute(f"ATTACH {_sql_string(str(self.path))} AS {_ALIAS}")
                return True
            except duckdb.Error as exc:
                self.last_error = _first_line(exc)
                remaining = deadline - time.monotonic()
                self.locked = is_lock_conflict(exc)
                if not self.locked or remaining <= 0:
                    return False
                self._stats.lock_retries += 1
                time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, 0.1)

    def _create_database(self, hub: duckdb.DuckDBPyConnection) -> None:
        """Create the database file atomically, schema included.

        Another process attaching a file that DuckDB is still initialising gets
        "not a valid DuckDB database file", so the file is built under a
        temporary name and hard-linked into place (never replacing a file
        another process created meanwhile). Errors are left for ATTACH to report.
        """
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            hub.execute(f"ATTACH {_sql_string(str(temp))} AS {_ALIAS}_new")
            try:
                hub.execute(f"USE {_ALIAS}_new")
                hub.execute("BEGIN TRANSACTION")
                ensure_schema(hub)
                hub.execute("COMMIT")
                hub.execute(f"CHECKPOINT {_ALIAS}_new")  # only the file is linked, not its WAL
            finally:
                hub.execute("USE memory")
                hub.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}_new")
            try:
                os.link(temp, self.path)
            except FileExistsError:
                pass  # another process won the race; use its file
            except OSError:  # no hard links on this filesystem
                if not self.path.exists():
                    os.replace(temp, self.path)
        except (duckdb.Error, OSError) as exc:
            log.debug("could not pre-create %s: %s", self.path, exc)
        finally:
            for leftover in (temp, temp.with_name(temp.name + ".wal")):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def _arrow_table(rows: list[StoredRow], yielder: GilYielder) -> pa.Table | None:
    """The rows as an Arrow table of the audit columns, or None if Arrow refuses a value.

    Converting Python values holds the GIL, and so do the page faults of fresh Arrow
    buffers (about 12 ms a MiB on a VM, measured): the conversion goes in slices of at most
    ``_ARROW_SLICE_ROWS`` rows and ``_ARROW_SLICE_BYTES`` of text, with a chance for the
    relay threads to run after each slice of each column.
    """
    slices = _slices(rows, yielder)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in COLUMNS]
    yielder.tick()
    arrays = []
    try:
        for column, values, type_ in zip(COLUMNS, columns, _ARROW_TYPES, strict=True):
            chunks = []
            for start, stop in slices:
                part = values[start:stop]
                if column.name == "ts":
                    part = list(map(ts_datetime, part))
                chunks.append(pa.array(part, type=type_))
                yielder.tick()
            arrays.append(pa.chunked_array(chunks, type=type_))
        return pa.Table.from_arrays(arrays, names=[c.name for c in COLUMNS])
    except (pa.ArrowException, TypeError, ValueError, UnicodeError, OverflowError):
        return None


def _slices(rows: list[StoredRow], yielder: GilYielder) -> list[tuple[int, int]]:
    """Row ranges of at most ``_ARROW_SLICE_ROWS`` rows, cut earlier where the rows' large
    text (arguments, findings) passes ``_ARROW_SLICE_BYTES``."""
    slices: list[tuple[int, int]] = []
    start = size = 0
    for index, row in enumerate(rows):
        size += sum(len(row[i]) for i in _LARGE_TEXT if row[i] is not None)
        if index + 1 - start >= _ARROW_SLICE_ROWS or size >= _ARROW_SLICE_BYTES:
            slices.append((start, index + 1))
            start, size = index + 1, 0
            yielder.tick()
    if start < len(rows) or not slices:
        slices.append((start, len(rows)))
    return slices


def _unregister(hub: duckdb.DuckDBPyConnection, staged: str) -> None:
    if not staged.startswith("memory."):
        with contextlib.suppress(duckdb.Error):
            hub.unregister(staged)


def _arrow_type(sql_type: str) -> pa.DataType:
    if sql_type.endswith("[]"):
        return pa.list_(_arrow_type(sql_type[:-2]))
    return {
        "VARCHAR": pa.string(), "JSON": pa.string(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(),
        "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    }[sql_type]


_ARROW_TYPES = [_arrow_type(c.type) for c in COLUMNS] if pa is not None else []
_LARGE_TEXT = [i for i, c in enumerate(COLUMNS) if c.type == "JSON" or c.name == "error"]
