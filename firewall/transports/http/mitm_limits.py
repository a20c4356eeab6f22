"""The lean listener's client limits, given to the mitmproxy engine.

mitmproxy 12 reads a request head without a size limit (``# FIXME: protect against header
size DoS`` in its HTTP/1 server), gives a client no deadline for its request, takes any
number of connections and buffers whole bodies before an addon sees them. Addon hooks
cannot help with the first two: the head is read by the HTTP/1 layer before any hook
runs (the first, ``requestheaders``, sees it complete), and a hook only runs when the
layer has something to report, never because time passed. So two private methods are
wrapped, each version-guarded and idempotent as :func:`~.mitm.install_error_replies`:

* ``Http1Server._handle_event`` (:func:`install_request_limits`): a head is refused with
  431 once its bytes pass 64 KiB; deadlines (mitmproxy's own wakeup events) for a head,
  then a body, as the lean listener's; bytes a client pipelines while its answer is
  pending are bounded too (mitmproxy holds them all). HTTP/1 only: HTTP/2 clients keep
  mitmproxy's own behaviour.
* ``Http1Client._handle_event`` (:func:`install_response_limits`), the upstream side: a
  response head is held to the same 64 KiB (mitmproxy's client reader has the same FIXME),
  an exchange marked with :func:`answer_within` fails when its response head does not come
  in time, and a chunked response's trailer fields are dropped, as the lean listener drops
  them (mitmproxy raised ``NotImplementedError`` and sent its crash page).
* ``HttpStream.check_body_size`` (:func:`install_body_limits`), which mitmproxy calls for
  every chunk of a body it buffers: a body the addon marked as bounded is refused once it
  passes the message size limit, and one that cannot be JSON-RPC is streamed on instead.

Connection caps and the deadline of a connection that sends nothing are hooks of the
:class:`ClientLimits` addon. Every limit is inactive (mitmproxy's own behaviour) for a
mitmproxy instance that did not register one with :func:`register`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .replies import Reply
from .server import HEAD_TOO_LARGE, MAX_HEAD_BYTES, TIMEOUT_RESPONSE, closing_reply, warn_refused_connection

log = logging.getLogger("mcpfw.http")

_HEAD_END = re.compile(rb"\n\r?\n")  # how h11, mitmproxy's parser, finds the end of a head
_BLANK_LINES = re.compile(rb"(?:\r?\n)*")  # what h11 skips before a head, one line per read


def _start_of(buf: Any, size: int) -> bytes:
    """The first ``size`` bytes of an h11 ``ReceiveBuffer``, without copying the rest (a client
    may have sent a whole body ahead)."""
    data = getattr(buf, "_data", None)
    return bytes(data[:size]) if isinstance(data, bytearray) else bytes(buf)[:size]


def _drop_blank_lines(buf: Any) -> bool:
    """Remove every blank line at the start of an h11 ``ReceiveBuffer`` at once (whether any was)."""
    data = getattr(buf, "_data", None)
    found = _BLANK_LINES.match(data if isinstance(data, bytearray) else bytes(buf))
    if found is None or not found.end():
        return False
    buf.maybe_extract_at_most(found.end())
    return True

# Client connection id -> the raw HTTP response that replaces mitmproxy's error page
# (see install_error_replies in .mitm).
ERROR_REPLIES: dict[str, bytes] = {}
# Client connection id -> the last events of an event stream that broke off upstream
# (error events for its unanswered requests), written before the connection is closed.
STREAM_ENDS: dict[str, bytes] = {}


@dataclass(slots=True)
class BodyLimit:
    """Put on a flow by the addon's ``requestheaders`` hook: how its bodies are bounded.

    ``over(flow, request, prefix)`` is asked once a buffered body passes ``limit``: the
    reply that refuses it, or None to stream the rest unread (a request that cannot be
    JSON-RPC, whose first ``limit`` bytes were shown to the pipeline).
    """

    limit: int
    over: Callable[[Any, bool, bytes], Reply | None]


@dataclass(slots=True, eq=False)
class Limits:
    """What one mitmproxy instance enforces, and whom it tells about refusals."""

    client_timeout: float
    max_body: int
    max_connections: int  # resolved: 0 is no limit here
    max_connections_per_client: int
    # (status, why) of a request refused before it could be read: audited where a route is known
    unreadable: Callable[[Any, int, str], None]
    # a client too slow with its head (request None) or its body: the reply, or None for a bare 408
    too_slow: Callable[[Any, Any, int], Reply | None]
    max_head_bytes: int = MAX_HEAD_BYTES
    upstream_timeout: float = 0.0  # for a response head of an exchange marked by answer_within (0: none)
    open_per_client: dict[str, int] = field(default_factory=dict)
    admitted: dict[str, str] = field(default_factory=dict)  # client id -> its address
    first_byte: dict[str, asyncio.TimerHandle] = field(default_factory=dict)


_REGISTERED: dict[int, Limits] = {}  # id(mitmproxy options) -> its limits


def register(options: Any, limits: Limits) -> None:
    _REGISTERED[id(options)] = limits


def unregister(options: Any) -> None:
    _REGISTERED.pop(id(options), None)


def _limits_of(layer: Any) -> Limits | None:
    return _REGISTERED.get(id(layer.context.options))


# -- the HTTP/1 request reader ------------------------------------------------------------


def install_request_limits() -> bool:
    """Wrap mitmproxy's HTTP/1 server-side ``_handle_event`` (see the module's docstring).
    False when this mitmproxy does not have what is wrapped (no limit applies then)."""
    try:
        from mitmproxy.proxy import commands, events
        from mitmproxy.proxy.layers.http import _http1
        from mitmproxy.proxy.layers.http._base import ReceiveHttp
        from mitmproxy.net.http import http1
        from mitmproxy.proxy.layers.http._events import ErrorCode, RequestHeaders, RequestProtocolError
    except ImportError:
        return False
    server = getattr(_http1, "Http1Server", None)
    original = getattr(server, "_handle_event", None)
    if original is None or not all(hasattr(server, name) for name in ("read_headers", "read_body", "wait", "done", "passthrough")):
        return False
    if not hasattr(_http1, "make_body_reader") or not hasattr(http1, "read_request_head"):
        return False
    if getattr(original, "_mcpfw", False):
        return True

    def refuse(self: Any, raw: bytes) -> Any:
        self.state = self.done  # nothing more is read
        self._mcpfw_phase = None
        yield commands.SendData(self.conn, raw)
        yield commands.CloseConnection(self.conn)
        if self.request is not None and not self.request_done:
            # The stream learns its request will not complete (its flow ends with an error).
            yield ReceiveHttp(RequestProtocolError(self.stream_id, "mcpfw: request refused", ErrorCode.CLIENT_DISCONNECTED))

    def _handle_event(self: Any, event: Any) -> Any:
        limits = _limits_of(self)
        if limits is None:
            yield from original(self, event)
            return
        if isinstance(event, events.Wakeup):  # only this wrapper asks for wakeups here
            deadline = getattr(self, "_mcpfw_deadline", None)
            if getattr(self, "_mcpfw_phase", None) is not None and deadline is not None and time.monotonic() >= deadline:
                yield from expire(self, limits)
            return
        if isinstance(event, events.DataReceived):
            if self.state != self.passthrough:
                # (Through a CONNECT tunnel pass a TLS handshake's bytes, or those of the
                # request inside: the deadline set at the CONNECT runs until the reader inside
                # the tunnel, this wrapper too, sees its request's first byte.)
                note_first_byte(limits, self.context.client)
            request = self.request
            # (After a CONNECT or an upgrade the bytes may become a tunnel's: left as they are.)
            piped = self.state == self.wait and request is not None and (
                request.method.upper() == "CONNECT" or "upgrade" in request.headers)
            if piped and len(self.buf) + len(event.data) > limits.max_head_bytes + limits.max_body:
                log.warning("mcpfw: closing a connection that sent over %d bytes ahead of its answer",
                            limits.max_head_bytes + limits.max_body)
                self.state = self.done
                yield commands.CloseConnection(self.conn)
                return
            if not piped and self.state in (self.read_headers, self.wait):
                # Buffered here, then measured without the blank lines a head may follow
                # (RFC 9112 2.2): h11 drops one per read, so a client sending nothing but
                # CRLF would otherwise have mitmproxy hold all of it, every read passing the
                # test below (a blank line within the first 64 KiB).
                self.buf += event.data
                if _drop_blank_lines(self.buf) and self.state == self.read_headers:
                    self._mcpfw_started = self.stream_id  # the head's deadline runs from here
                event = events.DataReceived(event.connection, b"")
                # What is buffered is the next head (and, in `wait`, maybe its body).
                over_head = len(self.buf) > limits.max_head_bytes and _HEAD_END.search(
                    _start_of(self.buf, limits.max_head_bytes)) is None
                if self.state == self.read_headers and over_head:
                    why = f"request head over {limits.max_head_bytes} bytes"
                    limits.unreadable(self.context, 431, why)
                    yield from refuse(self, HEAD_TOO_LARGE)
                    return
                if self.state == self.wait and (over_head or len(self.buf) > limits.max_head_bytes + limits.max_body):
                    # A client that sends on while its answer is pending: mitmproxy would hold
                    # all of it, and parse the next head after the answer without this
                    # wrapper. (No 431: a response is under way on this connection.)
                    log.warning("mcpfw: closing a connection that sent a head over %d bytes, or over %d bytes, "
                                "ahead of its answer", limits.max_head_bytes, limits.max_head_bytes + limits.max_body)
                    self.state = self.done
                    yield commands.CloseConnection(self.conn)
                    return
        try:
            yield from original(self, event)
        except NotImplementedError as exc:
            # mitmproxy's HTTP/1 reader raises this for request trailer fields ("not
            # implemented yet"), and its crash report closed the connection without an answer
            # or a record: refused here as a request it cannot read.
            why = f"the request cannot be read: {exc}"
            limits.unreadable(self.context, 400, why)
            yield from refuse(self, closing_reply(Reply(400, f"mcpfw: {why}\n".encode())))
            return
        if self.state == self.read_body and len(self.buf) > limits.max_head_bytes:
            yield from refuse_framing(self, limits)
            return
        yield from track(self, limits)

    def refuse_framing(self: Any, limits: Limits) -> Any:
        # h11's body readers take a body's bytes as they come, but hold a chunk's size line
        # (and trailer fields) until it ends, without a limit: a chunk extension sent
        # without end was all held.
        why = f"a chunk size line or trailer over {limits.max_head_bytes} bytes"
        limits.unreadable(self.context, 400, why)
        yield from refuse(self, closing_reply(Reply(400, f"mcpfw: {why}\n".encode())))

    def track(self: Any, limits: Limits) -> Any:
        """A deadline for a head from its first byte, a fresh one for a buffered body."""
        if self.state == self.read_headers and (self.buf or getattr(self, "_mcpfw_started", None) == self.stream_id):
            phase = "head"  # (blank lines before a head count: a client sending only those is as slow)
        elif self.state == self.read_body and not (self.request is not None and self.request.stream):
            phase = "body"  # (a body streamed on, not MCP, has only mitmproxy's inactivity timeout)
        else:
            phase = None
        key = (phase, self.stream_id)
        if phase is None:
            self._mcpfw_phase = None
        elif getattr(self, "_mcpfw_phase", None) != key:
            self._mcpfw_phase = key
            self._mcpfw_deadline = time.monotonic() + limits.client_timeout
            yield commands.RequestWakeup(limits.client_timeout)

    def expire(self: Any, limits: Limits) -> Any:
        phase = self._mcpfw_phase[0]
        request = self.request if phase == "body" else None
        try:
            reply = limits.too_slow(self.context, request, 0)
        except Exception:  # the connection is closed whatever the record does
            log.exception("mcpfw: cannot record a client timeout")
            reply = None
        yield from refuse(self, TIMEOUT_RESPONSE if reply is None else closing_reply(reply))

    original_read_headers = server.read_headers

    def read_headers(self: Any, event: Any) -> Any:
        """mitmproxy's head reader, but a head it cannot parse (a request line it cannot
        read, Content-Length and Transfer-Encoding together, ...) is refused as the lean
        listener refuses it: 400 and an ``unreadable_request`` record, not mitmproxy's HTML
        page and a log line."""
        limits = _limits_of(self)
        if limits is None or not isinstance(event, events.DataReceived):
            yield from original_read_headers(self, event)
            return
        lines = self.buf.maybe_extract_lines()
        if not lines:  # no complete head yet (its size is bounded in _handle_event), or a blank line
            return
        try:
            request = http1.read_request_head([bytes(line) for line in lines])
            expected = http1.expected_http_body_size(request)
        except ValueError as exc:
            why = f"malformed HTTP request: {str(exc)[:200]}"
            limits.unreadable(self.context, 400, why)
            yield from refuse(self, closing_reply(Reply(400, f"mcpfw: {why}\n".encode())))
            return
        self.request = request
        yield ReceiveHttp(RequestHeaders(self.stream_id, request, expected == 0))
        self.body_reader = _http1.make_body_reader(expected)
        self.state = self.read_body
        yield from self.state(event)

    _handle_event._mcpfw = True  # type: ignore[attr-defined]
    server._handle_event = _handle_event
    server.read_headers = read_headers
    return True


# -- the HTTP/1 response reader (upstream side) ------------------------------------------

# Requests whose response head must arrive within Limits.upstream_timeout (see answer_within).
_ANSWER_WITHIN: weakref.WeakSet[Any] = weakref.WeakSet()


def answer_within(request: Any) -> None:
    """Hold the upstream's answer to ``request`` (a mitmproxy ``http.Request``) to the
    upstream deadline: its head must arrive within it once the request is sent."""
    _ANSWER_WITHIN.add(request)


def no_answer_message(timeout: float) -> str:
    """Why an exchange failed whose response head did not come in time (as the lean listener says)."""
    return f"no response within {timeout:g} s"


def install_response_limits() -> bool:
    """Wrap mitmproxy's HTTP/1 client-side ``_handle_event`` (see the module's docstring)."""
    try:
        from mitmproxy.proxy import commands, events
        from mitmproxy.proxy.layers.http import _http1
        from mitmproxy.proxy.layers.http._base import ReceiveHttp
        from mitmproxy.proxy.layers.http._events import ErrorCode, RequestEndOfMessage, ResponseEndOfMessage, ResponseProtocolError
    except ImportError:
        return False
    client = getattr(_http1, "Http1Client", None)
    original = getattr(client, "_handle_event", None)
    if original is None or not all(hasattr(client, name) for name in ("read_headers", "done", "mark_done")):
        return False
    if getattr(original, "_mcpfw", False):
        return True

    def fail(self: Any, why: str) -> Any:
        stream_id = self.stream_id
        self.state = self.done
        self._mcpfw_answer_by = None
        yield commands.CloseConnection(self.conn)
        yield ReceiveHttp(ResponseProtocolError(stream_id, why, ErrorCode.GENERIC_SERVER_ERROR))

    def awaiting_head(self: Any) -> bool:
        return self.state == self.read_headers and self.stream_id is not None and self.response is None

    def _handle_event(self: Any, event: Any) -> Any:
        limits = _limits_of(self)
        if limits is None:
            yield from original(self, event)
            return
        if isinstance(event, events.Wakeup):  # only this wrapper asks for wakeups here
            armed = getattr(self, "_mcpfw_answer_by", None)
            if armed is not None and armed[0] == self.stream_id and awaiting_head(self) and time.monotonic() >= armed[1]:
                yield from fail(self, no_answer_message(limits.upstream_timeout))
            return
        try:
            yield from original(self, event)
        except NotImplementedError:
            # Raised by mitmproxy's reader at the end of a chunked body that has trailer
            # fields: they are dropped (as the lean listener drops them) and the response ends.
            if self.state != self.read_body or self.stream_id is None:
                raise
            yield ReceiveHttp(ResponseEndOfMessage(self.stream_id))
            yield from self.mark_done(response=True)
            return
        if isinstance(event, events.DataReceived) and awaiting_head(self) and len(self.buf) > limits.max_head_bytes:
            yield from fail(self, f"the response head is over {limits.max_head_bytes} bytes")
            return
        if isinstance(event, events.DataReceived) and self.state == self.read_body and len(self.buf) > limits.max_head_bytes:
            # (as on the request side: a chunk size line or trailer without end)
            yield from fail(self, f"a chunk size line or trailer over {limits.max_head_bytes} bytes")
            return
        if (isinstance(event, RequestEndOfMessage) and limits.upstream_timeout > 0 and awaiting_head(self)
                and self.request in _ANSWER_WITHIN):
            self._mcpfw_answer_by = (self.stream_id, time.monotonic() + limits.upstream_timeout)
            yield commands.RequestWakeup(limits.upstream_timeout)

    _handle_event._mcpfw = True  # type: ignore[attr-defined]
    client._handle_event = _handle_event
    return True


# -- bodies -------------------------------------------------------------------------------


def install_body_limits() -> bool:
    """Wrap mitmproxy's ``HttpStream.check_body_size`` (see the module's docstring)."""
    try:
        from mitmproxy import flow as mflow
        from mitmproxy.proxy.layers import http as mhttp
        from mitmproxy.proxy.layers.http._events import ErrorCode, RequestData, RequestProtocolError, ResponseProtocolError
        from mitmproxy.proxy.layers.http._hooks import HttpErrorHook
    except ImportError:
        return False
    stream_cls = getattr(mhttp, "HttpStream", None)
    original = getattr(stream_cls, "check_body_size", None)
    if original is None or not all(hasattr(stream_cls, n) for n in ("start_request_stream", "state_errored")):
        return False
    if getattr(original, "_mcpfw", False):
        return True

    def check_body_size(self: Any, request: bool) -> Any:
        flow = getattr(self, "flow", None)
        bound: BodyLimit | None = flow.metadata.get(BODY_LIMIT) if flow is not None else None
        buf = self.request_body_buf if request else self.response_body_buf
        if bound is None or len(buf) <= bound.limit:
            return (yield from original(self, request))
        prefix = bytes(buf)
        buf.clear()  # freed whatever happens next
        reply = bound.over(flow, request, prefix)
        if reply is None and request:
            # Not MCP: the rest passes unread, as mitmproxy streams a large body itself.
            del flow.metadata[BODY_LIMIT]
            flow.request.stream = True
            yield from self.start_request_stream()
            if self.client_state != self.state_errored:
                yield from self.handle_event(RequestData(self.stream_id, prefix))
            return False
        if reply is None:  # (not asked for: a response body is only ever bounded)
            reply = Reply(502)
        ERROR_REPLIES[flow.client_conn.id] = closing_reply(reply)
        message = f"{'request' if request else 'response'} body over {bound.limit} bytes"
        flow.error = mflow.Error(message)
        yield HttpErrorHook(flow)
        code = ErrorCode.REQUEST_TOO_LARGE if request else ErrorCode.RESPONSE_TOO_LARGE
        yield mhttp.SendHttp(ResponseProtocolError(self.stream_id, message, code), self.context.client)
        self.client_state = self.state_errored
        if not request:
            yield mhttp.SendHttp(RequestProtocolError(self.stream_id, message, code), self.context.server)
            self.server_state = self.state_errored
        flow.live = False
        return True

    check_body_size._mcpfw = True  # type: ignore[attr-defined]
    stream_cls.check_body_size = check_body_size
    return True


BODY_LIMIT = "mcpfw.body_limit"


# -- connections --------------------------------------------------------------------------


def install_close_guard() -> bool:
    """Wrap mitmproxy's ``ConnectionHandler.handle_connection`` so that a connection whose
    handler ends is closed whichever way it ends.

    mitmproxy 12.2 closes a connection's socket at the end of that method, but a handler
    cancelled ("closed by command", a refusal) while it waits for the proxy's event lock,
    which another task holds, leaves the method there: the socket stayed open, unread, the
    client blocked in its send for good (seen under CPU load, about one refused chunked body
    in three).
    """
    try:
        from mitmproxy.connection import ConnectionState
        from mitmproxy.proxy import server as mserver
    except ImportError:
        return False
    handler_cls = getattr(mserver, "ConnectionHandler", None)
    original = getattr(handler_cls, "handle_connection", None)
    if original is None or not hasattr(handler_cls, "server_event"):
        return False
    if getattr(original, "_mcpfw", False):
        return True

    async def handle_connection(self: Any, connection: Any) -> None:
        try:
            await original(self, connection)
        finally:
            io = self.transports.get(connection)
            # (The method removes the connection itself on every path it finishes.)
            if io is not None and io.handler is asyncio.current_task():
                connection.state = ConnectionState.CLOSED
                del self.transports[connection]
                if io.writer is not None:
                    try:
                        io.writer.close()
                    except OSError:
                        pass

    handle_connection._mcpfw = True  # type: ignore[attr-defined]
    handler_cls.handle_connection = handle_connection
    return True


def note_first_byte(limits: Limits, client: Any) -> None:
    """The client sent HTTP/1 bytes: the deadline of its request's head takes over."""
    timer = limits.first_byte.pop(client.id, None)
    if timer is not None:
        timer.cancel()


class ClientLimits:
    """Connection caps, and a deadline for a connection that sends no request (nothing at
    all, or a CONNECT tunnel then no TLS handshake or request inside it)."""

    def __init__(self, limits: Limits, *, closer: Callable[[Any], bool], on_silent: Callable[[Any], None]) -> None:
        self.limits = limits
        self._close = closer
        self._on_silent = on_silent

    def client_connected(self, client: Any) -> None:
        limits = self.limits
        peer = client.peername[0] if client.peername else None
        counts = limits.open_per_client
        if limits.max_connections and len(limits.admitted) >= limits.max_connections:
            why = f"{len(limits.admitted)} connections are open (proxy.max_connections)"
        elif limits.max_connections_per_client and peer is not None and counts.get(peer, 0) >= limits.max_connections_per_client:
            why = f"{peer} has {limits.max_connections_per_client} connections open (proxy.max_connections_per_client)"
        else:
            limits.admitted[client.id] = peer or ""
            if peer is not None:
                counts[peer] = counts.get(peer, 0) + 1
            self._arm(client)
            return
        warn_refused_connection(why)
        client.error = "mcpfw: too many connections"  # mitmproxy closes it at once

    def client_disconnected(self, client: Any) -> None:
        limits = self.limits
        note_first_byte(limits, client)
        peer = limits.admitted.pop(client.id, None)
        if peer:
            left = limits.open_per_client.get(peer, 1) - 1
            if left > 0:
                limits.open_per_client[peer] = left
            else:
                limits.open_per_client.pop(peer, None)

    def http_connect(self, flow: Any) -> None:
        # A tunnel: the TLS handshake and the first request in it get the same deadline.
        self._arm(flow.client_conn)

    def tls_established_client(self, data: Any) -> None:
        if data.conn.alpn == b"h2":  # HTTP/2 requests are not read by the wrapped HTTP/1 reader
            note_first_byte(self.limits, data.conn)

    def tcp_start(self, flow: Any) -> None:
        note_first_byte(self.limits, flow.client_conn)  # a raw TCP tunnel: no request to wait for

    def _arm(self, client: Any) -> None:
        note_first_byte(self.limits, client)
        loop = asyncio.get_running_loop()
        self.limits.first_byte[client.id] = loop.call_later(self.limits.client_timeout, self._expire, client)

    def _expire(self, client: Any) -> None:
        self.limits.first_byte.pop(client.id, None)
        if client.id not in self.limits.admitted:
            return
        # Closed without an answer: nothing was asked, and the bytes may be TLS.
        if self._close(client):
            try:
                self._on_silent(client)
            except Exception:
                log.exception("mcpfw: cannot record a client timeout")


_DISARMED = "mcpfw.idle_disarmed"


class IdleTimeout:
    """mitmproxy's inactivity timeout (its ``tcp_timeout`` option, set from
    ``proxy.idle_timeout_seconds``) for idle connections only, as the lean listener sweeps
    them: while a request is in flight on a connection (a stream that stays silent for
    minutes, a slow tool call) or a WebSocket is open, its watchdog is disarmed. mitmproxy
    counted only bytes, and cut a silent standalone GET stream after ten minutes."""

    def __init__(self, handler_of: Callable[[Any], Any]) -> None:
        self._handler_of = handler_of

    def requestheaders(self, flow: Any) -> None:
        watchdog = getattr(self._handler_of(flow.client_conn), "timeout_watchdog", None)
        disarm = getattr(watchdog, "disarm", None)
        if disarm is None or _DISARMED in flow.metadata:
            return
        guard = disarm()  # (a context manager, left open until the exchange ends)
        guard.__enter__()
        flow.metadata[_DISARMED] = guard

    @staticmethod
    def _rearm(flow: Any) -> None:
        guard = flow.metadata.pop(_DISARMED, None)
        if guard is not None:
            guard.__exit__(None, None, None)

    def response(self, flow: Any) -> None:
        if flow.websocket is None:  # (a handshake's answer: the socket stays in flight)
            self._rearm(flow)

    def error(self, flow: Any) -> None:
        self._rearm(flow)

    def websocket_end(self, flow: Any) -> None:
        self._rearm(flow)
