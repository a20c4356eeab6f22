"""OAuth for upstreams behind a reverse proxy: make the resource name the firewall's URL.

An MCP client checks that the Protected Resource Metadata (RFC 9728) names the URL it
connected to. Behind the firewall that is the firewall's public URL, not the upstream's,
so the metadata's ``resource`` and the ``resource_metadata`` URL of a ``WWW-Authenticate:
Bearer`` challenge are rewritten from the upstream's origin to the public one (paths get
the route's prefix). URLs on other origins are left alone.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import orjson

from .routes import PRM_PATH, Route

_RESOURCE_METADATA = re.compile(r'(resource_metadata\s*=\s*)(?:"([^"]*)"|([^\s,]+))', re.IGNORECASE)


def _same_origin(url: str, route: Route) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bad port or bracket from the upstream: not ours to rewrite
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    default = 443 if parts.scheme == "https" else 80
    netloc = parts.netloc.lower()
    if port == default:
        netloc = netloc.rsplit(":", 1)[0]
    return parts.scheme == route.scheme and netloc == route.netloc.lower()


def public_resource(url: str, route: Route, public_origin: str) -> str:
    """The URL clients use through the firewall for ``url`` on the upstream."""
    if not _same_origin(url, route):
        return url
    parts = urlsplit(url)
    path = parts.path or "/"
    if path.startswith(PRM_PATH):
        path = PRM_PATH + route.public_path(path[len(PRM_PATH):])
    else:
        path = route.public_path(path)
    query = f"?{parts.query}" if parts.query else ""
    return public_origin.rstrip("/") + path + query


def rewrite_www_authenticate(value: str, route: Route, public_origin: str) -> str:
    """``WWW-Authenticate`` with its ``resource_metadata`` URL pointing at the firewall."""

    def swap(match: re.Match[str]) -> str:
        url = match.group(2) if match.group(2) is not None else match.group(3)
        return f'{match.group(1)}"{public_resource(url, route, public_origin)}"'

    return _RESOURCE_METADATA.sub(swap, value)


def rewrite_metadata(body: bytes, route: Route, public_origin: str) -> bytes | None:
    """The PRM document with ``resource`` naming the firewall; None when nothing changes."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("resource"), str):
        return None
    resource = public_resource(doc["resource"], route, public_origin)
    if resource == doc["resource"]:
        return None
    doc["resource"] = resource
    return orjson.dumps(doc)
