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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ... import errors
from ...config import Config
from ...paths import state_dir
from ...runtime import build_firewall
from .exchange import Exchange, HttpInspection, Request
from .outbound import UpstreamPoster, client_session
from .replies import Reply
from .routes import Route, Router
from .runner import Listen, announce, install_stop_signals
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
        # Forward and transparent modes: the destination names the server. There is no
        # configured endpoint path, so what is MCP is told by the request itself.
        key = (request.scheme, request.host, request.port)
        route = self._targets.get(key)
        if route is None:
            default = 443 if request.scheme == "https" else 80
            netloc = request.host if request.port == default else f"{request.host}:{request.port}"
            # Named as reverse mode names an upstream without a name (host, with its port
            # unless it is the default): two servers of one host are two servers.
            route = self._targets[key] = Route(
                name=netloc, url=f"{request.scheme}://{netloc}", scheme=request.scheme, netloc=netloc,
                endpoint_path="\x00",
            )
        return route, request.path

    def request(self, flow: Any) -> None:
        if flow.response is not None:
            return
        if _unsafe_fields(flow.request.headers):
            # A bare CR, LF or NUL in a field: a parser further on may split the field there.
            flow.response = self._unreadable(flow, "a header field holds a CR, LF or NUL")
            return
        if flow.request.headers.get("upgrade", "").lower() == "websocket":
            if flow.request.method != "GET":
                # Not a WebSocket handshake (RFC 6455 asks for GET): served as an ordinary
                # request by most servers, so it must not take the handshake's path, which
                # leaves the messages to the WebSocket hooks.
                flow.response = self._unreadable(flow, "Upgrade: websocket is only valid on a GET")
                return
            self._upgrade(flow)
            return
        match = self._route(flow)
        if match is None:
            flow.response = _make_response(Reply(404, b"mcpfw: no upstream is configured for this path\n"))
            return
        route, upstream_path = match
        request = flow.request
        result = self.core.request(route, Request(
            request.method, request.path, upstream_path, request.headers.get("host"), Headers(request.headers),
            request.get_content(strict=False) or b"", request.scheme,
        ))
        if isinstance(result, Reply):
            flow.response = _make_response(result)
            return
        flow.metadata[_KEY] = result
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

    def _unreadable(self, flow: Any, why: str) -> Any:
        """A 400 for a request refused by its shape, recorded as the lean listener records it."""
        match = self._route(flow)
        if match is not None:
            self.core.refuse(match[0], code=errors.INVALID_REQUEST, reason="unreadable_request", status=400, message=why)
        return _make_response(Reply(400, f"mcpfw: {why}\n".encode()))

    def _upgrade(self, flow: Any) -> None:
        """A WebSocket handshake: routed and authenticated here, its messages judged by
        :class:`McpWebSocket`."""
        match = self._route(flow)
        if match is None:
            flow.response = _make_response(Reply(404, b"mcpfw: no upstream is configured for this path\n"))
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

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            return self._events.finish()
        return self._events.feed(chunk)


# Client connection id -> the raw HTTP response that replaces mitmproxy's error page.
_ERROR_REPLIES: dict[str, bytes] = {}


def _failure_status(message: str) -> int:
    return 504 if "timed out" in message.lower() or "timeout" in message.lower() else 502


class UpstreamFailures:
    """An MCP exchange that failed upstream (refused, reset, timed out): an audit record,
    and the JSON-RPC error for the client in place of mitmproxy's error page."""

    def __init__(self, core: HttpInspection) -> None:
        self.core = core

    def error(self, flow: Any) -> None:
        ex: Exchange | None = flow.metadata.get(_KEY)
        if ex is None or flow.response is not None or flow.error is None:
            return
        message = str(flow.error.msg)
        reply = self.core.upstream_failed(ex, message, status=_failure_status(message))
        if flow.error.msg == "Connection killed." or not _ERROR_REPLIES_INSTALLED:
            return
        from mitmproxy import http
        from mitmproxy.net.http import http1

        headers = {**reply.headers, "connection": "close"}
        _ERROR_REPLIES[flow.client_conn.id] = http1.assemble_response(http.Response.make(reply.status, reply.body, headers))

    def client_disconnected(self, client: Any) -> None:
        _ERROR_REPLIES.pop(client.id, None)


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
            raw = _ERROR_REPLIES.pop(self.conn.id, None)
            if raw is not None:
                if self.conn.state & ConnectionState.CAN_WRITE:
                    yield commands.SendData(self.conn, raw)
                yield commands.CloseConnection(self.conn)
                return
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
        "stream_large_bodies": None,
        "body_size_limit": None,
    }


async def serve_mitmproxy(config: Config, listen: Listen, *, on_ready: Any = None, stop: asyncio.Event | None = None) -> None:
    """Run mitmproxy with the mcpfw addons until ``stop`` is set (or a signal arrives)."""
    from mitmproxy import master, options
    from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

    stop = stop or asyncio.Event()
    install_stop_signals(stop)
    firewall = build_firewall(config)
    client = None
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
        opts = options.Options()
        m = master.Master(opts, with_termlog=False)
        m.addons.add(
            core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(),
            McpHttp(inspection, router, preserve_host=config.proxy.preserve_host),
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
        if client is not None:
            await client.close()
        firewall.close()


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
