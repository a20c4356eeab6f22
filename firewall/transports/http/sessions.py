"""The firewall's :class:`~firewall.session.Session` for each MCP session seen over HTTP.

Sessions of the 2025-11-25 era are keyed by the upstream route and the ``Mcp-Session-Id``
the server handed out; legacy HTTP+SSE sessions by the message endpoint the server
announced. Requests without either (the stateless 2026-07-28 era, and ``initialize``
itself) get a session of their own: the HTTP exchange is what ties a request to its
response. The table is bounded and forgets the least recently used session first.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson

from ...session import ServerIdentity, Session, era_of
from .routes import Route


def id_key(msg_id: Any) -> str:
    """A JSON-RPC id as the key of per-id tables (its JSON text: 7 and "7" stay apart)."""
    return orjson.dumps(msg_id).decode()


@dataclass(slots=True)
class Channel:
    """How the firewall reaches a session's server out of band.

    Used to hand the server an error for a request of its own that the policy denied
    (sampling, elicitation), and in legacy SSE sessions to answer a denied client request
    on the event stream (see :mod:`.exchange`).
    """

    session: Session
    route: Route
    post_path: str  # upstream path+query the client POSTs messages to
    headers: dict[str, str] = field(default_factory=dict)  # auth and session headers to send along
    legacy: bool = False
    # (tenant, subject) of the caller that opened the session: only it may use the session
    principal: tuple[str | None, str | None] | None = None
    # legacy only: JSON text of a request id -> the error that replaces the server's answer
    substitutes: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Known:
    """What exchanges without a session learned about a server (for the stateless era)."""

    info: dict[str, Any] | None = None
    capabilities: dict[str, Any] | None = None


class HttpSessions:
    """Sessions by (route, key), least recently used first out."""

    def __init__(self, *, max_sessions: int, roots: dict[str, list[str]] | None = None) -> None:
        self._max = max_sessions
        self._roots = roots or {}
        self._channels: OrderedDict[tuple[str, str], Channel] = OrderedDict()
        self._known: dict[str, _Known] = {}
        self._servers: dict[str, ServerIdentity] = {}  # read-only once made: shared by the route's sessions

    def __len__(self) -> int:
        return len(self._channels)

    def new_session(self, route: Route, transport: str, version: str | None = None) -> Session:
        """A fresh session, seeded with what is already known about the server."""
        server = self._servers.get(route.name)
        if server is None:
            server = ServerIdentity(name=route.name, url=route.url, roots=list(self._roots.get(route.name, ())))
            self._servers[route.name] = server
        session = Session(
            server,
            transport=transport,
            cwd="/",  # the server runs elsewhere: relative paths have no meaning here
            resolve_symlinks=False,
            # Most HTTP requests get a session of their own: an id without uuid4's system call.
            session_id=f"{random.getrandbits(128):032x}",
        )
        if version:
            session.protocol_version = version
            session.era = era_of(version)
        known = self._known.get(route.name)
        if known is not None:
            session.server_info = known.info
            session.server_capabilities = known.capabilities
        return session

    def get(self, route: Route, key: str) -> Channel | None:
        channel = self._channels.get((route.name, key))
        if channel is not None:
            self._channels.move_to_end((route.name, key))
        return channel

    def add(self, key: str, channel: Channel) -> None:
        self._channels[(channel.route.name, key)] = channel
        self._channels.move_to_end((channel.route.name, key))
        while len(self._channels) > self._max:
            self._channels.popitem(last=False)

    def drop(self, route: Route, key: str) -> None:
        self._channels.pop((route.name, key), None)

    def learn_server(self, route: Route, session: Session) -> None:
        """Keep the server's self-description for later sessionless exchanges."""
        if session.server_info is not None or session.server_capabilities is not None:
            known = self._known.setdefault(route.name, _Known())
            known.info = session.server_info or known.info
            known.capabilities = session.server_capabilities or known.capabilities


def session_key(mcp_session_id: str) -> str:
    return "mcp:" + mcp_session_id


def legacy_keys(post_path: str) -> list[str]:
    """Keys naming a legacy session: its message path with each query parameter, decoded as
    servers decode them. A request names the session by any of them, however the client
    orders its parameters or adds others (servers read just the one they handed out)."""
    path, _, query = post_path.partition("?")
    path = path.lower().rstrip("/")  # servers route leniently (Express: any case, a trailing slash)
    return [f"legacy:{path}?{quote(name)}={quote(value)}" for name, value in parse_qsl(query, keep_blank_values=True)]


