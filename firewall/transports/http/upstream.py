"""The upstream side of the lean listener: HTTP/1.1 over pooled keep-alive connections.

The listener writes each request head itself (it already has the client's header bytes),
so this module only connects (TCP, TLS or a Unix socket), sends, parses the response with
httptools and hands its body over whole or chunk by chunk. A connection goes back to the
pool once its response has been read to the end.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
from dataclasses import dataclass

import httptools

from .wire import HeaderList

MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # as a request's head (server.MAX_HEAD_BYTES); 1xx heads before it count
_HIGH_WATER = 256 * 1024  # body bytes buffered before the upstream is asked to wait
# A pooled connection idle for longer is checked for a close not yet heard before it is used
# (servers close idle ones after a few seconds: Node and uvicorn after 5).
_TRUSTED_IDLE = 1.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: host and port (TLS or not), or a Unix socket."""

    host: str
    port: int
    tls: bool = False
    unix: str | None = None

    @classmethod
    def of(cls, scheme: str, netloc: str) -> Origin:
        """The origin of a route: ``netloc`` is host[:port], an IPv6 host in brackets."""
        tls = scheme in ("https", "wss")
        if netloc.startswith("["):
            end = netloc.index("]")
            host, port = netloc[1:end], netloc[end + 2:]
        else:
            host, _, port = netloc.partition(":")
        return cls(host, int(port) if port else (443 if tls else 80), tls)


class UpstreamError(Exception):
    """The upstream could not be reached, did not answer in time, or broke off."""

    def __init__(self, why: str, *, connecting: bool = False, timed_out: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.connecting = connecting
        self.timed_out = timed_out


def why(exc: BaseException) -> str:
    """A short reason for a failed connection, e.g. "Connection refused"."""
    if isinstance(exc, (ssl.SSLError, socket.gaierror)):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class UpstreamResponse:
    """A response as it arrives: the head at once, the body whole or in chunks."""

    __slots__ = (
        "status", "reason", "raw", "length", "chunked", "has_date", "_conn", "_loop", "_head", "_chunks", "_buffered",
        "_complete", "_error", "_waiter", "_timer", "_high",
    )

    def __init__(self, conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.reason = b""
        self.raw: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.chunked = False
        self.has_date = False
        self._conn = conn
        self._loop = loop
        self._head: asyncio.Future[None] = loop.create_future()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._high = _HIGH_WATER

    @property
    def headers(self) -> HeaderList:
        return HeaderList(self.raw)

    # -- fed by the connection -------------------------------------------------------

    def _body(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self._high:
            self._conn.pause()
        self._wake()

    def _done(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self._head.done():
            self._error = error
            self._head.set_exception(error)
            return
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- read by the listener --------------------------------------------------------

    async def read(self, limit: int, timeout: float) -> bytes | None:
        """The whole body, or None once it grows past ``limit`` (the connection is dropped)."""
        if self.length is not None and self.length > limit:
            self.close()
            return None
        if not self._complete:
            self._high = limit  # read on until the limit: beyond it the body is refused anyway
            self._arm(timeout)
            try:
                while True:
                    if self._error is not None:
                        raise self._error
                    if self._complete:
                        break
                    if self._buffered > limit:
                        self.close()
                        return None
                    await self._wait()
            finally:
                self._disarm()
        if self._buffered > limit:
            self.close()
            return None
        chunks = self._chunks
        self._chunks = []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def take(self) -> bytes:
        """The body bytes received since the last call (b"" when none)."""
        chunks = self._chunks
        if not chunks:
            return b""
        self._chunks = []
        self._buffered = 0
        self._conn.resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def finished(self) -> bool:
        """The whole body has arrived and been taken."""
        return self._complete and not self._chunks

    async def more(self) -> None:
        """Wait for more of the body (or its end); raises UpstreamError if it broke off."""
        if self._chunks or self._complete:
            return
        if self._error is not None:
            raise self._error
        await self._wait()
        if not self._chunks and not self._complete and self._error is not None:
            raise self._error

    def _wait(self) -> asyncio.Future[None]:
        self._waiter = self._loop.create_future()
        return self._waiter

    def _arm(self, timeout: float) -> None:
        self._timer = self._loop.call_later(timeout, self._conn.time_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool if it can."""
        self._disarm()
        self._conn.finished(self)

    def close(self) -> None:
        """Drop the connection (the client left, or the body is not wanted)."""
        self._disarm()
        self._conn.abort()


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, key: Origin) -> None:
        self._pool = pool
        self.key = key
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._response: UpstreamResponse | None = None
        self._keep = True
        self._head_only = False
        self._paused = False
        self._seen_bytes = False
        self._final_seen = False  # the final (non-1xx) response head of the request arrived
        self._head_bytes = 0  # bytes read for the request before its final head was complete

    # -- requests --------------------------------------------------------------------

    def send(self, data: bytes, body: bytes, *, head_only: bool) -> UpstreamResponse:
        assert self.transport is not None
        response = UpstreamResponse(self, self._loop)
        self._response = response
        self._head_only = head_only
        self._seen_bytes = False
        self._final_seen = False
        self._head_bytes = 0
        if len(body) < 65536:
            self.transport.write(data + body if body else data)
        else:
            self.transport.writelines((data, body))
        return response

    def finished(self, response: UpstreamResponse) -> None:
        if self._response is response and response._complete and response._error is None and self._keep and not self.closed:
            self._response = None
            self.resume()
            self._pool.put(self)
        elif self._response is response:
            self.abort()

    def time_out(self) -> None:
        response = self._response
        self.abort()
        if response is not None:
            response._fail(UpstreamError("timed out", timed_out=True))

    def readable(self) -> bool:
        """Whether bytes (a close, most likely) wait unread on the idle socket: a server that
        closed it while this process was busy has not been heard yet, and a POST, which is
        never sent twice, would be lost on it."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            ready, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def abort(self) -> None:
        self._keep = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._seen_bytes = True
        if self._response is None:
            self.abort()  # nothing was asked: a broken or hostile peer
            return
        try:
            self._parser.feed_data(data)
            if not self._final_seen:
                # llhttp holds a field's bytes until the field ends, without a limit: a server
                # that never ends its head would have them all held here.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
                    self.abort()
                    self._response._fail(UpstreamError(f"the response head is over {MAX_RESPONSE_HEAD_BYTES} bytes"))
        except httptools.HttpParserUpgrade:
            self.abort()  # 101 Switching Protocols is not proxied here (failed in on_headers_complete)
        except httptools.HttpParserError as exc:
            self.abort()
            if self._response is not None:
                cause = exc.__context__ if isinstance(exc.__context__, UpstreamError) else None
                self._response._fail(cause or UpstreamError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._keep = False
        self._pool.forget(self)
        response = self._response
        if response is None or response._error is not None:
            return
        if exc is None and response._head.done() and response.length is None and not response.chunked:
            response._done()  # a body delimited by the end of the connection
            return
        response._fail(UpstreamError("the server closed the connection" if exc is None else why(exc)))

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._final_seen:
            # A second answer to one request (after a 204, say): it would be read into the
            # first one's response. The connection is dropped instead.
            self._keep = False
            raise UpstreamError("the server sent more than one response to a request")

    def on_status(self, reason: bytes) -> None:
        if self._response is not None:
            self._response.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head, llhttp reports a chunked body's trailer fields here: they are
        # dropped, never merged into the head that is relayed (the checks saw the head only).
        if self._response is not None and not self._response._head.done():
            self._response.raw.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        if response is None:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            response.raw = []  # an interim response: the real one follows
            response.reason = b""
            return
        self._final_seen = True
        if status == 101:  # upgrades are not served by this pool (WebSockets go through aiohttp)
            self._keep = False
            response._fail(UpstreamError("the server switched protocols (101) in answer to a plain request"))
            return
        response.status = status
        for name, value in response.raw:
            lower = name.lower()
            if lower == b"content-length":
                response.length = int(value) if value.strip().isdigit() else None
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                response.chunked = True
            elif lower == b"date":
                response.has_date = True
        if not self._parser.should_keep_alive():
            self._keep = False
        if not response._head.done():
            response._head.set_result(None)
        if self._head_only:
            self._keep = False  # llhttp would wait for the announced body
            response._done()  # (its announced length is passed on)
        elif status in (204, 304):
            response.length = 0
            response._done()

    def on_body(self, chunk: bytes) -> None:
        if self._response is not None:
            self._response._body(chunk)

    def on_message_complete(self) -> None:
        response = self._response
        if response is not None and response.status:
            self._complete()

    def _complete(self) -> None:
        response = self._response
        if response is not None and not response._complete:
            response._done()


class UpstreamPool:
    """Keep-alive connections to upstreams, reused most recently used first."""

    def __init__(self, *, connect_timeout: float, verify_tls: bool = True, keepalive: float = 15.0) -> None:
        self.loop = asyncio.get_running_loop()
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._verify = verify_tls

    async def request(
        self, origin: Origin, head: bytes, body: bytes, *, method: str, timeout: float
    ) -> UpstreamResponse:
        """Send one request and wait for the response's head (not its body)."""
        conn = self._take(origin) or await self._connect(origin)
        try:
            return await self._exchange(conn, head, body, method, timeout)
        except UpstreamError as exc:
            # A kept-alive connection the server had closed: try once more on a new one,
            # for requests that may safely be sent twice (as aiohttp does).
            if exc.timed_out or not conn.reused or conn._seen_bytes or method not in _IDEMPOTENT:
                raise
        conn = await self._connect(origin)
        return await self._exchange(conn, head, body, method, timeout)

    async def _exchange(
        self, conn: UpstreamConnection, head: bytes, body: bytes, method: str, timeout: float
    ) -> UpstreamResponse:
        response = conn.send(head, body, head_only=method == "HEAD")
        if not response._head.done():
            timer = self.loop.call_later(timeout, conn.time_out)
            try:
                await response._head
            finally:
                timer.cancel()
        else:
            response._head.result()
        return response

    def _take(self, origin: Origin) -> UpstreamConnection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = self.loop.time()
        oldest = now - self._keepalive
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest and (now - conn.idle_since < _TRUSTED_IDLE or not conn.readable()):
                conn.reused = True
                return conn
            conn.abort()
        return None

    async def _connect(self, origin: Origin) -> UpstreamConnection:
        loop = self.loop
        conn = UpstreamConnection(self, origin)
        try:
            async with asyncio.timeout(self._connect_timeout):
                if origin.unix is not None:
                    await loop.create_unix_connection(lambda: conn, origin.unix)
                elif origin.tls:
                    await loop.create_connection(
                        lambda: conn, origin.host, origin.port, ssl=self._tls(), server_hostname=origin.host
                    )
                else:
                    await loop.create_connection(lambda: conn, origin.host, origin.port)
        except TimeoutError:
            raise UpstreamError(f"no connection within {self._connect_timeout:g} s", connecting=True, timed_out=True) from None
        except OSError as exc:
            raise UpstreamError(why(exc), connecting=True) from None
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            if not self._verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    def put(self, conn: UpstreamConnection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self) -> None:
        """Close connections idle for longer than the keep-alive time."""
        oldest = self.loop.time() - self._keepalive
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= oldest]:
                idle.remove(conn)
                conn.abort()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
