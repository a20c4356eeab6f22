"""HTTP/1.1 bytes shared by the lean listener's two sides: header blocks, views, dates."""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
REASONS = {status.value: status.phrase.encode("latin-1") for status in HTTPStatus}
CRLF = b"\r\n"


def reason_of(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


def decode(value: bytes) -> str:
    """Header bytes as text, the way aiohttp reads them (nothing is ever rejected)."""
    return value.decode("utf-8", "surrogateescape")


def encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class HeaderList:
    """:class:`~.exchange.HeaderView` over headers as received, in order, as raw bytes.

    Most headers are copied on as bytes and never read as text, so the lookup table
    (lower-case name bytes to raw values) is built on the first lookup and only the
    values asked for are decoded.
    """

    __slots__ = ("raw", "_map")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._map: dict[bytes, list[bytes]] | None = None

    def _index(self) -> dict[bytes, list[bytes]]:
        index: dict[bytes, list[bytes]] = {}
        for name, value in self.raw:
            key = name.lower()
            values = index.get(key)
            if values is None:
                index[key] = [value]
            else:
                values.append(value)
        self._map = index
        return index

    def get(self, name: str) -> str | None:
        key = _KEYS.get(name) or _key(name)
        values = (self._map if self._map is not None else self._index()).get(key)
        return values[0].decode("utf-8", "surrogateescape") if values else None  # (decode(), inlined: hot)

    def getall(self, name: str) -> list[str]:
        key = _KEYS.get(name) or _key(name)
        return [decode(v) for v in (self._map if self._map is not None else self._index()).get(key, ())]

    def names(self) -> Iterable[str]:
        """Each name once, lower case."""
        return [decode(key) for key in (self._map if self._map is not None else self._index())]

    def has_prefix(self, prefix: str) -> bool:
        """Whether a header name starts with ``prefix`` (lower case), without decoding names."""
        start = encode(prefix)
        return any(key.startswith(start) for key in (self._map if self._map is not None else self._index()))


_KEYS: dict[str, bytes] = {}  # header names asked for, as lookup keys


def _key(name: str) -> bytes:
    key = encode(name.lower())
    if len(_KEYS) < 1024:  # names come from the code, but stay bounded all the same
        _KEYS[name] = key
    return key


def header_block(
    raw: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes], changes: dict[str, str | None] | None = None
) -> list[bytes]:
    """``name: value`` lines of ``raw`` minus the ``drop`` names (lower case) and the fields a
    ``Connection`` header names (hop-by-hop by declaration, RFC 9110 7.6.1), then ``changes``
    (a change to None removes the header)."""
    # (A list comprehension runs in this frame; a generator would be resumed once per header.)
    connection = [value for name, value in raw if len(name) == 10 and name.lower() == b"connection"]
    if connection and (nominated := nominated_fields(connection)):
        drop = drop | nominated
    lines: list[bytes] = []
    if changes:
        replaced = {encode(name.lower()) for name in changes}
        for name, value in raw:
            lower = name.lower()
            if lower not in drop and lower not in replaced:
                lines += (name, b": ", value, CRLF)
        for name, text in changes.items():
            if text is not None:
                lines += (encode(name), b": ", encode(text), CRLF)
    else:
        for name, value in raw:
            if name.lower() not in drop:
                lines += (name, b": ", value, CRLF)
    return lines


def nominated_fields(connection_values: Iterable[bytes]) -> frozenset[bytes]:
    """Field names (lower case) that ``Connection`` header values name as hop-by-hop."""
    names = {token.strip().lower() for value in connection_values for token in value.split(b",")}
    return frozenset(names - _CONNECTION_OPTIONS - {b""})


_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})  # options, not fields to drop


class DateCache:
    """The ``Date`` header line, formatted at most once a second."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + CRLF
        return self._line


DATE = DateCache()
