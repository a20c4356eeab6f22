"""An event stream inspected block by block: each complete SSE block is judged on its own and
forwarded as soon as it is (see :class:`~.exchange.HttpInspection`, which makes the filters)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import orjson

from ... import errors
from ...pipeline import S2C, Outcome
from .sessions import Channel, id_key, legacy_keys
from .sse import OversizedEvent, SseEvent, SseParser, format_event, format_id_only

if TYPE_CHECKING:
    from .exchange import Exchange, HttpInspection

_SSE_SLACK = 64 * 1024  # "data: " prefixes and line ends around a message of the size limit


class SseFilter:
    """Inspects an event stream block by block, forwarding each as soon as it is complete."""

    def __init__(self, core: HttpInspection, ex: Exchange) -> None:
        self._core = core
        self._ex = ex
        self._parser = SseParser(core.max_message_bytes + _SSE_SLACK)
        self._prefix = format_event(ex.extra) if ex.extra is not None else b""
        self._dropped = False  # an event was dropped that may have been an answer

    def feed(self, chunk: bytes) -> bytes:
        out = [self._prefix] if self._prefix else []
        self._prefix = b""
        for block in self._parser.feed(chunk):
            piece = self._block(block)
            if piece:
                out.append(piece)
        return b"".join(out)

    def finish(self) -> bytes:
        """End of the upstream stream: an unfinished block is dropped, as a client would.

        When the firewall dropped an event it could not read (invalid, or too large to name
        its request) and requests of this POST are still unanswered, they get an error
        event: the answer may have been the dropped event, and the client would wait for it
        forever. (A stream that ends with requests open and nothing dropped is left alone:
        the server may answer on a resumed stream.)"""
        core, ex = self._core, self._ex
        core._learn(ex)
        tail = self._prefix
        if self._dropped and ex.kind == "mcp" and ex.open_ids:
            tail += core.stream_failed(ex, "the stream ended after an event the firewall could not pass")
        return tail

    def failed(self, reason: str) -> bytes:
        """The upstream broke the stream off: error events for requests still unanswered."""
        return self._core.stream_failed(self._ex, reason)

    def _block(self, block: SseEvent | OversizedEvent) -> bytes:
        core, ex = self._core, self._ex
        session = ex.session
        assert session is not None
        if isinstance(block, OversizedEvent):
            return self._oversized(block)
        data = block.data
        if data is None or not data.strip():
            if not block.odd:
                return block.raw  # comments, keep-alives, priming events, retry hints
            # Only what the spec reads of it: a field a client might read otherwise is dropped.
            return format_id_only(block.id) if block.id is not None else b""
        if block.event == "endpoint":
            return self._endpoint(block)
        raw = data.encode("utf-8")
        channel = ex.channel
        if channel is not None and channel.substitutes:
            substitute = self._substitute(channel, raw)
            if substitute is not None:
                return format_event(substitute, event=block.event, event_id=block.id, retry=block.retry)
        outcome = core.inspector.inspect(raw, S2C, session, ex.identity)
        if outcome.reply is not None and core.poster is not None:
            self._to_server(outcome.reply)
        self._answered(outcome, raw)
        forward = outcome.forward
        if forward is not None and ex.first_method == "tools/list":
            core.learn_tools(ex, forward)
        if forward is raw and not block.odd:
            return block.raw
        if forward is None:
            self._dropped = True
            return format_id_only(block.id) if block.id is not None else b""
        return format_event(forward, event=block.event, event_id=block.id, retry=block.retry)

    def _answered(self, outcome: Outcome, raw: bytes) -> None:
        open_ids = self._ex.open_ids
        if not open_ids or not any(v.kind in ("response", "error_response") for v in outcome.verdicts):
            return
        if len(open_ids) == 1:
            open_ids.clear()
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        for item in body if isinstance(body, list) else [body]:
            if isinstance(item, dict) and item.get("id") in open_ids and "method" not in item:
                open_ids.remove(item["id"])

    def _substitute(self, channel: Channel, raw: bytes) -> bytes | None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if isinstance(body, dict) and "method" not in body and "id" in body:
            return channel.substitutes.pop(id_key(body["id"]), None)
        return None

    def _to_server(self, reply: bytes) -> None:
        ex = self._ex
        poster = self._core.poster
        assert poster is not None
        if ex.channel is not None:
            poster.post(ex.route, ex.channel.post_path, ex.channel.headers, reply)
        else:
            poster.post(ex.route, ex.route.endpoint_path, ex.client_headers, reply)

    def _oversized(self, block: OversizedEvent) -> bytes:
        ex = self._ex
        session = ex.session
        assert session is not None
        limit = self._core.max_message_bytes
        outcome = self._core.inspector.refuse_oversized(block.size, limit, S2C, session, block.head + block.tail)
        if outcome.forward is None:  # no request of this session to name
            self._dropped = True
            return b""
        msg_id = orjson.loads(outcome.forward).get("id")
        if msg_id in ex.open_ids:
            ex.open_ids.remove(msg_id)
        return format_event(outcome.forward)

    def _endpoint(self, block: SseEvent) -> bytes:
        """Legacy HTTP+SSE: the server names the URL for the client's messages."""
        ex, core = self._ex, self._core
        route = ex.route
        assert block.data is not None and ex.session is not None
        # Resolved as clients resolve it: the WHATWG URL standard reads a backslash as "/" in
        # http(s) URLs, so "/", backslash, "evil.example/x" names another host.
        named = block.data.strip().replace("\\", "/")
        try:
            parts = urlsplit(urljoin(f"{route.origin}{ex.upstream_path}", named))
            foreign = f"{parts.scheme}://{parts.netloc}".lower() != route.origin.lower() or any(
                ord(c) < 0x21 for c in named)
        except ValueError:
            foreign = True
        if foreign:
            # Clients would post their messages elsewhere, past the firewall: not passed.
            core.inspector.record_transport_error(
                ex.session, S2C, code=errors.INVALID_REQUEST, reason_code="foreign_endpoint",
                message=f"the server named a message endpoint on another origin: {named[:200]!r}",
            )
            return b""
        post_path = parts.path + (f"?{parts.query}" if parts.query else "")
        channel = Channel(ex.session, route, post_path, dict(ex.client_headers), legacy=True, principal=ex.principal)
        ex.session.transport = "sse"
        ex.channel = channel
        for key in legacy_keys(post_path):
            core.sessions.add(key, channel)
        public = route.public_path(parts.path) + (f"?{parts.query}" if parts.query else "")
        if public == block.data.strip():
            return block.raw
        return format_event(public, event="endpoint", event_id=block.id, retry=block.retry)
