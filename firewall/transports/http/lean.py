"""The lean reverse listener: the exchange logic between two thin HTTP/1.1 protocols.

mitmproxy costs 2-3 ms of CPU per request, and aiohttp's server and client about 0.3 ms
together; a reverse proxy that only has to read one request, ask the pipeline and pass
the answer on needs a fraction of that. So requests are parsed by httptools on plain
asyncio Protocols (:mod:`.server`), sent upstream over pooled keep-alive connections
(:mod:`.upstream`), and header bytes are copied rather than decoded and re-encoded.
WebSocket upgrades are handed to aiohttp, which then owns the connection. mitmproxy
serves regular and transparent modes. Every engine calls the same
:class:`~.exchange.HttpInspection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from ... import errors
from ...config import ProxyConfig
from .exchange import Exchange, HttpInspection, Request
from .outbound import client_session
from .replies import Reply, plain
from .routes import Route, Router
from .server import IncomingRequest, ServerConnection, ServerSettings, serve_factory
from .sessions import Channel
from .upstream import Origin, UpstreamError, UpstreamPool, UpstreamResponse
from .websocket import WebSocketInspection
from .wire import CRLF, HOP_BY_HOP, encode, header_block

# Not copied upstream: hop-by-hop headers, and what the firewall sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {b"content-length", b"host", b"expect"}
_NOT_RETURNED = HOP_BY_HOP | {b"content-length"}
_WS_HEADERS = ("authorization", "cookie", "origin", "mcp-protocol-version")
_NO_ROUTE = plain(404, "mcpfw: no upstream is configured for this path\n")
_SWEEP_SECONDS = 30.0


class _Handover(asyncio.Protocol):
    """aiohttp's protocol for an upgraded connection, which stays counted among the listener's
    connections (for the connection caps) until it is lost."""

    def __init__(self, inner: Any, on_lost: Any) -> None:
        self._inner = inner
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()
        self._inner.connection_lost(exc)


def connection_budget() -> int:
    """Client connections a process can hold and still open upstream connections, the audit
    file and the rest: the open-file limit less a reserve."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 60_000
    return max(64, (soft - 256) // 2)  # about one upstream connection per client connection


class Affinity(Protocol):
    """Keeps every request of an MCP session in the worker process that owns the session."""

    def intercepts(self, request: IncomingRequest) -> bool: ...

    def take_over(self, request: IncomingRequest) -> Reply: ...

    def owner(self, request: IncomingRequest, upstream_path: str) -> int | None: ...

    async def relay(self, request: IncomingRequest, owner: int, conn: ServerConnection) -> None: ...

    async def adopt(self, route: Route, sid: str, channel: Channel) -> None: ...


class LeanListener:
    """Serves reverse mode: listening sockets, the upstream pool, and the per-request flow."""

    def __init__(
        self,
        core: HttpInspection,
        router: Router,
        settings: ProxyConfig,
        *,
        affinity: Affinity | None = None,
    ) -> None:
        self.core = core
        self.router = router
        self.settings = settings
        self.affinity = affinity
        self._limit = core.max_message_bytes
        self._server_settings = ServerSettings(
            client_timeout=settings.client_timeout_seconds, max_body=self._limit,
            idle_timeout=settings.idle_timeout_seconds,
            max_connections=settings.max_connections or connection_budget(),
            max_connections_per_client=settings.max_connections_per_client,
        )
        self._connections: set[ServerConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._origins = {route.name: Origin.of(route.scheme, route.netloc) for route in router.routes}
        self._pool: UpstreamPool | None = None
        self._client: aiohttp.ClientSession | None = None
        self._websockets: web.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        """aiohttp's client, for WebSockets and the firewall's own posts to servers."""
        if self._client is None:
            self._client = client_session(connect_timeout=self.settings.connect_timeout_seconds)
        return self._client

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            self._pool = UpstreamPool(connect_timeout=self.settings.connect_timeout_seconds)
        return self._pool

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start accepting on ``host:port``; return the bound port."""
        loop = asyncio.get_running_loop()
        factory = serve_factory(self, self._server_settings, self._connections)
        server = await loop.create_server(factory, host, port, reuse_port=reuse_port or None, backlog=1024)
        self._servers.append(server)
        self._schedule_sweep()
        return server.sockets[0].getsockname()[1]

    async def adopt_connection(self, sock: socket.socket, preface: bytes) -> None:
        """Serve a client connection another worker accepted and handed over, with the
        bytes it had already read (the request it could not serve)."""
        factory = serve_factory(self, self._server_settings, self._connections, preface=preface)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
        except OSError:
            sock.close()

    async def listen_unix(self, path: str) -> None:
        """Accept the other workers' relayed requests (marked internal)."""
        loop = asyncio.get_running_loop()
        factory = serve_factory(self, self._server_settings, self._connections, internal=True)
        self._servers.append(await loop.create_unix_server(factory, path))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._connections):
            if not conn.busy:
                conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while any(conn.busy for conn in self._connections):
                    await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.close()
        if self._websockets is not None:
            await self._websockets.shutdown(2.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            await self._client.close()

    def _schedule_sweep(self) -> None:
        if self._sweeper is None:
            every = min(_SWEEP_SECONDS, self._server_settings.idle_timeout / 2)
            self._sweeper = asyncio.get_running_loop().call_later(every, self._sweep)

    def _sweep(self) -> None:
        """Close idle keep-alive connections, both sides."""
        self._sweeper = None
        oldest = asyncio.get_running_loop().time() - self._server_settings.idle_timeout
        for conn in [c for c in self._connections if not c.busy and c.idle_since < oldest]:
            conn.close()
        if self._pool is not None:
            self._pool.sweep()
        self._schedule_sweep()

    # -- refusals by the connection (server.Handler) -----------------------------------

    def too_large(self, request: IncomingRequest, size: int) -> Reply:
        match = self.router.match(request.headers.get("host"), request.target)
        if match is None:
            return _NO_ROUTE
        return self.core.refuse(match[0], code=errors.MESSAGE_TOO_LARGE, reason="too_large", message="", status=413, size=size)

    def unreadable(self, status: int, why: str) -> None:
        self.core.refuse(self.router.routes[0], code=errors.INVALID_REQUEST, reason="unreadable_request",
                         status=status, message=why)

    def too_slow(self, request: IncomingRequest | None, size: int) -> Reply | None:
        """A client too slow with its headers (None: a bare 408 is sent) or its body."""
        timeout = self.settings.client_timeout_seconds
        if request is None:
            self.core.refuse(
                self.router.routes[0], code=errors.INVALID_REQUEST, reason="client_timeout", status=408,
                message=f"the client did not send its request headers within {timeout:g} s",
            )
            return None
        match = self.router.match(request.headers.get("host"), request.target)
        route = match[0] if match is not None else self.router.routes[0]
        return self.core.refuse(
            route, code=errors.INVALID_REQUEST, reason="client_timeout", status=408, size=size,
            message=f"the client did not send its request body within {timeout:g} s",
        )

    # -- one request -----------------------------------------------------------------

    async def serve(self, request: IncomingRequest, conn: ServerConnection) -> None:
        affinity = self.affinity
        if affinity is not None and request.internal and affinity.intercepts(request):
            conn.reply(affinity.take_over(request))
            return
        host = request.headers.get("host")
        match = self.router.match(host, request.target)
        if match is None:
            conn.reply(_NO_ROUTE)
            return
        route, upstream_path = match
        if affinity is not None:
            owner = affinity.owner(request, upstream_path)
            if owner is not None:
                await affinity.relay(request, owner, conn)
                return
        result = self.core.request(
            route, Request(request.method, request.target, upstream_path, host, request.headers, request.body)
        )
        if isinstance(result, Reply):
            conn.reply(result)
            return
        await self._forward(request, conn, result)

    def _upstream_head(self, request: IncomingRequest, ex: Exchange, body: bytes) -> bytes:
        lines = [b"%s %s HTTP/1.1\r\n" % (encode(request.method), encode(ex.upstream_path))]
        lines += header_block(request.headers.raw, _NOT_FORWARDED, ex.set_headers)
        host = request.headers.get("host") if self.settings.preserve_host else None
        lines += (b"host: ", encode(host) if host else encode(ex.route.netloc), CRLF)
        if body or request.has_body:
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(CRLF)
        return b"".join(lines)

    async def _forward(self, request: IncomingRequest, conn: ServerConnection, ex: Exchange) -> None:
        route = ex.route
        core = self.core
        body = ex.body if ex.body is not None else request.body
        try:
            upstream = await self.pool.request(
                self._origins[route.name], self._upstream_head(request, ex, body), body,
                method=request.method, timeout=self.settings.upstream_timeout_seconds,
            )
        except UpstreamError as exc:
            conn.reply(core.upstream_failed(ex, self._failure(route, exc), status=504 if exc.timed_out else 502))
            return
        try:
            plan, changes = core.response_head(ex, upstream.status, upstream.headers)
            if ex.new_session_id is not None and self.affinity is not None and ex.channel is not None:
                await self.affinity.adopt(route, ex.new_session_id, ex.channel)
            if plan == "encoded":
                conn.reply(core.encoded_refusal(ex, upstream.headers.get("content-encoding")))
            elif plan == "sse":
                await self._stream_events(conn, ex, upstream, changes)
            elif plan in ("json", "metadata"):
                await self._whole_body(conn, ex, upstream, changes, plan)
            else:
                await relay_response(conn, upstream, changes)
                if upstream.status >= 400:
                    core.unanswered(ex)  # an error page for the requests: they will get no answer
        finally:
            upstream.release()

    def _failure(self, route: Route, exc: UpstreamError) -> str:
        if exc.connecting:
            return f"cannot connect to {route.netloc}: {exc.why}"
        if exc.timed_out:
            return f"no response within {self.settings.upstream_timeout_seconds:g} s"
        return f"the connection failed: {exc.why}"

    async def _whole_body(
        self, conn: ServerConnection, ex: Exchange, upstream: UpstreamResponse, changes: dict[str, str], plan: str
    ) -> None:
        core = self.core
        try:
            body = await upstream.read(self._limit, self.settings.upstream_timeout_seconds)
        except UpstreamError as exc:
            if exc.timed_out:
                conn.reply(core.upstream_failed(ex, "the response body did not arrive in time", status=504))
            else:
                conn.reply(core.upstream_failed(ex, f"the response broke off: {exc.why}"))
            return
        status = upstream.status
        if body is None:  # over the size limit: not read, not passed
            conn.reply(core.oversized_answer(ex))
            return
        if plan == "metadata":
            body = core.metadata_body(ex, body)
        else:
            status, body = core.json_body(ex, status, body)
        if status == 200 and upstream.status == 202:
            changes = {**changes, "content-type": "application/json"}
        conn.respond(status, header_block(upstream.raw, _NOT_RETURNED, changes), body, date=not upstream.has_date)

    async def _stream_events(
        self, conn: ServerConnection, ex: Exchange, upstream: UpstreamResponse, changes: dict[str, str]
    ) -> None:
        conn.start(upstream.status, header_block(upstream.raw, _NOT_RETURNED, changes), date=not upstream.has_date)
        conn.on_lost = upstream.close  # the client left: stop the server's stream too
        events = self.core.sse(ex)
        try:
            try:
                while True:
                    data = upstream.take()
                    if data and (out := events.feed(data)):
                        conn.write(out)
                    if upstream.finished:
                        break
                    await conn.drain()  # sends what is held: each event leaves as soon as it is judged
                    await upstream.more()
                tail = events.finish()
            except UpstreamError as exc:
                if conn.closed:
                    raise ConnectionResetError from exc
                tail = events.finish() + events.failed(f"the event stream broke off: {exc.why}")
            if tail:
                conn.write(tail)
            conn.end()
        except ConnectionResetError:
            upstream.close()

    # -- WebSocket: handed to aiohttp ------------------------------------------------

    def upgrade(self, request: IncomingRequest, conn: ServerConnection, rest: bytes) -> None:
        """Give the connection to aiohttp, replaying the request head it has not seen."""
        if self._websockets is None:
            self._websockets = web.Server(self._handle_upgrade, access_log=None, auto_decompress=False)
        transport = conn.detach()
        handler = _Handover(self._websockets(), conn.leave)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        head = [b"%s %s HTTP/1.1\r\n" % (encode(request.method), encode(request.target))]
        for name, value in request.headers.raw:
            head += (name, b": ", value, CRLF)
        head.append(CRLF)
        handler.data_received(b"".join(head) + rest)

    async def _handle_upgrade(self, request: web.BaseRequest) -> web.StreamResponse:
        match = self.router.match(request.headers.get("host"), request.raw_path)
        if match is None:
            return web.Response(status=404, text=_NO_ROUTE.body.decode())
        if request.headers.get("upgrade", "").lower() != "websocket":
            return web.Response(status=400, text="mcpfw: only WebSocket upgrades are supported\n")
        return await self._websocket(request, *match)

    async def _websocket(self, request: web.BaseRequest, route: Route, upstream_path: str) -> web.StreamResponse:
        core = self.core
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        headers = {name: value for name in _WS_HEADERS if (value := request.headers.get(name)) is not None}
        if self.settings.preserve_host and request.headers.get("host"):
            headers["Host"] = request.headers["host"]
        scheme = "wss" if route.scheme == "https" else "ws"
        session = core.sessions.new_session(route, "websocket")
        ex = Exchange(route, "stream", session=session, upstream_path=upstream_path)
        if core.auth is not None:
            # One socket, one caller: authenticated on the upgrade, bound for the session's life.
            ex.public_origin = core.public_url or f"{request.scheme}://{request.host or route.netloc}"
            refused = core.admit(ex, request.headers)
            if refused is not None:
                return _aiohttp_reply(refused)
            session.identity = ex.identity
            headers.pop("authorization", None)
            headers.update(route.upstream_headers(ex.identity["tenant"] if ex.identity else None))
        try:
            async with asyncio.timeout(self.settings.connect_timeout_seconds):
                upstream = await self.client.ws_connect(
                    URL(f"{scheme}://{route.netloc}{upstream_path}", encoded=True),
                    protocols=offered, headers=headers, max_msg_size=2 * self._limit, autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            # The upstream's own refusal status (401, 403, 404...) tells the client why; an
            # answer that is no refusal (a 200 instead of 101) is a failure of the upstream.
            status = exc.status if exc.status and exc.status >= 400 else 502
            return web.Response(status=status, text=f"mcpfw: the upstream refused the WebSocket: {exc.message}\n")
        except TimeoutError:
            return _aiohttp_reply(core.upstream_failed(ex, "the WebSocket handshake timed out", status=504))
        except (aiohttp.ClientError, OSError) as exc:
            return _aiohttp_reply(core.upstream_failed(ex, f"cannot open the WebSocket: {_why(exc)}"))
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=2 * self._limit, autoping=True
        )
        await client.prepare(request)
        inspection = WebSocketInspection(core.inspector, session, self._limit)
        pumps = [
            asyncio.ensure_future(_pump(client, upstream, inspection.from_client)),
            asyncio.ensure_future(_pump(upstream, client, inspection.from_server)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await upstream.close()
            await client.close()
        return client


async def relay_response(conn: ServerConnection, upstream: UpstreamResponse, changes: dict[str, str] | None = None) -> None:
    """Pass a response on as it arrives, body bytes unchanged."""
    length = None if upstream.chunked else upstream.length
    lines = header_block(upstream.raw, _NOT_RETURNED, changes)
    conn.start(upstream.status, lines, reason=upstream.reason or None, length=length, date=not upstream.has_date)
    conn.on_lost = upstream.close
    try:
        while True:
            conn.write(upstream.take())
            if upstream.finished:
                break
            await conn.drain()
            await upstream.more()
        conn.end()
    except ConnectionResetError:
        upstream.close()
    except UpstreamError:
        upstream.close()
        conn.close()  # the client sees the body cut short, as it was


async def _pump(source: Any, sink: Any, judge: Any) -> None:
    """Relay one direction of a WebSocket: judge each message, answer denials at the source."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            relay = judge(message.data.encode("utf-8"))
            if relay.reply is not None:
                await source.send_str(relay.reply.decode("utf-8"))
            if relay.forward is not None:
                await sink.send_str(relay.forward.decode("utf-8"))
        elif message.type == aiohttp.WSMsgType.BINARY:
            relay = judge(message.data)
            if relay.reply is not None:
                await source.send_bytes(relay.reply)
            if relay.forward is not None:
                await sink.send_bytes(relay.forward)
        else:
            break


def _aiohttp_reply(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
        err = exc.os_error
        return os.strerror(err.errno) if err.errno else (err.strerror or str(err))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    text = str(exc)
    return text or type(exc).__name__
