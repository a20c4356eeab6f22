"""Server-Sent Events, parsed incrementally by the rules of the HTML standard.

Lines end with CRLF, LF or a lone CR (servers differ: TypeScript ones write LF, Python
ones CRLF), a blank line dispatches the block, ``:`` starts a comment, and one space after
a field's colon is dropped. The parser keeps each block's bytes exactly as received, so a
block the firewall does not change is forwarded byte for byte (one exception: see
:class:`SseParser`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_KEEP = 512  # bytes kept from each end of an oversized block, to recover its JSON-RPC id


@dataclass(slots=True)
class SseEvent:
    """One block ended by a blank line: its bytes as received and the fields the spec reads."""

    raw: bytes
    data: str | None = None  # None when the block had no data field (a comment, a bare id:)
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    # A line with a field name the spec ignores ("\ufeffdata" after the stream's start,
    # "Data"): a client might read it otherwise (a BOM is stripped at the start of *its*
    # stream, which need not be the upstream's), so such a block is never passed as received.
    odd: bool = False


@dataclass(slots=True)
class OversizedEvent:
    """A block larger than the limit: dropped unread, with its ends kept to name its request."""

    size: int
    head: bytes
    tail: bytes


class SseParser:
    """Turns a byte stream into blocks as soon as each one is complete.

    Work is linear in the bytes received however they are chunked: each byte is searched
    for a line end once. Blocks and their bytes do not depend on the chunking, with one
    exception: a block whose blank line is a lone CR that is the last byte received so far
    is passed on at once with an LF added (CRLF, the same line end to a client), and an LF
    that arrives next is not passed again. Holding the block for the next byte instead
    would stall a server that ends its lines with CR alone. (The limit is on the bytes
    received: the added LF does not count.)

    A UTF-8 BOM at the start of the stream is not part of the first block's bytes: clients
    strip it only at the start of *their* stream, and the firewall may put an event of its
    own first (a denial), after which the BOM would spoil the first field name.
    """

    def __init__(self, max_event_bytes: int) -> None:
        self._limit = max_event_bytes
        self._buf = bytearray()  # the current, incomplete block
        self._scan = 0  # start of the first line of _buf not yet read
        self._seen = 0  # _buf[_scan:_seen] holds no line end: searches resume here
        self._first_line = True
        self._bom = False  # the first line began with a BOM, still at the start of _buf
        self._after_cr = False  # a line of this block ended with a CR, the last byte received
        self._lf_added = False  # the last block ended so and was given the LF
        self._discarding = False
        self._at_line_start = True
        self._dropped = 0
        self._head = b""
        self._tail = bytearray()
        self._clear_fields()

    def _clear_fields(self) -> None:
        self._data: list[str] | None = None
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._odd = False

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because their block is not complete yet."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[SseEvent | OversizedEvent]:
        """Parse ``chunk``; return every block it completes, in order."""
        out: list[SseEvent | OversizedEvent] = []
        if self._lf_added and chunk:
            self._lf_added = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return out
        skip_lf = self._after_cr and chunk[:1] == b"\n"  # the LF of a CRLF split across chunks
        self._after_cr = False
        if self._discarding:
            rest = self._discard(chunk, 1 if skip_lf else 0, out)
            if not rest:
                return out
            chunk, skip_lf = rest, False
        self._buf += chunk
        if skip_lf:  # the CR ended the last line read, so _scan == _seen == the LF's offset
            self._scan = self._seen = self._scan + 1
        self._read_lines(out)
        return out

    def _read_lines(self, out: list[SseEvent | OversizedEvent]) -> None:
        buf = self._buf
        scan = self._scan
        pos = self._seen
        lf_only = buf.find(b"\r", pos) < 0  # TypeScript servers: plain finds instead of the regex
        while True:
            lone_cr = False
            if lf_only:
                stop = buf.find(b"\n", pos)
                if stop < 0:
                    break
                end = stop + 1
            else:
                match = _EOL.search(buf, pos)
                if match is None:
                    break
                stop, end = match.span()
                lone_cr = end == len(buf) and end - stop == 1 and buf[stop] == 13
            line = bytes(buf[scan:stop])
            if self._first_line:
                self._first_line = False
                if line.startswith(_BOM):
                    line = line[3:]
                    self._bom = True
            scan = pos = end
            if line:
                self._field(line)
                self._after_cr = lone_cr
                continue
            lf = b"\n" if lone_cr else b""
            self._lf_added = lone_cr
            if end > self._limit:
                tail = (bytes(buf[max(0, end - _KEEP) : end]) + lf)[-_KEEP:]
                head = (bytes(buf[: min(end, _KEEP)]) + lf)[:_KEEP]
                out.append(OversizedEvent(end + len(lf), head, tail))
                self._clear_fields()
            else:
                out.append(self._dispatch(bytes(buf[:end]) + lf))
            del buf[:end]
            scan = pos = 0
        self._scan = scan
        self._seen = len(buf)
        if len(buf) > self._limit:
            self._begin_discard()

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._data is None:
                self._data = []
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            self._odd = True

    def _dispatch(self, raw: bytes) -> SseEvent:
        if self._bom:
            self._bom = False
            raw = raw[len(_BOM):]
        data = "\n".join(self._data) if self._data is not None else None
        event = SseEvent(raw, data, self._event, self._id, self._retry, self._odd)
        self._clear_fields()
        return event

    # -- blocks beyond the limit ---------------------------------------------------

    def _begin_discard(self) -> None:
        buf = self._buf
        self._discarding = True
        self._first_line = False  # a BOM after this is not at the start of the stream
        self._bom = False
        self._at_line_start = self._scan == len(buf)
        self._dropped = 0
        self._head = b""
        self._tail = bytearray()
        self._drop(buf)
        del buf[:]
        self._scan = self._seen = 0

    def _drop(self, piece: bytes | bytearray) -> None:
        """Count ``piece`` into the oversized block, keeping its first and last bytes."""
        self._dropped += len(piece)
        if len(self._head) < _KEEP:
            self._head += piece[: _KEEP - len(self._head)]
        tail = self._tail
        tail += piece[-_KEEP:]
        if len(tail) > 2 * _KEEP:
            del tail[:-_KEEP]

    def _discard(self, chunk: bytes, pos: int, out: list[SseEvent | OversizedEvent]) -> bytes | None:
        """Skip the rest of an oversized block; return what follows it, or None if it goes on."""
        while True:
            match = _EOL.search(chunk, pos)
            if match is None:
                if pos < len(chunk):
                    self._at_line_start = False
                self._drop(chunk)
                return None
            stop, end = match.span()
            lone_cr = end == len(chunk) and end - stop == 1 and chunk[stop] == 13
            if stop == pos and self._at_line_start:
                self._drop(chunk[:end] + b"\n" if lone_cr else chunk[:end])
                self._lf_added = lone_cr
                out.append(OversizedEvent(self._dropped, bytes(self._head), bytes(self._tail[-_KEEP:])))
                self._discarding = False
                self._at_line_start = True
                self._head = b""
                self._tail = bytearray()
                self._clear_fields()
                return chunk[end:]
            self._after_cr = lone_cr
            self._at_line_start = True
            pos = end


def format_event(
    data: bytes | str, *, event: str | None = None, event_id: str | None = None, retry: int | None = None
) -> bytes:
    """Serialise one block with LF line ends (every conforming client accepts them)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    parts: list[str] = []
    if event:
        parts.append(f"event: {event}\n")
    if event_id is not None:
        parts.append(f"id: {event_id}\n")
    if retry is not None:
        parts.append(f"retry: {retry}\n")
    for line in text.split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def format_id_only(event_id: str) -> bytes:
    """A block that only moves the client's last event id: nothing is dispatched."""
    return f"id: {event_id}\n\n".encode("utf-8")
