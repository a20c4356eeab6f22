"""MCP tasks (SEP-1686): which request created each task, so that the result fetched later
with ``tasks/result`` is judged as that request's answer. A tool result is a tool result
whichever way it arrives."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import orjson

from .session import C2S, OTHER_DIRECTION, PendingRequest, Session

__all__ = ["TaskTracker"]

_OTHER = OTHER_DIRECTION
_MAX_TASKS = 10_000


class TaskTracker:
    """Remembers task origins and tells what a ``tasks/result`` answer is to be judged as.

    Tasks outlive a session (a stateless HTTP exchange is a session of its own, and a
    client may fetch a result on another connection), so origins are kept per firewall,
    keyed by server, by whoever created the task (tenant, subject) and by the side that
    runs it; a task id alone names nothing another caller can borrow.
    """

    def __init__(self, capacity: int = _MAX_TASKS) -> None:
        self._origins: OrderedDict[tuple[Any, ...], PendingRequest] = OrderedDict()
        self._owners: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # (server, side, id) -> owner
        self._capacity = capacity
        self._lock = threading.Lock()

    def foreign(self, method: str, params: Any, direction: str, session: Session, identity: dict[str, Any] | None) -> bool:
        """Whether a ``tasks/get|result|cancel`` request names a task that another caller
        created (through this firewall): servers that keep tasks outside sessions would
        hand it over."""
        if method not in _BY_ID or not isinstance(params, dict) or not _usable(params.get("taskId")):
            return False
        with self._lock:
            owner = self._owners.get((session.server.name, _OTHER[direction], params["taskId"]), _UNSEEN)
        return owner is not _UNSEEN and owner != _owner(identity)

    def foreign_entries(
        self, result: Any, direction: str, session: Session, identity: dict[str, Any] | None
    ) -> list[str]:
        """Pointers of the entries of a ``tasks/list`` answer that other callers created."""
        tasks = result.get("tasks") if isinstance(result, dict) else None
        if not isinstance(tasks, list):
            return []
        mine = _owner(identity)
        found: list[str] = []
        with self._lock:
            for i, task in enumerate(tasks):
                task_id = task.get("taskId") if isinstance(task, dict) else None
                if _usable(task_id):
                    owner = self._owners.get((session.server.name, direction, task_id), _UNSEEN)
                    if owner is not _UNSEEN and owner != mine:
                        found.append(f"/result/tasks/{i}")
        return found

    def note(
        self, pending: PendingRequest, body: dict[str, Any], direction: str, session: Session,
        identity: dict[str, Any] | None,
    ) -> None:
        """A task-augmented request answered with a CreateTaskResult: remember what it was."""
        if not isinstance(pending.params, dict) or "task" not in pending.params:
            return
        result = body.get("result")
        task = result.get("task") if isinstance(result, dict) else None
        task_id = task.get("taskId") if isinstance(task, dict) else None
        if _usable(task_id):
            key = _key(task_id, direction, session, identity)
            where = (session.server.name, direction, task_id)
            with self._lock:
                self._origins[key] = PendingRequest(pending.method, pending.params, pending.tool, 0.0)
                self._origins.move_to_end(key)
                self._owners[where] = _owner(identity)
                self._owners.move_to_end(where)
                if len(self._origins) > self._capacity:
                    self._origins.popitem(last=False)
                if len(self._owners) > self._capacity:
                    self._owners.popitem(last=False)

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
            with self._lock:
                origin = self._origins.get(_key(task_id, _OTHER[direction], session, identity))
            if origin is not None:
                return PendingRequest(origin.method, origin.params, origin.tool, now, task=shown)
        if direction == C2S:  # servers run tasks for tools/call alone
            return PendingRequest("tools/call", None, None, now, task=shown)
        return PendingRequest(method, params, tool, now, task=shown)


_BY_ID = frozenset({"tasks/get", "tasks/result", "tasks/cancel"})
_UNSEEN = object()


def _owner(identity: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return (identity.get("tenant"), identity.get("subject")) if identity else None


def _key(task_id: Any, answered_in: str, session: Session, identity: dict[str, Any] | None) -> tuple[Any, ...]:
    return (session.server.name, _owner(identity), answered_in, task_id)


def _usable(task_id: Any) -> bool:
    return isinstance(task_id, str) or type(task_id) is int
