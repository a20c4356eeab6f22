"""Which upstream MCP server a request is for, and the path to ask it for.

A route maps the listener's paths under ``path_prefix`` (optionally only for one Host) to
the origin of an upstream; the prefix is removed on the way up and added back to paths the
upstream hands out (the legacy SSE endpoint, OAuth metadata). With no prefix the client
uses exactly the paths it would use on the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ...config import UpstreamConfig
from ...identity.authenticator import expand_env

PRM_PATH = "/.well-known/oauth-protected-resource"
_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


@dataclass(frozen=True, slots=True)
class Route:
    """One upstream server and the requests that go to it."""

    name: str
    url: str  # as configured: the server's MCP endpoint
    scheme: str  # http or https
    netloc: str  # host[:port] of the upstream
    endpoint_path: str  # the MCP endpoint's path on the upstream
    prefix: str = ""
    host: str | None = None
    tenants: frozenset[str] = frozenset()  # empty: every tenant
    # The firewall's own credentials for the upstream: (name, value) pairs, and per tenant.
    headers: tuple[tuple[str, str], ...] = ()
    tenant_headers: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def public_path(self, upstream_path: str) -> str:
        """The listener path that reaches ``upstream_path`` on this route."""
        return self.prefix + upstream_path

    def admits(self, tenant: str | None) -> bool:
        """May a caller of ``tenant`` use this upstream?"""
        return not self.tenants or tenant in self.tenants

    def upstream_headers(self, tenant: str | None) -> dict[str, str]:
        """Headers the firewall sends upstream for a caller of ``tenant``."""
        headers = dict(self.headers)
        for name, pairs in self.tenant_headers:
            if name == tenant:
                headers.update(pairs)
        return headers

    def covers(self, path: str) -> bool:
        prefix = self.prefix
        return not prefix or path == prefix or path.startswith((prefix + "/", prefix + "?"))


def route_from_config(upstream: UpstreamConfig) -> Route:
    parts = urlsplit(upstream.url)
    scheme = _HTTP_SCHEME[parts.scheme]
    default_port = 443 if scheme == "https" else 80
    hostname = parts.hostname or ""
    host_for_url = f"[{hostname}]" if ":" in hostname else hostname
    port = parts.port or default_port
    netloc = host_for_url if port == default_port else f"{host_for_url}:{port}"
    name = upstream.name or (hostname if port == default_port else f"{hostname}:{port}")
    where = f"proxy.upstreams[{name}]"
    headers = tuple((k.lower(), expand_env(v, where=where)) for k, v in upstream.headers.items())
    tenant_headers = tuple(
        (tenant, tuple((k.lower(), expand_env(v, where=f"{where}.tenant_headers.{tenant}")) for k, v in pairs.items()))
        for tenant, pairs in upstream.tenant_headers.items()
    )
    return Route(
        name=name,
        url=upstream.url,
        scheme=scheme,
        netloc=netloc,
        endpoint_path=parts.path or "/",
        prefix=upstream.path_prefix,
        host=upstream.host.lower() if upstream.host else None,
        tenants=frozenset(upstream.tenants),
        headers=headers,
        tenant_headers=tenant_headers,
    )


def _rooted(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def host_without_port(host: str | None) -> str:
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Router:
    """Chooses the route of a request: Host-specific routes first, then the longest prefix."""

    def __init__(self, routes: list[Route]) -> None:
        if not routes:
            raise ValueError("no upstream configured")
        self.routes = sorted(routes, key=lambda r: (r.host is None, -len(r.prefix)))

    def match(self, host: str | None, path: str) -> tuple[Route, str] | None:
        """The route for a request to ``path`` (with query) and the path+query to send upstream."""
        name = host_without_port(host)
        if path.startswith(PRM_PATH) and path[len(PRM_PATH):len(PRM_PATH) + 1] in ("", "/", "?"):
            # RFC 9728 puts the resource's path after the well-known prefix.
            rest = path[len(PRM_PATH):]
            route = self._find(name, rest or "/")
            if route is None:
                return None
            return route, PRM_PATH + _rooted(rest[len(route.prefix):]).rstrip("/")
        route = self._find(name, path)
        if route is None:
            return None
        return route, _rooted(path[len(route.prefix):])

    def _find(self, host: str, path: str) -> Route | None:
        for route in self.routes:
            if route.host is not None and route.host != host:
                continue
            if route.covers(path):
                return route
        return None
