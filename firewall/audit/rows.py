"""The audit row contract and its conversion to stored values.

A row handed to :meth:`firewall.audit.AuditLog.record` is a plain dict keyed
by ``decisions`` column names (docs/contracts.md). Every key is optional;
missing ones are stored as NULL except where noted:

``ts``            float epoch seconds (``time.time()``, the cheapest on the hot
                  path) or an aware ``datetime`` (a naive one is taken as UTC);
                  filled with the time of ``record()`` when absent.
``decision_id``   str; a fresh :func:`new_decision_id` when absent.
``message_id``    JSON text of the JSON-RPC id (``'7'``, ``'"a"'``), stored
                  as given; a number is converted to its JSON text.
``arguments``     the *raw, unredacted* arguments (tools/call) or params; the
                  writer thread stores a redacted copy.
``digest_of``     (not a column) the unredacted value ``args_digest`` is
                  computed from on the writer thread, e.g. the result of a
                  response; defaults to ``arguments``. A row that already has
                  ``args_digest`` keeps it.
``reasons``       list of ``{"code", "message"}``; ``reason_codes`` is derived
                  from it when absent.
``findings``      JSON value; ``tags``/``reason_codes`` lists of str.
``reasons``, ``findings`` and ``error`` are scanned for credential patterns too.
Strings longer than ``MAX_STORED_CHARS`` are stored cut (with a note).

Keys that are not columns are ignored (logged once per key name).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from firewall.audit.redact import SecretRules, args_digest, redact_for_audit, redact_text, redacted_json
from firewall.audit.schema import COLUMN_NAMES, JSON_COLUMNS, LIST_COLUMNS

log = logging.getLogger("mcpfw.audit")

StoredRow = tuple[Any, ...]
"""Column values in ``COLUMN_NAMES`` order: ts as float epoch seconds, JSON
columns as JSON text, list columns as ``list[str]``; secrets already removed."""

MAX_STORED_CHARS = 64 * 1024
"""Longest string value stored in arguments/reasons/findings/error; longer
ones (e.g. file contents) are cut, with a note. ``args_digest`` still covers
the whole value."""

_INT32 = (-(2**31), 2**31 - 1)
_INT_COLUMNS = frozenset({"error_code", "bytes"})
_FLOAT_COLUMNS = frozenset({"eval_ms", "upstream_ms"})
_KNOWN = frozenset(COLUMN_NAMES) | {"digest_of"}
_warned_keys: set[str] = set()
_INDEX = {name: i for i, name in enumerate(COLUMN_NAMES)}


def new_decision_id(ts: float | None = None) -> str:
    """A UUIDv7 for time ``ts`` (epoch seconds, default now): sortable by time.

    Layout (RFC 9562): 48-bit Unix milliseconds, version 7, 12 bits of
    sub-millisecond fraction (so ids follow ``ts`` closely), variant, 62
    random bits.
    """
    if ts is None:
        ts = time.time()
    millis, fraction = divmod(max(ts, 0.0) * 1000.0, 1.0)
    value = (int(millis) & (2**48 - 1)) << 80
    value |= 0x7 << 76 | int(fraction * 4096) << 64
    value |= 0x2 << 62 | int.from_bytes(os.urandom(8)) >> 2
    return str(uuid.UUID(int=value))


def to_epoch(value: Any) -> float:
    """Epoch seconds of a float/int epoch, a datetime (naive = UTC) or ISO text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return time.time()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return time.time()


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def _int32(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = int(value)  # numeric text
        except (TypeError, ValueError):
            return None
    value = int(value)
    return value if _INT32[0] <= value <= _INT32[1] else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _str_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    return [item if isinstance(item, str) else str(item) for item in value]


def _reason_codes(reasons: Any) -> list[str] | None:
    if not isinstance(reasons, (list, tuple)):
        return None
    codes = []
    for reason in reasons:
        if isinstance(reason, Mapping):
            codes.append(str(reason.get("code", "policy")))
        elif isinstance(reason, str):
            codes.append("policy")  # the contract's code for plain-string reasons
    return codes


def _warn_unknown(row: Mapping[str, Any]) -> None:
    for key in row.keys() - _KNOWN - _warned_keys:
        _warned_keys.add(key)
        log.warning("ignoring unknown audit row key %r", key)


def _coerce(name: str, value: Any) -> Any:
    """Type coercion shared by fresh rows and rows read back from a spill file."""
    if value is None:
        return None
    if name == "ts":
        return to_epoch(value)
    if name in JSON_COLUMNS:
        return _json_text(value)
    if name in LIST_COLUMNS:
        return _str_list(value)
    if name in _INT_COLUMNS:
        return _int32(value)
    if name in _FLOAT_COLUMNS:
        return _float(value)
    return _text(value)


def _converter(name: str) -> Callable[[Any, SecretRules], Any]:
    """How :func:`to_stored_row` converts a (non-None) value of column ``name``."""
    if name == "arguments":
        return lambda value, rules: redacted_json(value, rules, max_chars=MAX_STORED_CHARS)
    if name == "policy_input":
        return _stored_input
    if name in ("reasons", "findings"):
        return lambda value, rules: redacted_json(value, rules, keys=False, max_chars=MAX_STORED_CHARS)
    if name == "error":
        return lambda value, rules: redact_text(_text(value) or "", rules, max_chars=MAX_STORED_CHARS)
    if name == "message_id":
        return lambda value, rules: _client_text(value if isinstance(value, str) else _json_text(value) or "", rules)
    if name in _FLOAT_COLUMNS:
        return lambda value, _rules: value if type(value) is float else _float(value)
    return lambda value, _rules: _coerce(name, value)


# Members of the policy input that come from the message itself: a value under a key that
# names a secret ("password", "token") is redacted there, as in the arguments column. The
# rest is the firewall's own (session, findings, identity, rate...): "session" or "secrets"
# name no secret there, and only credential patterns are redacted.
_MESSAGE_MEMBERS = frozenset({"params", "tool", "result", "error", "request", "resources"})


def _stored_input(value: Any, rules: SecretRules) -> str:
    """The policy input (JSON text, as the engine received it) with secrets redacted, so
    that a replay sees what the policy saw, less the credentials the log never keeps."""
    document = orjson.loads(value) if isinstance(value, str) else value
    if not isinstance(document, dict):
        return redacted_json(document, rules, max_chars=MAX_STORED_CHARS)
    stored = {
        key: redact_for_audit(item, rules, keys=key in _MESSAGE_MEMBERS, max_chars=MAX_STORED_CHARS)
        for key, item in document.items()
    }
    return orjson.dumps(stored, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


_CONVERT: dict[str, Callable[[Any, SecretRules], Any]] = {name: _converter(name) for name in COLUMN_NAMES}
# Columns whose str values are stored as they are.
_PLAIN_TEXT = frozenset(
    name for name in COLUMN_NAMES
    if name not in JSON_COLUMNS and name not in LIST_COLUMNS and name not in _INT_COLUMNS
    and name not in _FLOAT_COLUMNS and name not in ("ts", "error")
)
# Text the peers choose (a tool name, a method, a client name, an id) can carry a credential
# like any argument; names repeat, so each distinct one is redacted once.
_CLIENT_TEXT = frozenset({"tool", "method", "client_name", "message_id"})
_SHORTEST_SECRET = 8  # characters: shorter text holds no credential a rule would find


def _client_text(value: str, rules: SecretRules) -> str:
    if len(value) < _SHORTEST_SECRET:
        return value
    if len(value) > 256 or value[:1] == '"':  # (a string JSON-RPC id: unique, not worth remembering)
        return redact_text(value, rules, max_chars=MAX_STORED_CHARS)
    return _client_text_memo(value, rules)


@functools.lru_cache(maxsize=8192)
def _client_text_memo(value: str, rules: SecretRules) -> str:
    return redact_text(value, rules)


_TS, _DECISION_ID, _ARGS_DIGEST, _REASON_CODES = (_INDEX[n] for n in ("ts", "decision_id", "args_digest", "reason_codes"))


def to_stored_row(row: Mapping[str, Any], rules: SecretRules) -> StoredRow:
    """Convert a recorded row: digest then redact the arguments, coerce types.

    Runs on the writer thread. Never raises for odd values: a value that cannot
    be converted is stored as NULL (text columns fall back to ``str()``).
    """
    if not _KNOWN.issuperset(row.keys()):
        _warn_unknown(row)
    values: list[Any] = [None] * len(COLUMN_NAMES)
    index_of, convert, plain = _INDEX.get, _CONVERT, _PLAIN_TEXT
    for name, value in row.items():
        if value is None:
            continue
        index = index_of(name)
        if index is None:
            continue
        if type(value) is str and name in plain:
            values[index] = value if name not in _CLIENT_TEXT else _client_text(value, rules)
        else:
            values[index] = convert[name](value, rules)
    if values[_TS] is None:
        values[_TS] = time.time()
    if values[_DECISION_ID] is None:
        values[_DECISION_ID] = new_decision_id(values[_TS])
    if values[_ARGS_DIGEST] is None:
        digested = row["digest_of"] if "digest_of" in row else row.get("arguments")
        if digested is not None:
            values[_ARGS_DIGEST] = args_digest(digested)
    if values[_REASON_CODES] is None:
        values[_REASON_CODES] = _reason_codes(row.get("reasons"))
    return tuple(values)


def to_spill_line(stored: StoredRow) -> bytes:
    """One JSON line (with its newline) for the spill file; JSON columns inline."""
    document = {
        name: orjson.Fragment(value) if name in JSON_COLUMNS and value is not None else value
        for name, value in zip(COLUMN_NAMES, stored, strict=True)
    }
    return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE)


def from_spill_line(line: bytes) -> StoredRow:
    """Parse a spill line back (raises ``ValueError`` when it is not a row)."""
    document = orjson.loads(line)
    if not isinstance(document, dict) or not document.get("decision_id"):
        raise ValueError("not an audit row")
    values = tuple(_coerce(name, document.get(name)) for name in COLUMN_NAMES)
    if values[_INDEX["ts"]] is None:
        raise ValueError("audit row without ts")
    return values


def to_db_values(stored: StoredRow) -> tuple[Any, ...]:
    """Values ready for the DuckDB appender (ts as an aware UTC datetime)."""
    return (ts_datetime(stored[0]), *stored[1:])


def ts_datetime(epoch: float) -> dt.datetime:
    """A stored ``ts`` (epoch seconds) as DuckDB receives it: an aware UTC datetime, rounded
    to the microsecond the way every staging path rounds it."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
