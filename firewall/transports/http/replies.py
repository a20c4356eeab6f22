"""HTTP responses the firewall writes itself: JSON-RPC errors in the framing the client expects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ... import errors
from ...jsonrpc import encode, error_response
from .sse import format_event

HEADER_MISMATCH = -32020  # MCP 2026-07-28: HTTP headers disagree with the body

# A policy denial is a normal JSON-RPC answer to a valid request (200), as a server's own
# error would be; malformed input is the client's fault (4xx); trouble upstream is 5xx.
_STATUS = {
    errors.POLICY_DENIED: 200,
    errors.POLICY_ERROR: 200,
    errors.RATE_LIMITED: 429,
    errors.PARSE_ERROR: 400,
    errors.INVALID_REQUEST: 400,
    HEADER_MISMATCH: 400,
    errors.MESSAGE_TOO_LARGE: 413,
    errors.AUDIT_UNAVAILABLE: 503,
    errors.UPSTREAM_UNAVAILABLE: 502,
    errors.AUTH_FAILED: 401,
    errors.SESSION_NOT_FOUND: 404,
}


@dataclass(slots=True)
class Reply:
    """A complete HTTP response produced by the firewall."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def status_for(code: int | None) -> int:
    return _STATUS.get(code, 200) if code is not None else 200


def wants_sse_only(accept: str | None) -> bool:
    """True when the client accepts an event stream but not JSON."""
    if not accept:
        return False
    accept = accept.lower()
    return "text/event-stream" in accept and "application/json" not in accept and "*/*" not in accept


def jsonrpc_reply(body: bytes, code: int | None, *, sse: bool) -> Reply:
    """Answer with JSON-RPC message(s) ``body``, as JSON or as one SSE event."""
    status = status_for(code)
    if sse and status == 200:
        return Reply(200, format_event(body), {"content-type": "text/event-stream", "cache-control": "no-cache"})
    return Reply(status, body, {"content-type": "application/json"})


def error_reply(msg_id: Any, code: int, message: str, data: dict[str, Any] | None, *, status: int | None = None, sse: bool = False) -> Reply:
    body = encode(error_response(msg_id, code, message, {"firewall": "mcpfw", **(data or {})}))
    reply = jsonrpc_reply(body, code, sse=sse)
    if status is not None:
        reply.status = status
    return reply


def accepted() -> Reply:
    """What a server answers to notifications and responses it took."""
    return Reply(202)


def plain(status: int, text: str) -> Reply:
    return Reply(status, text.encode("utf-8"), {"content-type": "text/plain; charset=utf-8"})
