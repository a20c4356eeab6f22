"""Assembling the HTTP side of the firewall from the configuration, for every engine."""

from __future__ import annotations

from ...config import Config
from ...identity.authenticator import build_authenticator
from ...pipeline import Inspector
from ...runtime import Firewall
from .exchange import HttpInspection, ServerPoster
from .mcp_headers import HttpFindings
from .routes import Router, route_from_config
from .sessions import HttpSessions


def http_inspector(firewall: Firewall) -> Inspector:
    """The firewall's inspector, plus the enricher that shows the policy the MCP HTTP headers.

    Everything else is ``firewall.inspector``'s: engine, audit log, enrichers, approvals and
    settings such as ``audit.record_inputs``.
    """
    return firewall.inspector.with_enrichers(HttpFindings())


def build_router(config: Config) -> Router:
    return Router([route_from_config(upstream) for upstream in config.proxy.upstreams])


def build_inspection(
    firewall: Firewall, *, reverse: bool, poster: ServerPoster | None, public_url: str | None = None
) -> HttpInspection:
    config = firewall.config
    sessions = HttpSessions(
        max_sessions=config.proxy.max_sessions,
        roots={name: list(server.roots) for name, server in config.servers.items()},
    )
    return HttpInspection(
        http_inspector(firewall),
        sessions,
        max_message_bytes=config.limits.max_message_bytes,
        reverse=reverse,
        public_url=public_url or config.proxy.public_url,
        non_mcp=config.proxy.non_mcp,
        poster=poster,
        authenticator=build_authenticator(config),
    )
