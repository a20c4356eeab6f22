"""What an HTTP body is: media types, declared charsets, and whether a server could read it
as JSON-RPC (in UTF-8, or in the UTF-16/32 or other charset a peer declares)."""

from __future__ import annotations

import re

import orjson


def is_json_media(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON, in any of the media types of a list ("application/json,
    text/plain" is JSON to servers that split on commas, such as the Python MCP SDK)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].lower()
    return any(m.strip() == "application/json" or m.strip().endswith("+json") for m in media.split(","))


_LEADING = re.compile(rb"[\xef\xbb\xbf \t\r\n]*")  # what JSON parsers skip before a document


def may_be_jsonrpc(body: bytes) -> bool:
    """Whether a body could be read as JSON-RPC by a server: JSON with a "jsonrpc" member
    (however its key is escaped), in an object or a batch, or JSON-like text that does not
    parse here (a more lenient parser might read it; the pipeline then refuses it)."""
    if not may_be_json_text(body):
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return True
    items = document if isinstance(document, list) else [document]
    return any(isinstance(item, dict) and "jsonrpc" in item for item in items)


# UTF-16 and UTF-32 in either byte order: each one's byte order mark, and how it spells a
# character. Python's json reads JSON text in any of them, and so does any server told the
# charset; binary data (an image, an archive) has NULs too, but not in these patterns.
_WIDE_ENCODINGS = (
    (b"(?:\xff\xfe)", "utf-16-le"), (b"(?:\xfe\xff)", "utf-16-be"),
    (b"(?:\xff\xfe\x00\x00)", "utf-32-le"), (b"(?:\x00\x00\xfe\xff)", "utf-32-be"),
)


def _wide(bom: bytes, codec: str, then: str) -> re.Pattern[bytes]:
    """An optional BOM, JSON white space, then one of the characters of ``then`` (if any)."""
    def spell(chars: str) -> bytes:
        return b"|".join(re.escape(c.encode(codec)) for c in chars)

    return re.compile(bom + b"?(?:" + spell(" \t\r\n") + b")*" + (b"(?:" + spell(then) + b")" if then else b""))


_WIDE_JSON = tuple(_wide(bom, codec, "{[") for bom, codec in _WIDE_ENCODINGS)  # a JSON array or object
_WIDE_BLANK = tuple(_wide(bom, codec, "") for bom, codec in _WIDE_ENCODINGS)  # nothing but white space yet


def may_be_json_text(body: bytes, *, partial: bool = False) -> bool:
    """Whether a body (or its beginning) could be a JSON array or object, as JSON parsers
    read text: after a BOM and white space, "{" or "[", in UTF-8 or in UTF-16 or UTF-32.

    ``partial``: ``body`` is only the beginning of a longer body, so one that is nothing
    but white space so far may still be JSON (the "{" comes later): True then."""
    start = _LEADING.match(body).end()  # type: ignore[union-attr]
    head = body[start:start + 1]
    if not head:
        return partial
    if partial and any(p.match(body).end() >= len(body) - 3 for p in _WIDE_BLANK):  # type: ignore[union-attr]
        return True
    if head in (b"{", b"["):
        return True
    return b"\x00" in body[:4] and any(pattern.match(body) for pattern in _WIDE_JSON)


_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def declared_charset(content_type: str | None) -> str | None:
    """The charset a Content-Type declares when it is not UTF-8 (or ASCII): lower case,
    unquoted; with two different ones, both. None when it declares none or UTF-8."""
    if not content_type or "charset" not in content_type.lower():
        return None
    found = []
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            found.append(value.strip().strip('"').strip().lower())
    odd = sorted({c for c in found if c not in _UTF8_NAMES})
    return ",".join(odd) if odd else None


def _is_utf7(charset: str) -> bool:
    """UTF-7 under any of its names ("utf-7", "UTF7", "unicode-1-1-utf-7", "utf-7-imap")."""
    name = "".join(c for c in charset if c.isalnum())
    return "utf7" in name


def may_be_jsonrpc_in(body: bytes, charset: str, content_type: str | None) -> bool:
    """Whether ``body`` could be JSON-RPC read as UTF-8 or in ``charset`` (as a server that
    honours the declaration reads it). MCP's JSON is UTF-8: either way, the firewall would not
    judge what such a server runs. With a charset Python does not know, a JSON media type is
    enough; UTF-7 is always taken to be: decoders disagree on malformed UTF-7 (Python's turns
    "+AH-" or a lone "+" into U+FFFD and swallows the "{" after it, iconv-lite drops the bytes
    and keeps the "{"), and no MCP peer sends it."""
    if may_be_jsonrpc(body) or _is_utf7(charset):
        return True
    try:
        text = body.decode(charset, "replace")  # (lenient, as iconv-lite is)
    except LookupError:
        return is_json_media(content_type)
    return may_be_jsonrpc(text.encode("utf-8", "surrogatepass"))


def is_sse(content_type: str | None) -> bool:
    """Whether a Content-Type names an event stream."""
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"  # type: ignore[union-attr]
