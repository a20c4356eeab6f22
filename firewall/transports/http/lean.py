"""The lean reverse listener: aiohttp's low-level server and client around the exchange logic.

mitmproxy costs 2-3 ms of CPU per request; a reverse proxy that only has to read one
HTTP/1.1 request, ask the pipeline and pass the answer on needs a fraction of that. This
engine serves reverse mode; mitmproxy serves regular and transparent modes, where its
CONNECT handling and TLS interception are needed. Both call the same
:class:`~.exchange.HttpInspection`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ... import errors
from ...config import ProxyConfig
from .exchange import Exchange, HttpInspection, Request
from .outbound import client_session
from .replies import Reply
from .routes import Route, Router
from .sessions import Channel
from .websocket import WebSocketInspection

log = logging.getLogger("mcpfw.http")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_NOT_FORWARDED = HOP_BY_HOP | {"content-length", "host"}
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_WS_HEADERS = ("authorization", "cookie", "origin", "mcp-protocol-version")
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class Headers:
    """:class:`~.exchange.HeaderView` over aiohttp's header multidict."""

    __slots__ = ("_h",)

    def __init__(self, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> None:
        self._h = headers

    def get(self, name: str) -> str | None:
        return self._h.get(name)

    def getall(self, name: str) -> list[str]:
        return self._h.getall(name, [])

    def names(self) -> Iterable[str]:
        return self._h.keys()


class Affinity(Protocol):
    """Keeps every request of an MCP session in the worker process that owns the session."""

    async def intercept(self, request: web.BaseRequest) -> web.StreamResponse | None: ...

    def owner(self, request: web.BaseRequest, upstream_path: str) -> int | None: ...

    async def relay(self, request: web.BaseRequest, owner: int, body: bytes) -> web.StreamResponse: ...

    async def adopt(self, route: Route, sid: str, channel: Channel) -> None: ...


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, plus a deadline for receiving a request's headers.

    A client that trickles its headers (slow-loris) would otherwise hold the connection
    forever: it gets 408 and the connection is closed once the deadline passes.
    """

    def __init__(self, manager: web.Server, *, header_timeout: float, on_timeout: Any, **kwargs: Any) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
        self._header_timeout = header_timeout
        self._on_timeout = on_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self.mcpfw_busy = False

    def data_received(self, data: bytes) -> None:
        if not self.mcpfw_busy and self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(self._header_timeout, self._expire)
        super().data_received(data)

    def request_started(self) -> None:
        self.mcpfw_busy = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def request_finished(self) -> None:
        self.mcpfw_busy = False

    def _expire(self) -> None:
        self._deadline = None
        transport = self.transport
        if self.mcpfw_busy or transport is None or transport.is_closing():
            return
        transport.write(_TIMEOUT_RESPONSE)
        transport.close()
        self._on_timeout()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


class _GuardedServer(web.Server):
    def __init__(self, handler: Any, *, header_timeout: float, on_timeout: Any) -> None:
        super().__init__(handler, access_log=None, auto_decompress=False)
        self._guard = {"header_timeout": header_timeout, "on_timeout": on_timeout}

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, access_log=None, auto_decompress=False, **self._guard)


class LeanListener:
    """Serves reverse mode: one listening socket, aiohttp on both sides."""

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
        self._client: aiohttp.ClientSession | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._web = _GuardedServer(self.handle, header_timeout=settings.client_timeout_seconds, on_timeout=self._slow_headers)

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = client_session(connect_timeout=self.settings.connect_timeout_seconds)
        return self._client

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start accepting on ``host:port``; return the bound port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._web, host, port, reuse_port=reuse_port or None, backlog=1024)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def listen_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(self._web, path))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        await self._web.shutdown(2.0)
        for server in self._servers:
            await server.wait_closed()
        if self._client is not None:
            await self._client.close()

    def _slow_headers(self) -> None:
        route = self.router.routes[0]
        self.core.refuse(
            route, code=errors.INVALID_REQUEST, reason="client_timeout", status=408,
            message=f"the client did not send its request headers within {self.settings.client_timeout_seconds:g} s",
        )

    # -- one request -----------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        guarded = isinstance(protocol, _GuardedHandler)
        if guarded:
            protocol.request_started()
        try:
            return await self._handle(request)
        finally:
            if guarded:
                protocol.request_finished()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        affinity = self.affinity
        if affinity is not None:
            own = await affinity.intercept(request)
            if own is not None:
                return own
        host = request.headers.get("host")
        match = self.router.match(host, request.raw_path)
        if match is None:
            return _plain(404, "mcpfw: no upstream is configured for this path\n")
        route, upstream_path = match
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request, route, upstream_path)
        body = await self._read_body(request, route)
        if isinstance(body, Reply):
            return _respond(body, close=True)
        if affinity is not None:
            owner = affinity.owner(request, upstream_path)
            if owner is not None:
                return await affinity.relay(request, owner, body)
        result = self.core.request(
            route, Request(request.method, request.raw_path, upstream_path, host, Headers(request.headers), body)
        )
        if isinstance(result, Reply):
            return _respond(result)
        return await self._forward(request, result, body)

    async def _read_body(self, request: web.BaseRequest, route: Route) -> bytes | Reply:
        limit = self._limit
        length = request.content_length
        if length is not None and length > limit:
            return self.core.refuse(route, code=errors.MESSAGE_TOO_LARGE, reason="too_large", message="", status=413, size=length)
        if not request.body_exists:
            return b""
        if request.headers.get("expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.client_timeout_seconds):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > limit:
                        return self.core.refuse(
                            route, code=errors.MESSAGE_TOO_LARGE, reason="too_large", message="", status=413, size=size
                        )
                    chunks.append(chunk)
        except TimeoutError:
            return self.core.refuse(
                route, code=errors.INVALID_REQUEST, reason="client_timeout", status=408, size=size,
                message=f"the client did not send its request body within {self.settings.client_timeout_seconds:g} s",
            )
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _upstream_headers(self, request: web.BaseRequest, ex: Exchange) -> tuple[CIMultiDict[str], set[str]]:
        headers: CIMultiDict[str] = CIMultiDict()
        changes = ex.set_headers
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in _NOT_FORWARDED or lower in changes:
                continue
            headers.add(name, value)
        for name, value in changes.items():
            headers[name] = value
        if self.settings.preserve_host and "host" in request.headers:
            headers["Host"] = request.headers["host"]
        skip = {name for name in _SKIP_AUTO if name not in headers}
        return headers, skip

    async def _forward(self, request: web.BaseRequest, ex: Exchange, body: bytes) -> web.StreamResponse:
        route = ex.route
        core = self.core
        headers, skip = self._upstream_headers(request, ex)
        data = ex.body if ex.body is not None else body
        url = URL(route.origin + ex.upstream_path, encoded=True)
        try:
            async with asyncio.timeout(self.settings.upstream_timeout_seconds):
                upstream = await self.client.request(
                    request.method, url, data=data if data or request.body_exists else None,
                    headers=headers, skip_auto_headers=skip, allow_redirects=False,
                )
        except TimeoutError:
            return _respond(core.upstream_failed(
                ex, f"no response within {self.settings.upstream_timeout_seconds:g} s", status=504))
        except aiohttp.ClientConnectorError as exc:
            return _respond(core.upstream_failed(ex, f"cannot connect to {route.netloc}: {_why(exc)}"))
        except (aiohttp.ClientError, OSError) as exc:
            return _respond(core.upstream_failed(ex, f"the connection failed: {_why(exc)}"))
        try:
            plan, changes = core.response_head(ex, upstream.status, Headers(upstream.headers))
            if ex.new_session_id is not None and self.affinity is not None and ex.channel is not None:
                await self.affinity.adopt(route, ex.new_session_id, ex.channel)
            if plan == "sse":
                return await self._stream_events(request, ex, upstream, changes)
            if plan in ("json", "metadata"):
                return await self._whole_body(ex, upstream, changes, plan)
            return await self._pass(request, upstream, changes)
        finally:
            upstream.release()

    async def _whole_body(
        self, ex: Exchange, upstream: aiohttp.ClientResponse, changes: dict[str, str], plan: str
    ) -> web.StreamResponse:
        core = self.core
        try:
            async with asyncio.timeout(self.settings.upstream_timeout_seconds):
                body = await _read_limited(upstream, self._limit)
        except TimeoutError:
            return _respond(core.upstream_failed(ex, "the response body did not arrive in time", status=504))
        except (aiohttp.ClientError, OSError) as exc:
            return _respond(core.upstream_failed(ex, f"the response broke off: {_why(exc)}"))
        status = upstream.status
        if body is None:
            body = b" " * (self._limit + 1)  # the pipeline refuses it by size, as any other message
        if plan == "metadata":
            body = core.metadata_body(ex, body)
        else:
            status, body = core.json_body(ex, status, body)
        headers = _response_headers(upstream.headers, changes)
        if status == 200 and upstream.status == 202:
            headers["content-type"] = "application/json"
        return web.Response(status=status, body=body, headers=headers)

    async def _stream_events(
        self, request: web.BaseRequest, ex: Exchange, upstream: aiohttp.ClientResponse, changes: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream.headers, changes))
        events = self.core.sse(ex)
        try:
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    out = events.feed(chunk)
                    if out:
                        await response.write(out)
                tail = events.finish()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError from exc
                tail = events.finish() + self.core.stream_failed(ex, f"the event stream broke off: {_why(exc)}")
            if tail:
                await response.write(tail)
            await response.write_eof()
        except ConnectionResetError:
            upstream.close()  # the client left: stop the server's stream too
        return response

    async def _pass(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, changes: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_response_headers(upstream.headers, changes))
        if upstream.content_length is not None and "transfer-encoding" not in upstream.headers:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientError):
            upstream.close()
        return response

    # -- WebSocket -------------------------------------------------------------------

    async def _websocket(self, request: web.BaseRequest, route: Route, upstream_path: str) -> web.StreamResponse:
        core = self.core
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        headers = {name: value for name in _WS_HEADERS if (value := request.headers.get(name)) is not None}
        if self.settings.preserve_host and request.headers.get("host"):
            headers["Host"] = request.headers["host"]
        scheme = "wss" if route.scheme == "https" else "ws"
        session = core.sessions.new_session(route, "websocket")
        ex = Exchange(route, "stream", session=session, upstream_path=upstream_path)
        try:
            async with asyncio.timeout(self.settings.connect_timeout_seconds):
                upstream = await self.client.ws_connect(
                    URL(f"{scheme}://{route.netloc}{upstream_path}", encoded=True),
                    protocols=offered, headers=headers, max_msg_size=2 * self._limit, autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            return _plain(exc.status or 502, f"mcpfw: the upstream refused the WebSocket: {exc.message}\n")
        except TimeoutError:
            return _respond(core.upstream_failed(ex, "the WebSocket handshake timed out", status=504))
        except (aiohttp.ClientError, OSError) as exc:
            return _respond(core.upstream_failed(ex, f"cannot open the WebSocket: {_why(exc)}"))
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


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None once it grows past ``limit``."""
    length = response.content_length
    if length is not None and length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _response_headers(upstream: CIMultiDictProxy[str], changes: dict[str, str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == "content-length" or lower in changes:
            continue
        headers.add(name, value)
    for name, value in changes.items():
        headers[name] = value
    return headers


def _respond(reply: Reply, *, close: bool = False) -> web.Response:
    response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    if close:
        response.force_close()
    return response


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
        err = exc.os_error
        return os.strerror(err.errno) if err.errno else (err.strerror or str(err))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    text = str(exc)
    return text or type(exc).__name__
