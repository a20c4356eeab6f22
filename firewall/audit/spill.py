"""The spill file: audit rows that could not reach DuckDB, as JSON lines.

Several firewall processes may share one spill file (it sits next to the
shared audit database), so appends and the read-then-delete of an ingest are
serialised with an exclusive ``flock`` on the file. An appender that obtains
the lock on a file an ingester has just unlinked notices (``st_nlink == 0``)
and reopens, so no row is appended to a deleted file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from firewall.audit.rows import StoredRow, from_spill_line

try:
    import fcntl
except ImportError:  # Windows: no cross-process locking of the spill file
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("mcpfw.audit")


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    # Makes a newly created file's directory entry durable; best effort.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class SpillClaim:
    """Rows read from the spill file under its lock; see :meth:`SpillFile.claim`."""

    rows: list[StoredRow]
    bad_lines: list[bytes] = field(default_factory=list)
    consumed: bool = False


class SpillFile:
    """Append-only JSON-lines file of stored rows, shared between processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bad_path = path.with_name(path.name + ".bad")

    def exists(self) -> bool:
        """True when the file is present (it is removed once ingested)."""
        return self.path.is_file()

    def append(self, payload: bytes) -> None:
        """Append whole lines durably (write + fsync); raises ``OSError``.

        On failure the file is truncated back to its previous size so no
        partial line is left behind.
        """
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        while True:
            fd = os.open(self.path, flags, 0o600)
            try:
                _lock(fd)
                stat = os.fstat(fd)
                if stat.st_nlink == 0:
                    continue  # ingested and unlinked while we waited: reopen
                data = payload
                if stat.st_size and self._last_byte(fd, stat.st_size) != b"\n":
                    data = b"\n" + payload  # a crashed writer left a partial line
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, stat.st_size)
                    raise
                if stat.st_size == 0:
                    _fsync_dir(self.path)
                return
            finally:
                os.close(fd)

    @staticmethod
    def _last_byte(fd: int, size: int) -> bytes:
        os.lseek(fd, size - 1, os.SEEK_SET)
        return os.read(fd, 1)

    @contextlib.contextmanager
    def claim(self) -> Iterator[SpillClaim | None]:
        """Lock the file and yield its rows (None when there is no file).

        Set ``consumed`` on the claim once the rows are committed elsewhere:
        the file is then deleted before the lock is released. Lines that do not
        parse are moved to ``<spill>.bad`` and reported, never dropped.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.error("audit spill file %s cannot be opened: %s", self.path, exc)
            yield None
            return
        try:
            claim: SpillClaim | None = None
            try:
                _lock(fd)
                if os.fstat(fd).st_nlink:  # else another process ingested it meanwhile
                    claim = self._parse(self._read_all(fd))
            except OSError as exc:
                log.error("audit spill file %s cannot be read: %s", self.path, exc)
            yield claim
            if claim is not None and claim.consumed:
                self._remove(claim)
        finally:
            os.close(fd)

    def _remove(self, claim: SpillClaim) -> None:
        # The rows are committed; failing here only means a later, deduplicated re-ingest.
        try:
            if claim.bad_lines:
                self._keep_bad(claim.bad_lines)
            os.unlink(self.path)
        except OSError as exc:
            log.error("audit spill file %s could not be removed after ingest: %s", self.path, exc)

    @staticmethod
    def _read_all(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _parse(data: bytes) -> SpillClaim:
        claim = SpillClaim(rows=[])
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                claim.rows.append(from_spill_line(line))
            except ValueError:  # orjson.JSONDecodeError is a ValueError
                claim.bad_lines.append(line)
        return claim

    def _keep_bad(self, lines: list[bytes]) -> None:
        with open(self.bad_path, "ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        log.error(
            "audit spill file %s had %d unreadable line(s); kept in %s",
            self.path,
            len(lines),
            self.bad_path,
        )
