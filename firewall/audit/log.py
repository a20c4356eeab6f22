"""The audit log: a cheap ``record()`` for the relay hot path and a background
writer that batches rows into the DuckDB file.

Design
------
* ``record(row)`` appends the caller's dict to a deque (O(1), no lock, no
  I/O) and, when ``batch_size`` rows are waiting, or rows for ``_WAKE_BYTES`` of
  messages (a waiting row holds its parsed message), wakes the writer.
* The writer thread wakes every ``flush_interval`` seconds (or earlier),
  converts the rows (args digest, secret redaction, types: see
  :mod:`firewall.audit.rows`) and writes them with
  :class:`firewall.audit.store.DuckDBStore`: the file is opened only for the
  few milliseconds of each batch, so several processes can share it and
  ``mcpfw audit sql`` can read it. A lock conflict is retried with jittered
  backoff for up to ``lock_retry_seconds``.
* When the database cannot be written (lock retries exhausted, permissions,
  corrupt file, disk full...) no row is dropped: the batch goes to the spill
  file (JSON lines, fsync'd) and the log turns unhealthy. Every later batch
  first ingests the spill file back into DuckDB (deduplicated by
  ``decision_id``), which deletes it and restores health. If the spill file
  cannot be written either, rows stay in memory; past ``max_pending`` rows
  ``accepting`` turns False in every mode and an error goes to stderr once.
* ``on_failure="block"`` (default, fail closed): ``accepting`` is False while
  unhealthy and the pipeline denies traffic (-32054). ``"spill"``: traffic
  continues while rows go to the spill file.
* Flow control: the writer runs at a lower priority and hands the GIL over
  often, so that it never delays the relay. When traffic outruns it anyway
  (more than ``backlog_rows`` rows waiting), ``record()`` pauses its caller
  briefly (releasing the GIL) and the writer stops handing the GIL over, until
  it has caught up: a healthy log slows traffic down rather than letting the
  backlog reach ``max_pending``, where traffic would be denied.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Literal

from firewall.audit.redact import SecretRules, load_secret_rules
from firewall.audit.rows import StoredRow, new_decision_id, to_spill_line, to_stored_row
from firewall.audit.spill import SpillFile
from firewall.audit.store import AuditStats, DuckDBStore, GilYielder

log = logging.getLogger("mcpfw.audit")

OnFailure = Literal["block", "spill"]

_MAX_ROWS_PER_CYCLE = 20_000
_WAKE_BYTES = 8 << 20  # message bytes of waiting rows that wake the writer early
_BACKLOG_PAUSE = 0.0005  # seconds record() pauses its caller while the writer is behind
_SPILL_RECHECK_SECONDS = 5.0

_live_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for audit_log in list(_live_logs):
        audit_log.close()


class AuditUnavailableError(RuntimeError):
    """The audit log cannot record decisions and the configuration forbids running without."""


class AuditLog:
    """Buffered writer of audit rows to a DuckDB file shared between processes.

    ``path``: the DuckDB file (created with its schema when missing).
    ``flush_interval``: seconds between writer wake-ups.
    ``batch_size``: pending rows that wake the writer early.
    ``on_failure``: ``"block"`` (``accepting`` False while unhealthy) or ``"spill"``.
    ``spill_path``: spill file; default ``<path>.spill.jsonl``.
    ``max_pending``: rows held in memory before ``accepting`` turns False.
    ``backlog_rows``: rows waiting beyond which ``record()`` slows its caller down.
    ``lock_retry_seconds``: how long a batch retries a locked database.
    ``secret_rules``: credential rules; default ``load_secret_rules()``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 0.5,
        batch_size: int = 5000,
        on_failure: OnFailure = "block",
        spill_path: str | Path | None = None,
        max_pending: int = 100_000,
        backlog_rows: int = 10_000,
        lock_retry_seconds: float = 2.0,
        secret_rules: SecretRules | None = None,
    ) -> None:
        if on_failure not in ("block", "spill"):
            raise ValueError(f"on_failure must be 'block' or 'spill', not {on_failure!r}")
        if flush_interval <= 0 or batch_size < 1 or max_pending < 1 or backlog_rows < 1 or lock_retry_seconds < 0:
            raise ValueError("flush_interval, batch_size, max_pending, backlog_rows must be positive")
        self.path = Path(path).expanduser().absolute()
        self.spill_path = (
            Path(spill_path).expanduser().absolute()
            if spill_path is not None
            else self.path.with_name(self.path.name + ".spill.jsonl")
        )
        self.on_failure: OnFailure = on_failure
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._backlog_rows = min(backlog_rows, max_pending)
        self._lock_retry_seconds = lock_retry_seconds
        # Loaded here so that a broken rule file fails at start-up, not later.
        self._rules = secret_rules if secret_rules is not None else load_secret_rules()
        self._spill = SpillFile(self.spill_path)
        self.stats = AuditStats()
        self._store = DuckDBStore(self.path, self._spill, self.stats)
        self._store.behind = self._behind

        self._pending: deque[dict[str, Any]] = deque()
        self._pending_bytes = 0  # approximate (updated without a lock): only wakes the writer
        self._wake: queue.SimpleQueue[object] = queue.SimpleQueue()  # put() is reentrant
        self._wake_sent = False
        self._closing = False
        self._io_lock = threading.Lock()  # one conversion/DB cycle at a time
        # Writer-side state, guarded by _io_lock.
        self._held: list[StoredRow] = []
        self._held_count = 0
        self._spilled_outstanding = 0
        self._next_spill_check = 0.0
        self._overflow_reported = False
        self._healthy = True
        self.last_error: str | None = None
        self._probe(lock_retry_seconds)

        self._thread = threading.Thread(target=self._run, name="mcpfw-audit-writer", daemon=True)
        self._thread.start()
        _live_logs.add(self)

    def _probe(self, retry_seconds: float) -> None:
        """Open the database once before any traffic: with ``on_failure: block`` a file that
        cannot be written stops the start (the first messages would otherwise pass during
        the first flush interval, unrecorded); with ``spill`` the log starts unhealthy,
        spilling, if the spill file's directory is writable."""
        if self._store.write([], include_spill=False, retry_seconds=retry_seconds):
            return
        problem = f"audit database {self.path} cannot be written: {self._store.last_error}"
        self._store.close(checkpoint=False)
        if self._store.locked:
            # Held by another process (a long `mcpfw audit sql`, another firewall): a state
            # the writer waits out, as it does at run time, not a reason to refuse to start.
            print(f"mcpfw: WARNING: {problem}; will retry", file=sys.stderr)
            return
        if self.on_failure == "block":
            raise AuditUnavailableError(f"{problem} (audit.on_failure is block: not starting)")
        if not os.access(self.spill_path.parent, os.W_OK):
            raise AuditUnavailableError(f"{problem}; nor can the spill file {self.spill_path}")
        self._healthy = False
        self.last_error = problem
        print(f"mcpfw: WARNING: {problem}; decisions go to the spill file {self.spill_path}", file=sys.stderr)

    # ---- hot path -------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Queue one audit row (see :mod:`firewall.audit.rows` for its keys).

        O(1) and lock-free; safe from any thread. The log takes ownership of
        ``row`` and reads it later on the writer thread: neither the dict nor
        the objects it references (e.g. ``arguments``) may be mutated afterwards.
        """
        if "ts" not in row:
            row["ts"] = time.time()
        self._pending.append(row)
        if self._closing:
            # close() has run or is running its final drain: write it now.
            self._drain_synchronously()
            return
        size = row.get("bytes")
        if type(size) is int:
            self._pending_bytes += size
        waiting = len(self._pending)
        if (waiting >= self._batch_size or self._pending_bytes >= _WAKE_BYTES) and not self._wake_sent:
            self._wake_sent = True
            self._wake.put(None)
        if waiting > self._backlog_rows and self._healthy:
            # The writer is behind: give it the GIL and slow this caller down.
            self.stats.backlog_pauses += 1
            time.sleep(_BACKLOG_PAUSE)

    # ---- state ----------------------------------------------------------

    def _behind(self) -> bool:
        return len(self._pending) > self._backlog_rows

    @property
    def healthy(self) -> bool:
        """False while rows of this log sit in the spill file or in memory because
        the database could not be written; True again once they are ingested."""
        return self._healthy

    @property
    def accepting(self) -> bool:
        """Whether the pipeline may let traffic through (else deny with -32054)."""
        if len(self._pending) + self._held_count >= self._max_pending:
            return False
        return self._healthy or self.on_failure == "spill"

    @property
    def pending(self) -> int:
        """Rows recorded but not yet in DuckDB or the spill file."""
        return len(self._pending) + self._held_count

    # ---- flushing and closing ------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write everything recorded so far; True when it all reached DuckDB.

        False when rows went to the spill file or stay in memory, or when the
        timeout expired first.
        """
        if self._closing or not self._thread.is_alive():
            return self._drain_synchronously(timeout)
        done: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._wake.put(done)
        try:
            return done.get(timeout=timeout)
        except queue.Empty:
            return False

    def request_close(self) -> None:
        """Ask the writer to drain and stop, without waiting.

        Only sets a flag and puts a token on a reentrant queue, so it is safe in
        a signal handler; follow with :meth:`close` (or let the interpreter's
        exit hook do it).
        """
        self._closing = True
        self._wake.put(None)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush everything pending and stop the writer. Idempotent.

        Returns True when every row reached DuckDB. Registered to run at normal
        interpreter exit. Never blocks longer than about ``timeout`` seconds, so
        it may also be called from a signal handler.
        """
        self.request_close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        ok = self._drain_synchronously(timeout)
        _live_logs.discard(self)
        return ok

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- writer thread --------------------------------------------------

    def _run(self) -> None:
        _lower_thread_priority()
        while True:
            try:
                token: object = self._wake.get(timeout=self._flush_interval)
            except queue.Empty:
                token = None
            tokens = [token]
            with contextlib.suppress(queue.Empty):
                while True:
                    tokens.append(self._wake.get_nowait())
            self._wake_sent = False
            stopping = self._closing
            waiters = [t for t in tokens if isinstance(t, queue.SimpleQueue)]
            with self._io_lock:
                # A flush or close covers every row recorded before it, however
                # many cycles that takes; rows arriving meanwhile wait their turn.
                target = self.stats.rows_converted + len(self._pending)
                self._cycle()
                while self._pending and (
                    len(self._pending) >= self._batch_size
                    or ((stopping or waiters) and self.stats.rows_converted < target)
                ):
                    self._cycle()
                settled = self._settled() and self.stats.rows_converted >= target
                if stopping:
                    self._store.close(checkpoint=self._healthy)
            for done in waiters:
                done.put(settled)
            if stopping:
                return

    def _drain_synchronously(self, timeout: float | None = 10.0) -> bool:
        """Run cycles in the calling thread (after close, or with no writer)."""
        if not self._io_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        try:
            target = self.stats.rows_converted + len(self._pending)
            self._cycle()
            while self._pending and self.stats.rows_converted < target:
                self._cycle()
            settled = self._settled() and self.stats.rows_converted >= target
            if self._closing:
                self._store.close(checkpoint=self._healthy)
                if self._held:
                    self._dump_held_to_stderr()
            return settled
        finally:
            self._io_lock.release()

    def _settled(self) -> bool:
        return not self._held and self._spilled_outstanding == 0 and self._healthy

    def _cycle(self) -> None:
        """Convert pending rows and get them into DuckDB, or the spill file, or memory."""
        try:
            self._cycle_unguarded()
        except Exception as exc:  # a bug must not kill the writer; rows stay held
            log.exception("audit writer cycle failed")
            self.last_error = f"internal error: {exc!r}"
            self._healthy = False
        self._held_count = len(self._held)
        self._check_overflow()

    def _cycle_unguarded(self) -> None:
        started = time.perf_counter()
        stored = self._held
        self._held = []
        # Take what is queued now, not what keeps arriving, so batches stay bounded.
        taken = min(len(self._pending), _MAX_ROWS_PER_CYCLE)
        self._pending_bytes = 0
        yielder = GilYielder(self._behind)
        for _ in range(taken):
            stored.append(self._convert(self._pending.popleft()))
            yielder.tick()
        self.stats.rows_converted += taken
        self.stats.last_convert_ms = (time.perf_counter() - started) * 1e3

        spill_waiting = self._spill_may_exist()
        if not stored and not spill_waiting:
            return
        # While unhealthy a single attempt per cycle is enough: traffic is
        # already handled as failed and the rows go to the spill file at once.
        retry = self._lock_retry_seconds if self._healthy else 0.0
        if self._store.write(stored, include_spill=spill_waiting, retry_seconds=retry):
            if not self._healthy:
                log.warning("audit database %s is writable again", self.path)
            self._healthy = True
            self._spilled_outstanding = 0
            self.last_error = None
            return
        self.last_error = self._store.last_error
        if self._healthy:
            log.error("audit database %s cannot be written: %s", self.path, self.last_error)
        self._healthy = False
        if stored:
            self._spill_or_hold(stored)

    def _convert(self, row: dict[str, Any]) -> StoredRow:
        try:
            return to_stored_row(row, self._rules)
        except Exception as exc:
            # Keep the event, never its (possibly secret) content.
            log.exception("audit row could not be converted")
            return to_stored_row(
                {
                    "ts": row.get("ts"),
                    "decision_id": row.get("decision_id") or new_decision_id(),
                    "decision": row.get("decision"),
                    "error": f"audit: row could not be converted: {type(exc).__name__}",
                },
                self._rules,
            )

    def _spill_may_exist(self) -> bool:
        # Stat the spill file when we spilled ourselves, and every few seconds
        # for spills left by other processes sharing the database.
        now = time.monotonic()
        if self._spilled_outstanding or not self._healthy or now >= self._next_spill_check:
            self._next_spill_check = now + _SPILL_RECHECK_SECONDS
            return self._spill.exists()
        return False

    def _spill_or_hold(self, stored: list[StoredRow]) -> None:
        try:
            self._spill.append(b"".join(map(to_spill_line, stored)))
        except OSError as exc:
            self.last_error = f"{self.last_error}; spill file {self.spill_path}: {exc}"
            log.error("audit spill file %s cannot be written either: %s", self.spill_path, exc)
            self._held = stored
            return
        self._spilled_outstanding += len(stored)
        self.stats.rows_spilled += len(stored)

    def _check_overflow(self) -> None:
        backlog = len(self._pending) + self._held_count
        if backlog >= self._max_pending and not self._overflow_reported:
            self._overflow_reported = True
            sys.stderr.write(
                f"mcpfw: ERROR: audit log {self.path} cannot store rows and {backlog} are held in memory "
                f"(max_pending={self._max_pending}); traffic is now refused. Last error: {self.last_error}\n"
            )
            sys.stderr.flush()
        elif backlog < self._max_pending // 2:
            self._overflow_reported = False

    def _dump_held_to_stderr(self) -> None:
        # Last resort at close: neither DuckDB nor the spill file took these rows.
        sys.stderr.write(
            f"mcpfw: ERROR: {len(self._held)} audit rows could not be stored ({self.last_error}); "
            "they follow as JSON lines (secrets redacted):\n"
        )
        for stored in self._held:
            sys.stderr.write(to_spill_line(stored).decode("utf-8", "replace"))
        sys.stderr.flush()


def _lower_thread_priority(step: int = 10) -> None:
    """Make the calling thread (the writer) yield the CPU to the relay threads.

    Linux schedules threads on their own nice values: where the writer competes for a
    core with the relay or the MCP server, the scheduler runs them first, and the
    writer still gets every idle cycle. Elsewhere (or when refused) this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
