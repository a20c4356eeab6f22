"""Strict JSON-RPC 2.0 framing: parse one frame (a message or a batch) into messages.

Rules, deliberately strict so that the policy and the server can never read different
values from the same bytes:

* the frame must be valid UTF-8 JSON no larger than the configured limit;
* an object with a duplicate key anywhere in the frame is refused as a whole (JSON parsers
  disagree on which value wins, so the ambiguity is denied rather than resolved);
* nesting deeper than the configured limit is refused;
* a batch is a non-empty array; each element is judged on its own;
* ids must be strings or integers (not null, booleans, floats, arrays or objects).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from . import errors


class Kind(StrEnum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"
    ERROR_RESPONSE = "error_response"


@dataclass(slots=True)
class Message:
    """One well-formed JSON-RPC message of a frame."""

    body: dict[str, Any]
    kind: Kind

    @property
    def id(self) -> Any:
        return self.body.get("id")

    @property
    def method(self) -> str | None:
        return self.body.get("method")


@dataclass(slots=True)
class Invalid:
    """One element of a frame that is not a usable JSON-RPC message."""

    code: int
    reason: str
    id: Any = None  # the id, when it could be recovered and is usable in a reply
    body: Any = None  # whatever was parsed, for the audit record


@dataclass(slots=True)
class Frame:
    """A parsed frame: its elements in order, and whether it was a batch."""

    items: list[Message | Invalid]
    batch: bool


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e999 reads as infinity here, and orjson would then write it as null: the policy would
    # see null where the server reads Infinity. A number out of range is refused instead.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:24]}{'...' if len(text) > 24 else ''} is out of range")
    return value


_decoder = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_float=_finite_float
)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


def parse_frame(raw: bytes, *, max_bytes: int, max_depth: int, max_batch: int) -> Frame:
    """Parse the bytes of one frame; never raises for bad input."""
    if len(raw) > max_bytes:
        return Frame([Invalid(errors.MESSAGE_TOO_LARGE, f"message of {len(raw)} bytes exceeds the {max_bytes}-byte limit")], False)
    value = _compact_value(raw)
    if value is not _SLOW:
        return _frame(value, raw, max_depth=max_depth, max_batch=max_batch)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Frame([Invalid(errors.PARSE_ERROR, f"invalid UTF-8 at byte {exc.start}")], False)
    if text.startswith("\ufeff"):
        return Frame([Invalid(errors.PARSE_ERROR, "byte order mark before the JSON text")], False)
    try:
        value = _decoder.decode(text)
    except _DuplicateKey as exc:
        return Frame([Invalid(errors.INVALID_REQUEST, f"duplicate key {str(exc)!r} in an object")], False)
    except RecursionError:
        return Frame([Invalid(errors.INVALID_REQUEST, f"nesting deeper than {max_depth} levels")], False)
    except ValueError as exc:
        return Frame([Invalid(errors.PARSE_ERROR, f"malformed JSON: {exc}")], False)
    if _depth_exceeds(value, max_depth):  # (before orjson, which stops at 255 levels with its own error)
        return Frame([Invalid(errors.INVALID_REQUEST, f"nesting deeper than {max_depth} levels")], False)
    try:
        # Lone surrogates (\ud800) and integers beyond 64 bits parse in Python, but the
        # policy engines and servers would each read them differently: refuse them.
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        return Frame([Invalid(errors.PARSE_ERROR, f"value without one faithful reading: {exc}")], False)
    return _frame(value, raw, max_depth=max_depth, max_batch=max_batch)


_SLOW: Any = object()
_LINE_END = b" \t\r\n"


def _compact_value(raw: bytes) -> Any:
    """The value of ``raw`` when it is exactly orjson's own rendering of it, else ``_SLOW``.

    Most peers send compact JSON (the SDKs serialise without spaces), and for such text
    orjson answers in a fraction of the strict decoder's time. Identity of the re-encoding
    is what makes that sound: a duplicate key, a lone surrogate, an integer beyond 64 bits,
    a byte order mark or any other spelling the strict path judges would change the text,
    and those frames take the strict path, which gives the precise error.
    """
    try:
        value = orjson.loads(raw)
        if orjson.dumps(value) == raw.rstrip(_LINE_END):
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    return _SLOW


def _frame(value: Any, raw: bytes, *, max_depth: int, max_batch: int) -> Frame:
    # Depth cannot exceed the number of openers: count them in C before walking in Python.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth_exceeds(value, max_depth):
        return Frame([Invalid(errors.INVALID_REQUEST, f"nesting deeper than {max_depth} levels")], False)
    if isinstance(value, list):
        if not value:
            return Frame([Invalid(errors.INVALID_REQUEST, "empty batch")], False)
        if len(value) > max_batch:
            return Frame([Invalid(errors.INVALID_REQUEST, f"batch of {len(value)} messages exceeds the limit of {max_batch}")], False)
        return Frame([classify(v) for v in value], True)
    return Frame([classify(value)], False)


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)))


def classify(value: Any) -> Message | Invalid:
    """Check the JSON-RPC 2.0 shape of one parsed element."""
    if not isinstance(value, dict):
        return Invalid(errors.INVALID_REQUEST, f"a JSON-RPC message must be an object, not {type(value).__name__}", body=value)
    msg_id = value.get("id")
    usable_id = msg_id if _valid_id(msg_id) else None
    if value.get("jsonrpc") != "2.0":
        return Invalid(errors.INVALID_REQUEST, 'missing or wrong "jsonrpc": "2.0"', usable_id, value)
    if "method" in value:
        method = value["method"]
        if not isinstance(method, str) or not method:
            return Invalid(errors.INVALID_REQUEST, '"method" must be a non-empty string', usable_id, value)
        if "result" in value or "error" in value:
            return Invalid(errors.INVALID_REQUEST, "a message cannot have both a method and a result or error", usable_id, value)
        params = value.get("params")
        if "params" in value and not isinstance(params, (dict, list)):
            return Invalid(errors.INVALID_REQUEST, '"params" must be an object or an array', usable_id, value)
        if "id" not in value:
            return Message(value, Kind.NOTIFICATION)
        if usable_id is None:
            return Invalid(errors.INVALID_REQUEST, f"unusable id of type {type(msg_id).__name__}: ids must be strings or integers", None, value)
        return Message(value, Kind.REQUEST)
    has_result, has_error = "result" in value, "error" in value
    if has_result == has_error:
        return Invalid(errors.INVALID_REQUEST, "a response needs exactly one of result or error", usable_id, value)
    if ("id" not in value and not has_error) or (msg_id is not None and usable_id is None):
        return Invalid(errors.INVALID_REQUEST, "a response needs a string or integer id", usable_id, value)
    if has_error:
        # (An error without "id" is taken as JSON-RPC's id null, an error that answers no
        # request: servers write it so for a request they could not read, such as the
        # TypeScript SDK's transport for an unknown session.)
        err = value["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int) or isinstance(err.get("code"), bool) or not isinstance(err.get("message"), str):
            return Invalid(errors.INVALID_REQUEST, "an error needs an integer code and a string message", usable_id, value)
        return Message(value, Kind.ERROR_RESPONSE)
    if msg_id is None:
        return Invalid(errors.INVALID_REQUEST, "a result response needs a string or integer id", None, value)
    return Message(value, Kind.RESPONSE)


def error_response(msg_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}


def encode(value: Any) -> bytes:
    """Compact JSON encoding used for every message the firewall writes itself."""
    return orjson.dumps(value)


_ID_FIELD = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,256}")')


def recover_id(raw: bytes) -> Any:
    """The id of a message that could not be parsed, when one sits near either end (where
    serialisers put it); None otherwise. For naming the request a broken answer was for."""
    # The last id of the end (a nested "id" comes before the message's own there), else the
    # first of the start.
    for match in ([*_ID_FIELD.finditer(raw[-512:])][-1:] or [*_ID_FIELD.finditer(raw[:512])][:1]):
        try:
            return orjson.loads(match.group(1))
        except orjson.JSONDecodeError:
            return None
    return None
