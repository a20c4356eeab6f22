"""What the firewall learns about one client-server conversation as messages pass."""

from __future__ import annotations

import contextlib
import posixpath
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .jsonrpc import Kind, Message

C2S = "client_to_server"
S2C = "server_to_client"
OTHER_DIRECTION = {C2S: S2C, S2C: C2S}
SESSIONS_ERA = "2025-11-25"
STATELESS_ERA = "2026-07-28"
_META_VERSION = "io.modelcontextprotocol/protocolVersion"
_META_CLIENT = "io.modelcontextprotocol/clientInfo"
_META_CAPS = "io.modelcontextprotocol/clientCapabilities"
_META_SERVER = "io.modelcontextprotocol/serverInfo"
_MAX_PENDING = 10_000
_MAX_ANSWERED = 256
_MAX_CLIENT_ROOTS = 64
_MAX_BASES = 128


@dataclass(slots=True)
class PendingRequest:
    """A forwarded request awaiting its response; responses are judged in its light."""

    method: str
    params: Any
    tool: dict[str, Any] | None
    sent_at: float
    task: str | None = None  # a tasks/result request: the task whose result it fetches


@dataclass(slots=True)
class ServerIdentity:
    """Which upstream server this session talks to."""

    name: str
    command: list[str] | None = None
    url: str | None = None
    roots: list[str] = field(default_factory=list)


def era_of(version: str | None) -> str:
    if not version:
        return "unknown"
    return STATELESS_ERA if version >= STATELESS_ERA else SESSIONS_ERA


class Session:
    """State of one conversation: protocol era, peers' info, requests in flight.

    Both relay directions update it, so mutations take a lock; reads of single
    attributes are atomic in CPython and need none.
    """

    def __init__(
        self,
        server: ServerIdentity,
        *,
        transport: str,
        cwd: str,
        resolve_symlinks: bool,
        session_id: str | None = None,
        path_bases: tuple[str, ...] = (),
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.server = server
        self.transport = transport
        self.cwd = cwd
        # Other directories the server may resolve a relative path against (its directory
        # arguments, the roots): a relative path is checked from each of them too.
        self.path_bases = tuple(b for b in dict.fromkeys(path_bases) if b != cwd)
        self.resolve_symlinks = resolve_symlinks
        self.protocol_version: str | None = None
        self.era = "unknown"
        self.client_info: dict[str, Any] | None = None
        self.client_capabilities: dict[str, Any] | None = None
        self.server_info: dict[str, Any] | None = None
        self.server_capabilities: dict[str, Any] | None = None
        # The caller's identity (policy input form), when the whole session has one: the stdio
        # shim's API key, or the HTTP caller that opened the session (it stays bound to it).
        self.identity: dict[str, Any] | None = None
        self._pending: dict[str, OrderedDict[Any, PendingRequest]] = {
            "client_to_server": OrderedDict(),
            "server_to_client": OrderedDict(),
        }
        # Requests already answered, so that a replayed answer (an SSE stream resumed with
        # Last-Event-ID) is judged as an answer to its request again, not as unsolicited.
        self._answered: dict[str, OrderedDict[Any, PendingRequest]] = {
            "client_to_server": OrderedDict(),
            "server_to_client": OrderedDict(),
        }
        self._lock = threading.Lock()

    @property
    def client_name(self) -> str | None:
        info = self.client_info
        return info.get("name") if isinstance(info, dict) else None

    def observe_request(self, direction: str, msg: Message) -> None:
        """Learn from a request or notification before it is judged."""
        if direction != "client_to_server":
            return
        params = msg.body.get("params")
        if not isinstance(params, dict):
            return
        method = msg.method
        if method == "initialize":
            self._set_version(params.get("protocolVersion"), SESSIONS_ERA)
            self._take(params, "clientInfo", "client_info")
            self._take(params, "capabilities", "client_capabilities")
            return
        meta = params.get("_meta")
        if isinstance(meta, dict) and _META_VERSION in meta:
            self._set_version(meta.get(_META_VERSION), None)
            # The first clientInfo names the client for the session: a later request must not
            # rename it (purposes, audit rows and tasks are bound to that name).
            if isinstance(meta.get(_META_CLIENT), dict) and self.client_info is None:
                self.client_info = meta[_META_CLIENT]
            if isinstance(meta.get(_META_CAPS), dict):
                self.client_capabilities = meta[_META_CAPS]
        elif method == "server/discover" and self.era == "unknown":
            self.era = STATELESS_ERA

    def observe_response(self, pending: PendingRequest | None, msg: Message) -> None:
        """Learn the server's identity from the answers to initialize and server/discover."""
        if pending is None or msg.kind is not Kind.RESPONSE:
            return
        result = msg.body.get("result")
        if not isinstance(result, dict):
            return
        if pending.method == "initialize":
            self._set_version(result.get("protocolVersion"), SESSIONS_ERA)
            self._take(result, "serverInfo", "server_info")
            self._take(result, "capabilities", "server_capabilities")
        elif pending.method == "roots/list":
            self._learn_roots(result.get("roots"))
        elif pending.method == "server/discover":
            versions = result.get("supportedVersions")
            if isinstance(result.get("protocolVersion"), str):
                self._set_version(result["protocolVersion"], STATELESS_ERA)
            elif isinstance(versions, list) and versions and all(isinstance(v, str) for v in versions):
                self._set_version(max(versions), STATELESS_ERA)
            self._take(result, "serverInfo", "server_info")
            self._take(result, "capabilities", "server_capabilities")
        meta = result.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get(_META_SERVER), dict):
            self.server_info = meta[_META_SERVER]

    def _learn_roots(self, roots: Any) -> None:
        """The client's roots (its answer to roots/list) become directories a server may read
        relative paths from: server-filesystem replaces its own directories with them."""
        if not isinstance(roots, list):
            return
        found: list[str] = []
        for root in roots[:_MAX_CLIENT_ROOTS]:
            uri = root.get("uri") if isinstance(root, dict) else None
            if isinstance(uri, str) and uri[:7].lower() == "file://":
                path = posixpath.normpath(unquote(urlsplit(uri).path) or "/")
                if path.startswith("/"):
                    found.append(path)
        with self._lock:
            bases = tuple(b for b in dict.fromkeys((*self.path_bases, *found)) if b != self.cwd)
            self.path_bases = bases[:_MAX_BASES]

    def _set_version(self, version: Any, era: str | None) -> None:
        if isinstance(version, str) and version:
            self.protocol_version = version
            self.era = era if era == SESSIONS_ERA and version < STATELESS_ERA else era_of(version)

    def _take(self, source: dict[str, Any], key: str, attr: str) -> None:
        value = source.get(key)
        if isinstance(value, dict):
            setattr(self, attr, value)

    def add_pending(self, direction: str, msg_id: Any, pending: PendingRequest) -> None:
        """Remember a request forwarded in ``direction`` until its response comes back."""
        table = self._pending[direction]
        with self._lock:
            table[(type(msg_id).__name__, msg_id)] = pending
            if len(table) > _MAX_PENDING:
                table.popitem(last=False)

    def has_pending(self, direction: str, msg_id: Any) -> bool:
        """Whether a request forwarded in ``direction`` with this id awaits its response."""
        with self._lock:
            return (type(msg_id).__name__, msg_id) in self._pending[direction]

    def pop_pending(self, request_direction: str, msg_id: Any) -> PendingRequest | None:
        """The request a response answers, removed from the table (None if unknown).

        The id must match exactly, or as the peers' SDKs match it: they take a string id
        that reads as a number ("2", " 2", "2.0", "0x2") for that number and a number for
        its text, so a server that re-types the id must not escape the checks an answer to
        that request gets (tool results, listings) while the client still accepts it. An
        answer repeated later (a replay) finds its request among the last ``_MAX_ANSWERED``
        answered ones.
        """
        table = self._pending[request_direction]
        answered = self._answered[request_direction]
        exact = (type(msg_id).__name__, msg_id)
        with self._lock:
            found = table.pop(exact, None)
            if found is not None:
                key = exact
            else:
                keys = _coerced_keys(msg_id)
                key = next((k for k in keys if k in table), None)
                if key is None:  # a replay, or unsolicited
                    return next((answered[k] for k in (exact, *keys) if k in answered), None)
                found = table.pop(key)
            # Kept slim: a replay is judged by the request's method and tool, and a session
            # must not hold on to the arguments of a thousand answered calls.
            answered[key] = PendingRequest(
                found.method, None, {"name": found.tool.get("name"), "arguments": {}} if found.tool else None, found.sent_at)
            if len(answered) > _MAX_ANSWERED:
                answered.popitem(last=False)
            return found

    def forget_pending(self, request_direction: str, msg_id: Any) -> None:
        with self._lock:
            self._pending[request_direction].pop((type(msg_id).__name__, msg_id), None)


def _coerced_keys(msg_id: Any) -> list[tuple[str, Any]]:
    """Pending-table keys another spelling of ``msg_id`` stands for: the number a string id
    reads as (JavaScript's ``Number()``, Python's ``int()``/``float()``), or a number's text."""
    if isinstance(msg_id, str):
        text = msg_id.strip()
        numbers: list[float | int] = []
        with contextlib.suppress(ValueError, OverflowError):
            numbers.append(int(text, 0))  # "2", "+2", "0x2", "0o2", "0b10"
        with contextlib.suppress(ValueError, OverflowError):
            value = float(text)  # "2.0", "2e0", "2_0"
            if value.is_integer():
                numbers.append(int(value))
        return [("int", n) for n in dict.fromkeys(numbers)]
    if isinstance(msg_id, int) and not isinstance(msg_id, bool):
        return [("str", str(msg_id))]
    return []


def now() -> float:
    return time.time()
