"""mitmproxy addons that put HTTP, SSE and WebSocket traffic through the pipeline.

Used for regular (forward) and transparent modes, where mitmproxy's CONNECT handling and
TLS interception (with its own CA) are needed, and for reverse mode on request. mitmproxy
is embedded through its Python API with only the addons a proxy needs: no flow storage,
no dumping, no console. Each addon has one concern:

* :class:`McpHttp` - requests and responses (JSON bodies, SSE streams block by block);
* :class:`McpWebSocket` - every WebSocket message, both ways;
* :class:`UpstreamFailures` - a failed upstream (refused, reset, timed out) leaves an audit
  record, and the client gets the JSON-RPC error the lean listener sends (-32056), not
  mitmproxy's HTML error page.

No addon hook can replace mitmproxy's error page, so :func:`install_error_replies` wraps its
HTTP/1 client-side ``send`` (one private method, of the mitmproxy version pinned in the
project): when the ``error`` hook left a reply for the client connection, that reply goes
out instead of the page. HTTP/2 clients (TLS with ALPN ``h2`` in regular mode) still get
mitmproxy's own error; the audit record is written either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ... import errors
from ...config import Config
from ...paths import state_dir
from ...runtime import build_firewall
from .content import is_json_media, may_be_json_text
from .exchange import Exchange, HttpInspection, Request
from .lean import connection_budget
from .mitm_limits import (
    BODY_LIMIT, ERROR_REPLIES, STREAM_ENDS, BodyLimit, ClientLimits, IdleTimeout, Limits, answer_within, install_body_limits,
    install_close_guard, install_request_limits, install_response_limits, register, unregister,
)
from .outbound import UpstreamPoster, client_session
from .replies import Reply
from .routes import Route, Router
from .runner import Listen, announce, install_stop_signals
from .server import MAX_HEAD_BYTES, closing_reply
from .service import build_inspection, build_router
from .websocket import WebSocketInspection
from .wire import HOP_BY_HOP, nominated_fields

log = logging.getLogger("mcpfw.http")
_KEY = "mcpfw"


class Headers:
    """:class:`~.exchange.HeaderView` over mitmproxy's headers."""

    __slots__ = ("_h",)

    def __init__(self, headers: Any) -> None:
        self._h = headers

    def get(self, name: str) -> str | None:
        return self._h.get(name)

    def getall(self, name: str) -> list[str]:
        return self._h.get_all(name)

    def names(self) -> Iterable[str]:
        return self._h.keys()


# Hop-by-hop fields but those mitmproxy needs to frame and upgrade the message itself.
_HOP_BY_HOP = tuple(sorted(n.decode() for n in HOP_BY_HOP - {b"connection", b"transfer-encoding", b"upgrade"}))


def _unsafe_fields(headers: Any) -> bool:
    return any(b"\r" in name or b"\n" in name or b"\0" in name or b"\r" in value or b"\n" in value or b"\0" in value
               for name, value in headers.fields)


def _drop_hop_by_hop(headers: Any) -> None:
    """Remove the fields that concern only this hop: the fixed list (mitmproxy frames the
    message itself) and those a Connection header names (RFC 9110 7.6.1)."""
    nominated = nominated_fields(value.encode("latin-1", "replace") for value in headers.get_all("connection"))
    for name in (*_HOP_BY_HOP, *(n.decode("latin-1") for n in nominated)):
        if name in headers:
            del headers[name]


def _make_response(reply: Reply) -> Any:
    from mitmproxy import http

    return http.Response.make(reply.status, reply.body, reply.headers)


_NO_ROUTE = Reply(404, b"mcpfw: no upstream is configured for this path\n")
# Fields that make a request MCP whatever its body (see HttpInspection._is_jsonrpc_post),
# or that must not reach a server unjudged (an upgrade).
_MCP_MARKS = ("mcp-session-id", "mcp-method", "mcp-protocol-version", "upgrade")


def _declared_length(headers: Any) -> int | None:
    """A message's Content-Length (None when chunked, absent or unreadable: mitmproxy
    refuses a request whose length it cannot read)."""
    if "transfer-encoding" in headers:
        return None
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _refuse_now(flow: Any, reply: Reply) -> None:
    """Answer with ``reply`` and close the connection, whatever of the message is unread: the
    flow is killed, and the HTTP/1 writer wrapped by :func:`install_error_replies` sends it."""
    ERROR_REPLIES[flow.client_conn.id] = closing_reply(reply)
    flow.kill()


class McpHttp:
    """Inspects every HTTP exchange: the request body, then a JSON body or each SSE event."""

    def __init__(self, core: HttpInspection, router: Router | None, *, preserve_host: bool) -> None:
        self.core = core
        self.router = router
        self.preserve_host = preserve_host
        self._targets: dict[tuple[str, str, int], Route] = {}

    def _route(self, flow: Any) -> tuple[Route, str] | None:
        request = flow.request
        if self.router is not None:
            return self.router.match(request.headers.get("host"), request.path)
        return self.target(request.scheme, request.host, request.port), request.path

    def target(self, scheme: str, host: str, port: int) -> Route:
        """Forward and transparent modes: the destination names the server. There is no
        configured endpoint path, so what is MCP is told by the request itself."""
        key = (scheme, host, port)
        route = self._targets.get(key)
        if route is None:
            default = 443 if scheme == "https" else 80
            netloc = host if port == default else f"{host}:{port}"
            # Named as reverse mode names an upstream without a name (host, with its port
            # unless it is the default): two servers of one host are two servers.
            route = self._targets[key] = Route(
                name=netloc, url=f"{scheme}://{netloc}", scheme=scheme, netloc=netloc, endpoint_path="\x00",
            )
        return route

    # -- body limits (see .mitm_limits) ------------------------------------------------

    def _bounded(self, request: Any) -> bool:
        """Whether a request's body is held to the message size limit whatever it holds:
        every body in reverse mode (as the lean listener) and with ``non_mcp: deny``, and
        those a request marks as MCP or JSON. Others are bounded only if they may be JSON."""
        headers = request.headers
        encoding = headers.get("content-encoding", "").strip().lower()
        return (
            self.router is not None or self.core.only_mcp or encoding not in ("", "identity")
            or any(name in headers for name in _MCP_MARKS) or is_json_media(headers.get("content-type"))
        )

    def requestheaders(self, flow: Any) -> None:
        if flow.error is not None:
            # mitmproxy's own check of the framing fields refused the request before this
            # hook (Content-Length with Transfer-Encoding, ...): refused as the lean listener
            # refuses such framing, with a record, instead of with mitmproxy's page.
            why = str(flow.error.msg).split(" from client, refusing", 1)[0].removeprefix("Received ")
            reply = self._unreadable(flow, f"malformed HTTP request: {why[:200]}")
            ERROR_REPLIES[flow.client_conn.id] = closing_reply(reply)
            return
        request = flow.request
        length = _declared_length(request.headers)
        if length is not None and length > self.core.max_message_bytes and self._bounded(request):
            _refuse_now(flow, self._too_large(flow, length))  # without reading the body
            return
        flow.metadata[BODY_LIMIT] = BodyLimit(self.core.max_message_bytes, self._over_limit)

    def _too_large(self, flow: Any, size: int) -> Reply:
        match = self._route(flow)
        if match is None:
            return _NO_ROUTE
        return self.core.refuse(match[0], code=errors.MESSAGE_TOO_LARGE, reason="too_large", message="", status=413, size=size)

    def _over_limit(self, flow: Any, request: bool, prefix: bytes) -> Reply | None:
        """A buffered body passed the limit: its refusal, or None to stream the request on."""
        if not request:
            return self._answer_over_limit(flow)
        if self._bounded(flow.request) or may_be_json_text(prefix, partial=True):
            # (Text with NULs too: the firewall takes it for UTF-16 or -32, as at any size;
            # and white space alone: what follows it is unread.)
            return self._too_large(flow, len(prefix))
        # Cannot be JSON-RPC (a form, a file): judged on what arrived, and streamed on.
        refusal = self._inspect(flow, prefix)
        if refusal is not None:
            return refusal
        ex = flow.metadata.get(_KEY)
        if ex is None or ex.kind != "other":
            flow.metadata.pop(_KEY, None)
            return self._too_large(flow, len(prefix))
        flow.metadata[_KEY + ".streamed"] = True
        return None

    def _answer_over_limit(self, flow: Any) -> Reply:
        ex: Exchange = flow.metadata[_KEY]
        plan = flow.metadata.get(_KEY + ".plan")
        if plan == "not_mcp":
            return self.core.refuse_non_mcp(ex.route, f"{flow.request.method} {flow.request.url}")
        if plan == "encoded":
            return self.core.encoded_refusal(ex, flow.response.headers.get("content-encoding"))
        return self.core.oversized_answer(ex)

    def request(self, flow: Any) -> None:
        if flow.response is not None or flow.metadata.get(_KEY + ".streamed"):
            return  # (a streamed request was judged before it was streamed on)
        if flow.request.headers.get("upgrade", "").lower() == "websocket" and not _unsafe_fields(flow.request.headers):
            if flow.request.method != "GET":
                # Not a WebSocket handshake (RFC 6455 asks for GET): served as an ordinary
                # request by most servers, so it must not take the handshake's path, which
                # leaves the messages to the WebSocket hooks.
                flow.response = _make_response(self._unreadable(flow, "Upgrade: websocket is only valid on a GET"))
                return
            self._upgrade(flow)
            return
        refusal = self._inspect(flow, flow.request.get_content(strict=False) or b"")
        if refusal is not None:
            flow.response = _make_response(refusal)

    def _inspect(self, flow: Any, body: bytes) -> Reply | None:
        """Ask the pipeline about a request (``body`` is what it is judged on) and prepare
        it for the upstream; or the firewall's answer instead."""
        if _unsafe_fields(flow.request.headers):
            # A bare CR, LF or NUL in a field: a parser further on may split the field there.
            return self._unreadable(flow, "a header field holds a CR, LF or NUL")
        match = self._route(flow)
        if match is None:
            return _NO_ROUTE
        route, upstream_path = match
        request = flow.request
        result = self.core.request(route, Request(
            request.method, request.path, upstream_path, request.headers.get("host"), Headers(request.headers),
            body, request.scheme,
        ))
        if isinstance(result, Reply):
            return result
        flow.metadata[_KEY] = result
        if self.router is not None or result.kind != "other":
            answer_within(request)  # (as the lean listener, whose every route is an MCP server)
        _drop_hop_by_hop(request.headers)
        if self.router is not None:
            self._retarget(request, route, upstream_path)
        if result.body is not None:
            request.content = result.body
        for name, value in result.set_headers.items():
            if value is None:
                request.headers.pop(name, None)
            else:
                request.headers[name] = value
        return None

    def _unreadable(self, flow: Any, why: str) -> Reply:
        """A 400 for a request refused by its shape, recorded as the lean listener records it."""
        match = self._route(flow)
        if match is not None:
            self.core.refuse(match[0], code=errors.INVALID_REQUEST, reason="unreadable_request", status=400, message=why)
        return Reply(400, f"mcpfw: {why}\n".encode())

    def _upgrade(self, flow: Any) -> None:
        """A WebSocket handshake: routed and authenticated here, its messages judged by
        :class:`McpWebSocket`."""
        match = self._route(flow)
        if match is None:
            flow.response = _make_response(_NO_ROUTE)
            return
        route, upstream_path = match
        request = flow.request
        offered = {p.strip().lower() for p in request.headers.get("sec-websocket-protocol", "").split(",")}
        if self.core.only_mcp and "mcp" not in offered:
            # MCP over WebSocket asks for the "mcp" subprotocol; anything else is not MCP.
            flow.response = _make_response(self.core.refuse_non_mcp(route, f"WebSocket {request.url}"))
            return
        flow.metadata[_KEY + ".route"] = route
        if self.router is not None:
            # To the route's upstream, as every other request: mitmproxy's own reverse
            # target is the first upstream, whatever route the handshake matched.
            self._retarget(request, route, upstream_path)
        if self.core.auth is None:
            return
        ex = Exchange(route, "stream", upstream_path=upstream_path)
        ex.public_origin = self.core.public_url or f"{request.scheme}://{request.headers.get('host') or route.netloc}"
        refused = self.core.admit(ex, Headers(request.headers))
        if refused is not None:
            flow.response = _make_response(refused)
            return
        flow.metadata[_KEY + ".identity"] = ex.identity
        for name, value in ex.set_headers.items():
            if value is None:
                request.headers.pop(name, None)
            else:
                request.headers[name] = value

    def _retarget(self, request: Any, route: Route, upstream_path: str) -> None:
        host_header = request.headers.get("host")
        host, _, port = route.netloc.rpartition(":") if route.netloc.count(":") == 1 else (route.netloc, "", "")
        request.scheme = route.scheme
        request.host = host.strip("[]")
        request.port = int(port) if port else (443 if route.scheme == "https" else 80)
        request.path = upstream_path
        if self.preserve_host and host_header is not None:
            request.headers["host"] = host_header  # the setters above rewrote it

    def tcp_start(self, flow: Any) -> None:
        """A CONNECT tunnel carrying neither TLS nor HTTP: raw TCP, never MCP over HTTP."""
        if self.core.only_mcp:
            address = flow.server_conn.address
            route = Route(str(address), f"tcp://{address}", "tcp", str(address), "\x00")
            self.core.refuse_non_mcp(route, f"raw TCP to {address}")
            # mitmproxy's TCP layer does not heed flow.kill(): the connection to the server
            # is refused instead (it is opened after this hook) ...
            flow.server_conn.error = "mcpfw: only MCP traffic may pass this proxy"

    def tcp_message(self, flow: Any) -> None:
        """... and should it be open already, nothing is relayed either way."""
        if self.core.only_mcp:
            flow.messages[-1].content = b""

    def responseheaders(self, flow: Any) -> None:
        ex: Exchange | None = flow.metadata.get(_KEY)
        if ex is None:
            flow.response.stream = True  # nothing to inspect (a WebSocket handshake's answer)
            return
        response = flow.response
        if response.status_code == 101:
            # To a request that was no handshake: mitmproxy would relay a raw tunnel from here
            # on. Recorded, and the connection is closed (mitmproxy has committed to the switch).
            self.core.upstream_failed(ex, "the server switched protocols (101) in answer to a plain request")
            flow.kill()
            return
        if _unsafe_fields(response.headers):
            flow.response = _make_response(self.core.upstream_failed(ex, "a response header field holds a CR, LF or NUL"))
            return
        _drop_hop_by_hop(response.headers)
        plan, changes = self.core.response_head(ex, response.status_code, Headers(response.headers))
        for name, value in changes.items():
            response.headers[name] = value
        flow.metadata[_KEY + ".plan"] = plan
        if plan == "sse":
            response.stream = _SseStream(self.core.sse(ex))
            # The events sent on need not add up to the server's length (one dropped or redacted).
            response.headers.pop("content-length", None)
        elif plan == "pass":
            response.stream = True  # nothing to inspect: do not hold it in memory
        else:
            length = _declared_length(response.headers)
            if length is not None and length > self.core.max_message_bytes:
                _refuse_now(flow, self._answer_over_limit(flow))  # not read: no more than the lean listener reads
                return
            flow.metadata[BODY_LIMIT] = BodyLimit(self.core.max_message_bytes, self._over_limit)

    def response(self, flow: Any) -> None:
        ex: Exchange | None = flow.metadata.get(_KEY)
        plan = flow.metadata.get(_KEY + ".plan")
        if ex is None:
            return
        if plan not in ("json", "metadata", "encoded", "not_mcp"):
            if flow.response is not None and flow.response.status_code >= 400:
                self.core.unanswered(ex)  # an error page for the requests: they will get no answer
            return
        response = flow.response
        if plan == "not_mcp":
            flow.response = _make_response(self.core.refuse_non_mcp(ex.route, f"{flow.request.method} {flow.request.url}"))
            return
        if plan == "encoded":
            reply = self.core.encoded_refusal(ex, response.headers.get("content-encoding"))
            flow.response = _make_response(reply)
            return
        body = response.get_content(strict=False) or b""
        if plan == "metadata":
            response.content = self.core.metadata_body(ex, body)
            return
        status, body = self.core.json_body(ex, response.status_code, body)
        response.status_code = status
        response.content = body
        if status == 200 and "content-type" not in response.headers:
            response.headers["content-type"] = "application/json"


class _SseStream:
    """mitmproxy's streaming callback: chunks in, inspected events out; b"" ends the stream."""

    def __init__(self, events: Any) -> None:
        self._events = events

    def broke_off(self, reason: str) -> bytes:
        """The upstream broke the stream off: what the client still gets (error events for
        requests left unanswered, each recorded)."""
        events = self._events
        return events.finish() + events.failed(reason)

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if not chunk:
            return self._events.finish()
        out = self._events.feed(chunk)
        # Nothing complete yet: no piece at all. mitmproxy writes an empty piece as it writes
        # any, and an empty chunk of a chunked body ("0\r\n\r\n") ends the body: the client's
        # stream ended at the first read that did not finish an event.
        return out if out else []


def _failure_status(message: str) -> int:
    lower = message.lower()
    return 504 if "timed out" in lower or "timeout" in lower or lower.startswith("no response within") else 502


def _failure_reason(message: str) -> str:
    """mitmproxy's reason for a failed exchange, without the server's bytes that some carry
    (``unexpected server response: b'...'``: the answer's client and the audit log get
    neither a server's header values nor megabytes of them)."""
    head, sep, rest = message.partition(": b")
    if sep and rest[:1] in ("'", '"'):
        return f"{head} ({len(rest) - 2} bytes, not shown)"
    return message if len(message) <= 300 else message[:300] + "..."


class UpstreamFailures:
    """An MCP exchange that failed upstream (refused, reset, timed out): an audit record,
    and the JSON-RPC error for the client in place of mitmproxy's error page."""

    def __init__(self, core: HttpInspection) -> None:
        self.core = core

    def error(self, flow: Any) -> None:
        ex: Exchange | None = flow.metadata.get(_KEY)
        if ex is None or flow.error is None:
            return
        message = _failure_reason(str(flow.error.msg))
        if flow.response is not None:
            stream = flow.response.stream
            if isinstance(stream, _SseStream) and flow.error.msg != "Connection killed.":
                # Under way to the client: its unanswered requests get error events (and
                # records) before the stream is closed, as from the lean listener.
                STREAM_ENDS[flow.client_conn.id] = stream.broke_off(f"the event stream broke off: {message}")
                return
            if stream or flow.client_conn.id in ERROR_REPLIES:
                return  # under way to the client (not inspected), or refused already (too large)
            # An answer read in full before it is judged broke off: nothing of it was sent.
            message = f"the response broke off: {message}"
        reply = self.core.upstream_failed(ex, message, status=_failure_status(message))
        if flow.error.msg == "Connection killed." or not _ERROR_REPLIES_INSTALLED:
            return
        from mitmproxy import http
        from mitmproxy.net.http import http1

        headers = {**reply.headers, "connection": "close"}
        ERROR_REPLIES[flow.client_conn.id] = http1.assemble_response(http.Response.make(reply.status, reply.body, headers))

    def client_disconnected(self, client: Any) -> None:
        ERROR_REPLIES.pop(client.id, None)
        STREAM_ENDS.pop(client.id, None)


_ERROR_REPLIES_INSTALLED = False


def install_error_replies() -> bool:
    """Let :class:`UpstreamFailures` answer failed exchanges (see the module's docstring).
    False when this mitmproxy does not have the method wrapped (its page is sent then)."""
    global _ERROR_REPLIES_INSTALLED
    try:
        from mitmproxy.connection import ConnectionState
        from mitmproxy.proxy import commands
        from mitmproxy.proxy.layers.http import _http1
        from mitmproxy.proxy.layers.http._events import ResponseProtocolError
    except ImportError:
        return False
    server = getattr(_http1, "Http1Server", None)
    original = getattr(server, "send", None)
    if original is None:
        return False
    if getattr(original, "_mcpfw", False):
        _ERROR_REPLIES_INSTALLED = True
        return True

    def send(self: Any, event: Any) -> Any:
        if isinstance(event, ResponseProtocolError) and not self.response:
            raw = ERROR_REPLIES.pop(self.conn.id, None)
            if raw is not None:
                if self.conn.state & ConnectionState.CAN_WRITE:
                    yield commands.SendData(self.conn, raw)
                yield commands.CloseConnection(self.conn)
                return
        elif isinstance(event, ResponseProtocolError):
            tail = STREAM_ENDS.pop(self.conn.id, None)
            headers = self.response.headers
            if tail and self.conn.state & ConnectionState.CAN_WRITE:
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    yield commands.SendData(self.conn, b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
                elif "content-length" not in headers:  # (ended by the close that follows)
                    yield commands.SendData(self.conn, tail)
        yield from original(self, event)

    send._mcpfw = True  # type: ignore[attr-defined]
    server.send = send
    _ERROR_REPLIES_INSTALLED = True
    return True


class McpWebSocket:
    """Inspects every WebSocket message; a denied request is answered on the same socket."""

    def __init__(self, core: HttpInspection, router: Router | None) -> None:
        self.core = core
        self.router = router

    def websocket_start(self, flow: Any) -> None:
        request = flow.request
        route = flow.metadata.get(_KEY + ".route")  # matched before the handshake was retargeted
        if route is None:
            default = 443 if request.scheme in ("https", "wss") else 80
            netloc = request.host if request.port == default else f"{request.host}:{request.port}"
            route = Route(netloc, request.url, request.scheme, netloc, request.path)
        session = self.core.sessions.new_session(route, "websocket")
        session.identity = flow.metadata.get(_KEY + ".identity")
        flow.metadata[_KEY + ".ws"] = WebSocketInspection(self.core.inspector, session, self.core.max_message_bytes)

    def websocket_message(self, flow: Any) -> None:
        from mitmproxy import ctx

        inspection: WebSocketInspection | None = flow.metadata.get(_KEY + ".ws")
        if inspection is None:
            return
        message = flow.websocket.messages[-1]
        if message.injected:  # the firewall's own answer to a denied message, already judged
            return
        judge = inspection.from_client if message.from_client else inspection.from_server
        relay = judge(message.content)
        if relay.forward is None:
            message.drop()
        elif relay.forward is not message.content:
            message.content = relay.forward
        if relay.reply is not None:
            # Back to whoever sent it: the client for its requests, the server for its own.
            ctx.master.commands.call("inject.websocket", flow, message.from_client, relay.reply, message.is_text)


def _undecided(data: bytes) -> bool:
    """Whether the first bytes of a connection (blank lines removed) may still begin an HTTP
    request or a TLS ClientHello: what mitmproxy took for raw TCP on them was premature."""
    if not data:
        return True  # blank lines only: servers skip them before a request (RFC 9112 2.2)
    if len(data) < 3 and b"\x16\x03".startswith(data):
        return True  # a record header not whole yet (mitmproxy wants three bytes to see TLS)
    return b"\n" not in data and data[:3].isalpha()  # a request line not ended yet


def _next_layer_addon() -> Any:
    """mitmproxy's NextLayer addon, but that it does not settle for raw TCP (relayed unread)
    on bytes that may still be HTTP or TLS: a request line not yet ended, blank lines before
    it, or the first one or two bytes of a ClientHello. A client whose first write in a tunnel
    was one of those had its MCP requests reach the server unjudged (servers skip the blank
    lines and join the writes). The decision waits for more, within the head limit; the
    client's deadline (:class:`~.mitm_limits.ClientLimits`) still runs."""
    from mitmproxy.addons import next_layer
    from mitmproxy.proxy import layers

    class McpNextLayer(next_layer.NextLayer):
        name = "nextlayer"  # what mitmproxy's proxyserver looks up (it warns when missing)

        def _next_layer(self, context: Any, data_client: bytes, data_server: bytes) -> Any:
            chosen = super()._next_layer(context, data_client, data_server)
            if (not isinstance(chosen, layers.TCPLayer) or not data_client or data_server
                    or len(data_client) > MAX_HEAD_BYTES):
                return chosen
            rest = data_client.lstrip(b"\r\n")
            if _undecided(rest):
                raise next_layer.NeedsMoreData
            return super()._next_layer(context, rest, data_server) if rest != data_client else chosen

    return McpNextLayer()


# -- running mitmproxy embedded ---------------------------------------------------------


def _options(config: Config, listen: Listen) -> dict[str, Any]:
    proxy = config.proxy
    confdir = proxy.confdir or (state_dir() / "mitmproxy")
    Path(confdir).expanduser().mkdir(parents=True, exist_ok=True)
    if proxy.mode == "reverse":
        # McpHttp picks the route of each request; this only gives mitmproxy a default.
        mode = f"reverse:{build_router(config).routes[-1].origin}"
    else:
        mode = proxy.mode
    return {
        "mode": [mode],
        "listen_host": listen.host,
        "listen_port": listen.port,
        "confdir": str(Path(confdir).expanduser()),
        "ssl_insecure": proxy.ssl_insecure,
        "keep_host_header": proxy.preserve_host,
        "connection_strategy": "lazy",
        "http2": proxy.http2,
        "tcp_timeout": proxy.idle_timeout_seconds,
        "stream_large_bodies": None,
        "body_size_limit": None,
    }


async def serve_mitmproxy(config: Config, listen: Listen, *, on_ready: Any = None, stop: asyncio.Event | None = None) -> None:
    """Run mitmproxy with the mcpfw addons until ``stop`` is set (or a signal arrives)."""
    from mitmproxy import master, options
    from mitmproxy.addons import core, errorcheck, proxyserver, tlsconfig

    stop = stop or asyncio.Event()
    install_stop_signals(stop)
    firewall = build_firewall(config)
    client = None
    opts = None
    try:
        reverse = config.proxy.mode == "reverse"
        client = client_session(connect_timeout=config.proxy.connect_timeout_seconds, verify_tls=not config.proxy.ssl_insecure)
        held = client
        inspection = build_inspection(
            firewall, reverse=reverse, poster=UpstreamPoster(lambda: held, config.proxy.upstream_timeout_seconds)
        )
        inspection.inspector.prepare()  # the addons' hooks run on this thread (the event loop)
        router = build_router(config) if reverse else None
        install_error_replies()
        install_request_limits()
        install_body_limits()
        install_response_limits()
        install_close_guard()
        opts = options.Options()
        m = master.Master(opts, with_termlog=False)
        http_addon = McpHttp(inspection, router, preserve_host=config.proxy.preserve_host)
        refusals = _Refusals(inspection, router, http_addon, config.proxy.client_timeout_seconds)
        limits = Limits(
            client_timeout=config.proxy.client_timeout_seconds, max_body=inspection.max_message_bytes,
            max_connections=config.proxy.max_connections or connection_budget(),
            max_connections_per_client=config.proxy.max_connections_per_client,
            unreadable=refusals.unreadable, too_slow=refusals.too_slow,
            upstream_timeout=config.proxy.upstream_timeout_seconds,
        )
        register(opts, limits)
        m.addons.add(
            core.Core(), proxyserver.Proxyserver(), _next_layer_addon(), tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(),
            ClientLimits(limits, closer=_closer(m), on_silent=refusals.silent),
            IdleTimeout(_handler_of(m)),
            http_addon,
            McpWebSocket(inspection, router),
            UpstreamFailures(inspection),
        )
        opts.update(**_options(config, listen))
        runner = asyncio.ensure_future(m.run())
        await _wait_listening(m, runner)
        if on_ready is not None:
            on_ready(_bound_port(m, listen.port))
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not runner.done():
            m.shutdown()
            await runner
        elif runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
    finally:
        if opts is not None:
            unregister(opts)
        if client is not None:
            await client.close()
        firewall.close()


class _Refusals:
    """Records requests the HTTP/1 reader refuses before the addons see them, as the lean
    listener records its own: against the route when one is known (reverse mode: the
    first, as the lean listener; transparent mode and CONNECT tunnels: the destination).
    A plain HTTP request to a forward proxy names its destination in the head it failed to
    send, so there is no server to record it against: it is logged instead."""

    def __init__(self, core: HttpInspection, router: Router | None, http_addon: McpHttp, timeout: float) -> None:
        self.core = core
        self.router = router
        self.http = http_addon
        self.timeout = timeout

    def _route(self, context: Any, request: Any = None) -> Route | None:
        if self.router is not None:
            match = self.router.match(request.headers.get("host"), request.path) if request is not None else None
            return match[0] if match is not None else self.router.routes[0]
        if request is not None and request.host:
            return self.http.target(request.scheme, request.host, request.port)
        address = context.server.address
        if address is None:
            return None
        return self.http.target("https" if context.client.tls else "http", address[0], address[1])

    def unreadable(self, context: Any, status: int, why: str) -> None:
        route = self._route(context)
        if route is None:
            log.warning("mcpfw: refused a request from %s (%d): %s", _peer(context.client), status, why)
            return
        self.core.refuse(route, code=errors.INVALID_REQUEST, reason="unreadable_request", status=status, message=why)

    def too_slow(self, context: Any, request: Any, size: int) -> Reply | None:
        part = "body" if request is not None else "headers"
        message = f"the client did not send its request {part} within {self.timeout:g} s"
        route = self._route(context, request)
        if route is None:
            log.warning("mcpfw: closed a connection from %s: %s", _peer(context.client), message)
            return None
        reply = self.core.refuse(route, code=errors.INVALID_REQUEST, reason="client_timeout", status=408,
                                 message=message, size=size)
        return reply if request is not None else None  # a bare 408 to a head, as the lean listener

    def silent(self, client: Any) -> None:
        """A connection that sent no request in time, closed."""
        message = f"the client did not send a request within {self.timeout:g} s"
        if self.router is None:
            log.info("mcpfw: closed a connection from %s: %s", _peer(client), message)
            return
        self.core.refuse(self.router.routes[0], code=errors.INVALID_REQUEST, reason="client_timeout", status=408,
                         message=message)


def _peer(client: Any) -> str:
    return str(client.peername[0]) if client.peername else "?"


def _handler_of(m: Any) -> Callable[[Any], Any]:
    """The connection handler of a client connection (None once it is gone)."""
    def handler_of(client: Any) -> Any:
        return getattr(m.addons.get("proxyserver"), "connections", {}).get(client.id)

    return handler_of


def _closer(m: Any) -> Any:
    """Closes a client connection as mitmproxy's own inactivity timeout does: its reading
    task is cancelled. False when this mitmproxy keeps its connections elsewhere."""
    handler_of = _handler_of(m)

    def close(client: Any) -> bool:
        io = getattr(handler_of(client), "transports", {}).get(client)
        task = getattr(io, "handler", None)
        if task is None:
            return False
        task.cancel("mcpfw: the client sent no request in time")
        return True

    return close


async def _wait_listening(m: Any, runner: asyncio.Future[Any]) -> None:
    ps = m.addons.get("proxyserver")
    for _ in range(200):
        if runner.done():
            break
        if any(getattr(s, "listen_addrs", None) for s in ps.servers):
            return
        await asyncio.sleep(0.02)


def _bound_port(m: Any, default: int) -> int:
    ps = m.addons.get("proxyserver")
    for server in ps.servers:
        for addr in server.listen_addrs:
            return addr[1]
    return default


def run_mitmproxy(config: Config, listen: Listen) -> int:
    def ready(port: int) -> None:
        announce(listen, port, config.proxy.mode, "mitmproxy", 1)
        if config.proxy.mode != "reverse":
            ca = Path(_options(config, listen)["confdir"]) / "mitmproxy-ca-cert.pem"
            print(f"mcpfw proxy: TLS interception CA: {ca}", flush=True, file=sys.stderr)

    asyncio.run(serve_mitmproxy(config, listen, on_ready=ready))
    return 0


def ca_certificate(config: Config) -> Path:
    confdir = config.proxy.confdir or (state_dir() / "mitmproxy")
    return Path(os.path.expanduser(confdir)) / "mitmproxy-ca-cert.pem"
