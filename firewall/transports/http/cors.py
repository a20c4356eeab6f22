"""The server's CORS answer, repeated on the firewall's own replies.

A browser lets a page read a cross-origin answer only if it carries
``Access-Control-Allow-Origin``. A browser client that reads the server's answers would get
a network error, not the JSON-RPC error, from a reply the firewall writes itself (a denial, an
upstream failure). So such a reply carries the CORS fields the server sent with its last
answer to the same origin, or to any origin with ``*``: nothing the server did not grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

_MAX_GRANTS = 1024


class _Headers(Protocol):
    def get(self, name: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Grant:
    allow_origin: str
    credentials: bool
    expose: str | None


class CorsMirror:
    """What each upstream granted to which origin, learnt from its answers."""

    def __init__(self) -> None:
        self._grants: dict[tuple[str, str], _Grant] = {}  # (route name, origin or "*")

    def learn(self, route: str, origin: str, headers: _Headers) -> None:
        """The upstream answered a request that came with ``Origin: origin``."""
        allow = (headers.get("access-control-allow-origin") or "").strip()
        if not allow:
            # Not granted (any more): neither to this origin nor to all.
            self._grants.pop((route, origin), None)
            self._grants.pop((route, "*"), None)
            return
        if allow != "*" and allow != origin:
            return  # granted to another origin than the one that asked: nothing to learn
        key = (route, allow)
        self._grants.pop(key, None)
        if len(self._grants) >= _MAX_GRANTS:
            del self._grants[next(iter(self._grants))]  # the longest unseen
        credentials = (headers.get("access-control-allow-credentials") or "").strip().lower() == "true"
        self._grants[key] = _Grant(allow, credentials, headers.get("access-control-expose-headers"))

    def headers_for(self, route: str, origin: str) -> dict[str, str]:
        """The CORS fields for the firewall's reply to a request from ``origin`` (none if the
        server granted it nothing)."""
        grant = self._grants.get((route, origin)) or self._grants.get((route, "*"))
        if grant is None:
            return {}
        fields = {"access-control-allow-origin": grant.allow_origin}
        if grant.allow_origin != "*":
            fields["vary"] = "Origin"
            if grant.credentials:
                fields["access-control-allow-credentials"] = "true"
        if grant.expose:
            fields["access-control-expose-headers"] = grant.expose
        return fields
