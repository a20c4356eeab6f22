"""MCP tasks (SEP-1686): which request created each task, and who created it.

The result fetched later with ``tasks/result`` is judged as the answer of the request that
created the task (a tool result is a tool result whichever way it arrives), and only the
caller that created a task may read, fetch or cancel it, or see it listed. An authenticated
caller may name only tasks whose creator is known (as a session unknown to the firewall is
refused), so a restart does not open other tenants' tasks.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from .session import C2S, OTHER_DIRECTION, PendingRequest, Session

__all__ = ["TaskTracker"]

_OTHER = OTHER_DIRECTION
_MAX_TASKS = 10_000
_BY_ID = frozenset({"tasks/get", "tasks/result", "tasks/cancel"})
_UNSEEN = object()


class _Record:
    """What the firewall knows of one task: who created it, and with which request."""

    __slots__ = ("owner", "origin")

    def __init__(self, owner: tuple[Any, Any] | None, origin: PendingRequest) -> None:
        self.owner = owner
        self.origin = origin


class TaskTracker:
    """Task records by server, by the side that runs the task and by task id.

    Tasks outlive a session (a stateless HTTP exchange is a session of its own, and a
    client may fetch a result on another connection), so records are kept per firewall
    process; :meth:`share` makes the lean listener's worker processes share them through
    files (written when a task is created, read when another worker is asked about it).
    A shared record keeps the creating request's method and tool name, not its arguments.
    """

    def __init__(self, capacity: int = _MAX_TASKS) -> None:
        self._records: OrderedDict[tuple[Any, ...], _Record] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._shared: Path | None = None

    def share(self, directory: Path) -> None:
        """Keep records in ``directory`` too, for the other processes serving the same
        servers (the lean listener's workers)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._shared = directory

    # -- learning ----------------------------------------------------------------------

    def note(
        self, pending: PendingRequest, body: dict[str, Any], direction: str, session: Session,
        identity: dict[str, Any] | None,
    ) -> None:
        """A task-augmented request answered with a CreateTaskResult: remember it."""
        if not isinstance(pending.params, dict) or "task" not in pending.params:
            return
        result = body.get("result")
        task = result.get("task") if isinstance(result, dict) else None
        task_id = task.get("taskId") if isinstance(task, dict) else None
        if not _usable(task_id):
            return
        key = (session.server.name, direction, task_id)
        record = _Record(_owner(identity), PendingRequest(pending.method, pending.params, pending.tool, 0.0))
        with self._lock:
            self._records[key] = record
            self._records.move_to_end(key)
            if len(self._records) > self._capacity:
                self._records.popitem(last=False)
        if self._shared is not None:
            self._write(key, record)

    # -- judging -----------------------------------------------------------------------

    def refusal(
        self, method: str, params: Any, direction: str, session: Session, identity: dict[str, Any] | None
    ) -> str | None:
        """Why a ``tasks/get|result|cancel`` request may not name its task (servers that keep
        tasks outside sessions would hand it over): ``"another"`` caller created it, or the
        caller is authenticated and the task is ``"unknown"`` here (created before a restart,
        through another firewall, or forgotten), so its creator cannot be checked. None: it may."""
        if method not in _BY_ID or not isinstance(params, dict) or not _usable(params.get("taskId")):
            return None
        record = self._find((session.server.name, _OTHER[direction], params["taskId"]))
        mine = _owner(identity)
        if record is None:
            return "unknown" if mine is not None else None
        return "another" if record.owner != mine else None

    def foreign_entries(
        self, result: Any, direction: str, session: Session, identity: dict[str, Any] | None
    ) -> list[str]:
        """Pointers of the entries of a ``tasks/list`` answer that other callers created (for
        an authenticated caller, also those of unknown creator)."""
        tasks = result.get("tasks") if isinstance(result, dict) else None
        if not isinstance(tasks, list):
            return []
        mine = _owner(identity)
        found: list[str] = []
        for i, task in enumerate(tasks):
            task_id = task.get("taskId") if isinstance(task, dict) else None
            if _usable(task_id):
                record = self._find((session.server.name, direction, task_id))
                if (record.owner != mine) if record is not None else mine is not None:
                    found.append(f"/result/tasks/{i}")
        return found

    def pending_for(
        self, method: str, params: Any, tool: dict[str, Any] | None, direction: str, session: Session,
        identity: dict[str, Any] | None,
    ) -> PendingRequest:
        """What a forwarded request's answer will be judged as. A ``tasks/result`` answer is
        the answer of the request that created the task (a tool result, a sampling result);
        when that request was not seen here (a restart, another firewall), a server's task
        result is still judged as a tool result, of an unknown tool."""
        now = time.monotonic()
        if method != "tasks/result":
            return PendingRequest(method, params, tool, now)
        task_id = params.get("taskId") if isinstance(params, dict) else None
        # A task id of another type than the string the protocol has (a number, none at
        # all) must not make the result an ordinary tasks/result, judged as no tool result.
        shown = task_id if isinstance(task_id, str) else orjson.dumps(task_id, default=str).decode()
        if _usable(task_id):
            record = self._find((session.server.name, _OTHER[direction], task_id))
            if record is not None and record.owner == _owner(identity):
                origin = record.origin
                return PendingRequest(origin.method, origin.params, origin.tool, now, task=shown)
        if direction == C2S:  # servers run tasks for tools/call alone
            return PendingRequest("tools/call", None, None, now, task=shown)
        return PendingRequest(method, params, tool, now, task=shown)

    # -- records -----------------------------------------------------------------------

    def _find(self, key: tuple[Any, ...]) -> _Record | None:
        with self._lock:
            record = self._records.get(key)
        if record is None and self._shared is not None:
            record = self._read(key)
        return record

    def _path(self, key: tuple[Any, ...]) -> Path:
        assert self._shared is not None
        return self._shared / (hashlib.sha256(orjson.dumps(list(key))).hexdigest() + ".json")

    def _write(self, key: tuple[Any, ...], record: _Record) -> None:
        origin = record.origin
        document = {"owner": record.owner, "method": origin.method,
                    "tool": origin.tool.get("name") if origin.tool else None}
        path = self._path(key)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            temporary.write_bytes(orjson.dumps(document))
            os.replace(temporary, path)
        except OSError:
            pass  # the other workers then treat the task as unseen, as after a restart

    def _read(self, key: tuple[Any, ...]) -> _Record | None:
        try:
            document = orjson.loads(self._path(key).read_bytes())
            owner = tuple(document["owner"]) if document["owner"] is not None else None
            tool = {"name": document["tool"], "arguments": {}} if document["tool"] else None
            return _Record(owner, PendingRequest(document["method"], None, tool, 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _owner(identity: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return (identity.get("tenant"), identity.get("subject")) if identity else None


def _usable(task_id: Any) -> bool:
    return isinstance(task_id, str) or type(task_id) is int
