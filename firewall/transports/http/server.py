"""The client side of the lean listener: a strict HTTP/1.1 server on an asyncio Protocol.

httptools (llhttp, the parser of Node.js) splits the bytes; this module keeps a
connection's state: one request at a time in the order received, each read whole before
it is handled (bodies are bounded by the message size limit anyway), with deadlines for
clients that trickle their request (slow-loris) and a response writer that can stream.
WebSocket upgrades are handed to a callback with the bytes already received.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httptools

from .replies import Reply
from .wire import CRLF, DATE, HeaderList, decode, encode, reason_of

log = logging.getLogger("mcpfw.http")

TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})
_MAX_QUEUED = 16  # pipelined requests held before reading pauses
MAX_HEAD_BYTES = 64 * 1024  # a request's line and fields, counted as they arrive


@dataclass(slots=True)
class ServerSettings:
    client_timeout: float  # to send a request's headers, then again its body
    max_body: int
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = 128
    idle_timeout: float = 300.0  # an idle keep-alive connection is closed after this
    max_connections: int = 0  # open client connections at most (0: no limit)
    max_connections_per_client: int = 0  # from one client address at most (0: no limit)
    open_per_client: dict[str, int] = field(default_factory=dict)  # (kept by the connections)


@dataclass(slots=True, eq=False)
class IncomingRequest:
    """A client's request, headers and complete body."""

    method: str
    target: str  # the request target as sent: path and query
    headers: HeaderList
    http11: bool
    keep_alive: bool
    has_body: bool  # Content-Length or chunked: a body was announced, maybe empty
    internal: bool = False  # arrived on a worker's Unix socket
    body: bytes = b""


class Handler(Protocol):
    """What the listener does with requests; the connection only moves bytes."""

    async def serve(self, request: IncomingRequest, conn: ServerConnection) -> None: ...

    def too_large(self, request: IncomingRequest, size: int) -> Reply: ...

    def too_slow(self, request: IncomingRequest | None, size: int) -> Reply | None: ...

    def upgrade(self, request: IncomingRequest, conn: ServerConnection, rest: bytes) -> None: ...

    def unreadable(self, status: int, why: str) -> None:
        """Record a request refused before it could be read (malformed, a head too large)."""
        ...


class ServerConnection(asyncio.Protocol):
    """One client connection: parse, hand each request over, write its response."""

    def __init__(
        self, handler: Handler, settings: ServerSettings, registry: set[ServerConnection], *, internal: bool = False,
        preface: bytes = b"",
    ) -> None:
        self._handler = handler
        self._preface = preface  # bytes read by another worker before it handed the connection over
        self._settings = settings
        self._registry = registry
        self._internal = internal
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = self._loop.time()
        # the request being parsed
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_fed = 0  # bytes received while a request's head is incomplete
        self._head_began = False  # its first bytes came in the chunk being fed
        self._peer: str | None = None
        self._parsing: IncomingRequest | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_message = False
        self._refused = False  # the rest of the input is ignored, the connection is closing
        self._refusal: bytes | None = None  # its answer, sent once the responses before it are
        self._feeding = False
        self._deadline: asyncio.TimerHandle | None = None
        # requests handled one after the other
        self._queue: deque[IncomingRequest] = deque()
        self._active: IncomingRequest | None = None
        self._task: asyncio.Task[None] | None = None
        self._upgrade: tuple[IncomingRequest, bytes] | None = None
        # the response being written
        self._started = False
        self._chunked = False
        self._head_only = False
        self._must_close = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._out: list[bytes] = []  # a streamed response's bytes not yet handed to the transport
        self.on_lost: Callable[[], None] | None = None  # e.g. stop an upstream stream

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small SSE events go out at once
        if not self._internal and not self._admit(transport):
            return
        self._registry.add(self)
        if not self._internal and not self._preface:
            # A client that connects and sends nothing still gets a deadline: idle sockets
            # would otherwise hold file descriptors until the idle sweep.
            self._deadline = self._loop.call_later(self._settings.client_timeout, self._expire)
        if self._preface:
            preface, self._preface = self._preface, b""
            self.data_received(preface)  # before anything the socket still holds

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether the limits on open connections leave room for this one (else it is closed)."""
        settings = self._settings
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None
        if settings.max_connections and len(self._registry) >= settings.max_connections:
            why = f"{len(self._registry)} connections are open (proxy.max_connections)"
        elif settings.max_connections_per_client and self._peer is not None and \
                settings.open_per_client.get(self._peer, 0) >= settings.max_connections_per_client:
            why = f"{self._peer} has {settings.max_connections_per_client} connections open (proxy.max_connections_per_client)"
        else:
            if self._peer is not None:
                settings.open_per_client[self._peer] = settings.open_per_client.get(self._peer, 0) + 1
            return True
        warn_refused_connection(why)
        self.closed = True
        transport.close()
        return False

    def leave(self) -> None:
        """Stop counting this connection (it closed, or the protocol it was handed to lost it)."""
        if self in self._registry:
            self._registry.discard(self)
            if self._peer is not None:
                counts = self._settings.open_per_client
                left = counts.get(self._peer, 1) - 1
                if left > 0:
                    counts[self._peer] = left
                else:
                    counts.pop(self._peer, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.leave()
        self._cancel_deadline()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("the client closed the connection"))
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            if self._upgrade is not None:  # the upgrade waits for the response in flight
                request, rest = self._upgrade
                self._upgrade = (request, rest + data)
            return
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._feeding = False
            self._upgraded(data[upgrade.args[0]:])
            return
        except httptools.HttpParserCallbackError:
            self._feeding = False
            if not self._refused:
                log.exception("mcpfw: error while reading a request")
                self._reject(_BAD_REQUEST, 400, "the request could not be read")
            return
        except httptools.HttpParserError as exc:
            self._feeding = False
            self._reject(_BAD_REQUEST, 400, f"malformed HTTP request: {str(exc)[:200]}")
            return
        self._feeding = False
        if self._in_message and self._parsing is None:
            # The head is still incomplete. httptools keeps a header it has not finished in
            # memory and copies it at every chunk, so its size is checked here, not only when
            # a header completes. (The chunk the request began in may hold the end of the
            # one before: not counted.)
            if self._head_began:
                self._head_began = False
            else:
                self._head_fed += len(data)
                if self._head_fed > self._settings.max_head_bytes:
                    self._reject(HEAD_TOO_LARGE, 431, f"request head over {self._settings.max_head_bytes} bytes")
                    return
        if self._in_message and self._deadline is None and self._active is None:
            self._deadline = self._loop.call_later(self._settings.client_timeout, self._expire)

    def eof_received(self) -> bool | None:
        if self._active is None:
            return None  # nothing in flight: close
        self._must_close = True
        return True  # half-closed: the response in flight is still written

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._raw = []
        self._head_size = 0
        self._head_fed = 0
        self._head_began = True
        if self._active is None:
            self._cancel_deadline()  # the first-byte deadline gives way to the request's own

    def on_url(self, part: bytes) -> None:
        self._url += part
        self._grow_head(len(part))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)  # (_grow_head, inlined: called for every field)
        if self._head_size > self._settings.max_head_bytes:
            self._grow_head(0)
        if self._parsing is not None:
            # A trailer field of a chunked body (llhttp reports them here, after the head):
            # dropped. Merged into the head it would reach the server unseen by the checks,
            # which read the head before the body.
            return
        self._raw.append((name, value))
        if len(self._raw) > self._settings.max_headers:
            self._reject(HEAD_TOO_LARGE, 431, f"more than {self._settings.max_headers} header fields")

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = HeaderList(self._raw)
        has_body = False
        length = None
        for name, value in self._raw:
            lower = name.lower()
            if lower == b"content-length":
                has_body = True
                length = int(value) if value.strip().isdigit() else None
            elif lower == b"transfer-encoding":
                has_body = True
        request = IncomingRequest(
            decode(parser.get_method()), decode(self._url), headers,
            parser.get_http_version() == "1.1", parser.should_keep_alive(), has_body, self._internal,
        )
        self._parsing = request
        self._body = []
        self._body_size = 0
        if parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next
        if length is not None and length > self._settings.max_body:
            self._refuse_reply(self._handler.too_large(request, length))
            return
        if has_body and length != 0:
            if self._deadline is not None:  # a fresh deadline for the body
                self._cancel_deadline()
                if self._active is None:
                    self._deadline = self._loop.call_later(self._settings.client_timeout, self._expire)
            expect = headers.get("expect")
            # (Not while a response is being written: the client sends its body after a pause.)
            if expect is not None and expect.lower() == "100-continue" and self._active is None and self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        self._body.append(chunk)
        self._body_size += len(chunk)
        if self._body_size > self._settings.max_body and self._parsing is not None:
            self._refuse_reply(self._handler.too_large(self._parsing, self._body_size))

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is None or self._refused or self._parser.should_upgrade():
            return  # (an upgrade is taken when feed_data raises HttpParserUpgrade)
        self._parsing = None
        self._in_message = False
        self._cancel_deadline()
        body = self._body
        if body:
            request.body = body[0] if len(body) == 1 else b"".join(body)
            self._body = []
        if self._active is None:
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= _MAX_QUEUED and self.transport is not None:
                self.transport.pause_reading()

    # -- limits ----------------------------------------------------------------------

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._settings.max_head_bytes:
            self._reject(HEAD_TOO_LARGE, 431, f"request head over {self._settings.max_head_bytes} bytes")

    def _reject(self, raw_response: bytes, status: int, why: str) -> None:
        """Refuse a request that could not be read, recorded by the handler."""
        if not self._refused:
            try:
                self._handler.unreadable(status, why)
            except Exception:  # the refusal itself must happen whatever the record does
                log.exception("mcpfw: cannot record a refused request")
        self._refuse(raw_response)

    def _expire(self) -> None:
        self._deadline = None
        if self.closed or self._refused or self._active is not None:
            return
        request = self._parsing
        reply = self._handler.too_slow(request, self._body_size)
        if reply is None:
            self._refuse(TIMEOUT_RESPONSE)
        else:
            self._refuse_reply(reply)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, raw_response: bytes) -> None:
        """Answer at once and close: the rest of the input is not read."""
        self._refused = True
        self._cancel_deadline()
        if self._active is not None:
            # Pipelined behind a request still being answered: the refusal follows the
            # answers to the requests before it, then the connection closes.
            self._refusal = raw_response
        elif self.transport is not None and not self.closed:
            self.transport.write(raw_response)
            self.transport.close()
        if self._feeding:
            raise _Refused  # stops llhttp in the middle of the input

    def _refuse_reply(self, reply: Reply) -> None:
        self._refuse(closing_reply(reply))

    # -- handing requests over -------------------------------------------------------

    def _start(self, request: IncomingRequest) -> None:
        self._active = request
        self._started = self._chunked = False
        self._head_only = request.method == "HEAD"
        self._must_close = not request.keep_alive
        # Eager: the handler runs now, up to its first real wait (the upstream's answer).
        task = asyncio.Task(self._run(request), loop=self._loop, eager_start=True)  # type: ignore[call-arg]
        if not task.done():
            self._task = task

    async def _run(self, request: IncomingRequest) -> None:
        try:
            await self._handler.serve(request, self)
            if self._started and not self.closed:
                self.end()  # no-op when the handler ended the response
        except ConnectionResetError:
            self._must_close = True
        except asyncio.CancelledError:
            self._must_close = True
            raise
        except Exception:
            log.exception("mcpfw: error while handling %s %s", request.method, request.target)
            self._must_close = True
            if not self._started:
                self.respond(500, [b"content-type: text/plain; charset=utf-8\r\n"], b"mcpfw: internal error\n")
        finally:
            self._finished()

    def _finished(self) -> None:
        self._task = None
        self._active = None
        self.on_lost = None
        self._out = []
        if self.closed:
            return
        if not self._started:
            self.respond(500, [], b"")
        if self._must_close:
            assert self.transport is not None
            self.transport.close()
            return
        self.idle_since = self._loop.time()
        if self._upgrade is not None:
            request, rest = self._upgrade
            self._upgrade = None
            self._handler.upgrade(request, self, rest)
        elif self._queue:
            if len(self._queue) == _MAX_QUEUED and self.transport is not None and not self._refused:
                self.transport.resume_reading()
            self._start(self._queue.popleft())
        elif self._refusal is not None:
            assert self.transport is not None
            self.transport.write(self._refusal)
            self._refusal = None
            self.transport.close()
        elif self._in_message and self._deadline is None:
            self._deadline = self._loop.call_later(self._settings.client_timeout, self._expire)

    def _upgraded(self, rest: bytes) -> None:
        request = self._parsing
        self._parsing = None
        self._cancel_deadline()
        if request is None or request.method == "CONNECT":
            self._reject(_BAD_REQUEST, 400, "CONNECT is not served here")
            return
        upgrade = request.headers.get("upgrade")
        if upgrade is None or upgrade.lower() != "websocket":
            self._reparse_without_upgrade(request, rest)
            return
        self._refused = True  # from here on the bytes belong to the new protocol
        if self._active is None and not self._queue:
            self._handler.upgrade(request, self, rest)
        else:
            self._upgrade = (request, rest)

    def _reparse_without_upgrade(self, request: IncomingRequest, rest: bytes) -> None:
        """Only WebSocket upgrades are taken; any other (h2c, say) is read as a plain request,
        without the hop-by-hop Upgrade header that made llhttp stop."""
        head = [b"%s %s HTTP/%s\r\n" % (encode(request.method), encode(request.target), b"1.1" if request.http11 else b"1.0")]
        for name, value in request.headers.raw:
            if name.lower() != b"upgrade":
                head += (name, b": ", value, CRLF)
        head.append(CRLF)
        self._parser = httptools.HttpRequestParser(self)
        self.data_received(b"".join(head) + rest)

    def detach(self) -> asyncio.Transport:
        """Give the transport to another protocol (a WebSocket upgrade). The connection stays
        in the registry, counted by the connection caps, until the new protocol drops it."""
        assert self.transport is not None
        self._cancel_deadline()
        self.closed = True
        return self.transport

    def movable(self) -> bool:
        """True while the request being served is all this connection has read: no later
        bytes are held, no response started, so the socket can move to another process."""
        transport = self.transport
        return (
            not self.closed and not self._refused and not self._feeding and not self._in_message
            and not self._queue and self._upgrade is None and not self._started and not self._internal
            and transport is not None and not transport.is_closing()
        )

    def release(self) -> None:
        """Forget the connection without a word to the client: its socket now belongs to
        another process (which received a duplicate), so only this process's copy closes."""
        assert self.transport is not None
        self._cancel_deadline()
        transport = self.detach()
        transport.close()

    @property
    def busy(self) -> bool:
        return self._active is not None or self._in_message

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- writing a response ----------------------------------------------------------

    def respond(
        self, status: int, lines: list[bytes], body: bytes, *, reason: bytes | None = None, close: bool = False, date: bool = True
    ) -> None:
        """A whole response: ``lines`` are ``name: value`` header lines (or their parts);
        ``date`` adds a Date header (off when the upstream's is passed on)."""
        if close:
            self._must_close = True
        self._started = True
        if self.closed or self.transport is None:
            return
        head = self._status_line(status, reason, lines, date)
        if status not in _NO_BODY_STATUS and status >= 200:
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(CRLF)
        if body and not self._head_only and status not in _NO_BODY_STATUS:
            head.append(body)
        self.transport.write(b"".join(head))

    def reply(self, reply: Reply, *, close: bool = False) -> None:
        lines = [b"%s: %s\r\n" % (encode(k), encode(v)) for k, v in reply.headers.items()]
        self.respond(reply.status, lines, reply.body, close=close)

    def start(
        self, status: int, lines: list[bytes], *, reason: bytes | None = None, length: int | None = None, date: bool = True
    ) -> None:
        """The head of a streamed response; the body follows with :meth:`write`."""
        self._started = True
        request = self._active
        if length is None and status not in _NO_BODY_STATUS and not self._head_only:
            if request is not None and request.http11:
                self._chunked = True
            else:
                self._must_close = True  # HTTP/1.0: the end of the body is the end of the connection
        if self.closed or self.transport is None:
            return
        head = self._status_line(status, reason, lines, date)
        if self._chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        elif length is not None and status not in _NO_BODY_STATUS:
            head.append(b"content-length: %d\r\n" % length)
        head.append(CRLF)
        self._out = head

    def write(self, chunk: bytes) -> None:
        """Part of a streamed body, held until :meth:`flush` (or :meth:`end`): what arrived
        together from the upstream leaves in one send. Raises ConnectionResetError once the
        client is gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if not chunk or self._head_only:
            return
        if self._chunked:
            self._out += (b"%x\r\n" % len(chunk), chunk, CRLF)
        else:
            self._out.append(chunk)

    def flush(self) -> None:
        """Send what :meth:`start` and :meth:`write` hold; call before waiting for more."""
        if self._out:
            out = self._out
            self._out = []
            if not self.closed and self.transport is not None:
                self.transport.write(b"".join(out))

    async def drain(self) -> None:
        """Flush, and wait while the client reads slower than the body is produced."""
        self.flush()
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if self._write_paused:
            if self._drain is None:
                self._drain = self._loop.create_future()
            await self._drain

    def end(self) -> None:
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self._chunked = False
        self.flush()

    def _status_line(self, status: int, reason: bytes | None, lines: list[bytes], date: bool) -> list[bytes]:
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_of(status))]
        head += lines
        if date:
            head.append(DATE.line())
        request = self._active
        if self._must_close:
            head.append(b"connection: close\r\n")
        elif request is not None and not request.http11:
            head.append(b"connection: keep-alive\r\n")
        return head


class _Refused(Exception):
    """Raised inside a parser callback to stop reading a refused request."""


_refusal_warned = 0.0


def warn_refused_connection(why: str) -> None:
    """Log refused connections at most every ten seconds (a flood must not flood the log)."""
    global _refusal_warned
    now = time.monotonic()
    if now - _refusal_warned >= 10.0:
        _refusal_warned = now
        log.warning("mcpfw: refusing new client connections: %s", why)


def serve_factory(
    handler: Handler, settings: ServerSettings, registry: set[ServerConnection], *, internal: bool = False,
    preface: bytes = b"",
) -> Callable[[], ServerConnection]:
    """Connections of one listening socket; ``registry`` tracks them for idle sweeps and shutdown.
    ``preface``: bytes already read from an adopted connection, parsed first."""
    return lambda: ServerConnection(handler, settings, registry, internal=internal, preface=preface)


def closing_reply(reply: Reply) -> bytes:
    """A refusal that ends the connection, as bytes on the wire (both HTTP engines send these)."""
    head = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reason_of(reply.status))]
    head += [b"%s: %s\r\n" % (encode(k), encode(v)) for k, v in reply.headers.items() if k.lower() != "connection"]
    head += (DATE.line(), b"connection: close\r\n", b"content-length: %d\r\n\r\n" % len(reply.body), reply.body)
    return b"".join(head)
