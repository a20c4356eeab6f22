"""Decision documents: validation (fail closed) and redaction.

``normalize_decision`` turns whatever ``data.mcpfw.decision`` produced into a
:class:`Decision`. Anything that does not match the v1 decision contract
becomes a deny with reason code ``policy_error``: a broken policy must never
let traffic through. ``apply_redactions`` executes a decision's ``redact``
instructions on a JSON-RPC message: whole values, regular-expression matches,
or character spans (``"span": [start, end]``, e.g. from a detector finding).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .errors import RedactionError

__all__ = [
    "DEFAULT_REPLACEMENT",
    "KNOWN_OBLIGATIONS",
    "POLICY_ERROR",
    "Decision",
    "apply_redactions",
    "apply_removals",
    "deny_decision",
    "normalize_decision",
    "parse_pointer",
]

POLICY_ERROR: Final = "policy_error"
DEFAULT_REPLACEMENT: Final = "[REDACTED]"
KNOWN_OBLIGATIONS: Final = frozenset({"tag", "require_approval"})
# Redaction may only rewrite payload members: changing "jsonrpc", "id" or
# "method" would break the protocol rather than hide data.
REDACTABLE_MEMBERS: Final = frozenset({"params", "result", "error"})
_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE: Final = re.compile(r"~(?![01])")

Action = Literal["allow", "deny", "redact"]


@dataclass(slots=True)
class Decision:
    """A validated policy decision (decision document v1)."""

    allow: bool
    reasons: list[dict[str, str]] = field(default_factory=list)
    redact: list[dict[str, Any]] = field(default_factory=list)
    obligations: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    remove: list[str] = field(default_factory=list)
    approvals: list[str] = field(default_factory=list)  # why a person must approve (require_approval)

    @property
    def action(self) -> Action:
        """``deny`` if not allowed, ``redact`` if allowed but the message is modified, else ``allow``."""
        if not self.allow:
            return "deny"
        return "redact" if self.redact or self.remove else "allow"

    @property
    def reason_codes(self) -> list[str]:
        """The ``code`` of every reason, in order."""
        return [reason["code"] for reason in self.reasons]


def deny_decision(code: str, message: str, error: str | None = None) -> Decision:
    """A deny with a single reason."""
    return Decision(allow=False, reasons=[{"code": code, "message": message}], error=error)


class _Invalid(Exception):
    """Internal: the decision document violates the contract."""


def normalize_decision(raw: object) -> Decision:
    """Validate a raw decision document; fail closed on any contract violation."""
    try:
        return _normalize(raw)
    except _Invalid as exc:
        return deny_decision(POLICY_ERROR, "the policy returned an invalid decision", error=str(exc))


_DECISION_FIELDS = frozenset({"version", "allow", "reasons", "redact", "remove", "obligations"})


def _normalize(raw: object) -> Decision:
    if not isinstance(raw, dict):
        raise _Invalid(f"decision is not an object (got {_json_type(raw)})")
    version = raw.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise _Invalid(f"unsupported decision version {version!r} (expected 1)")
    unknown = sorted(set(raw) - _DECISION_FIELDS)
    if unknown:  # e.g. a "modify" or "block" the firewall would silently not act on
        raise _Invalid(f"decision has unknown field(s) {', '.join(map(repr, unknown))}; "
                       f"expected only {', '.join(sorted(_DECISION_FIELDS))}")
    allow = raw.get("allow")
    if not isinstance(allow, bool):
        problem = "missing" if "allow" not in raw else f"not a boolean (got {_json_type(allow)})"
        raise _Invalid(f"decision.allow is {problem}")
    reasons = [_reason(item, i) for i, item in enumerate(_array(raw, "reasons"))]
    redact = [_redaction(item, i) for i, item in enumerate(_array(raw, "redact"))]
    obligations = [_obligation(item, i) for i, item in enumerate(_array(raw, "obligations"))]
    tags = list(dict.fromkeys(o["tag"] for o in obligations if o["type"] == "tag"))
    remove = [_removal(item, i) for i, item in enumerate(_array(raw, "remove"))]
    approvals = list(dict.fromkeys(o["message"] for o in obligations if o["type"] == "require_approval"))
    return Decision(allow=allow, reasons=reasons, redact=redact, obligations=obligations, tags=tags, remove=remove,
                    approvals=approvals)


def _array(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid(f"decision.{key} is not an array (got {_json_type(value)})")
    return value


def _reason(item: object, index: int) -> dict[str, str]:
    if isinstance(item, str):
        return {"code": "policy", "message": item}
    if isinstance(item, dict):
        code, message = item.get("code"), item.get("message")
        if isinstance(code, str) and code and isinstance(message, str):
            return {"code": code, "message": message}
    raise _Invalid(f"decision.reasons[{index}] must be a string or {{code: string, message: string}}")


def _redaction(item: object, index: int) -> dict[str, Any]:
    where = f"decision.redact[{index}]"
    if not isinstance(item, dict):
        raise _Invalid(f"{where} is not an object")
    pointer = item.get("pointer")
    if not isinstance(pointer, str):
        raise _Invalid(f"{where}.pointer must be a string")
    try:
        tokens = parse_pointer(pointer)
    except RedactionError as exc:
        raise _Invalid(f"{where}.pointer: {exc}") from None
    if not tokens or tokens[0] not in REDACTABLE_MEMBERS:
        raise _Invalid(f"{where}.pointer must point inside /params, /result or /error (got {pointer!r})")
    _check_target(tokens, where, pointer)
    entry: dict[str, Any] = {"pointer": pointer}
    for key in ("pattern", "replacement"):
        if key in item and item[key] is not None:
            if not isinstance(item[key], str):
                raise _Invalid(f"{where}.{key} must be a string")
            entry[key] = item[key]
    if "pattern" in entry:
        try:
            _compile(entry["pattern"])
        except RedactionError as exc:
            raise _Invalid(f"{where}.pattern: {exc}") from None
    span = item.get("span")
    if span is not None:
        if "pattern" in entry:
            raise _Invalid(f"{where} has both 'span' and 'pattern'; use one")
        entry["span"] = _span(span, where)
    return entry


def _span(span: object, where: str) -> list[int]:
    """Validate ``[start, end]``: two non-negative integers (not booleans), start <= end."""
    if (
        isinstance(span, list)
        and len(span) == 2
        and all(isinstance(bound, int) and not isinstance(bound, bool) and bound >= 0 for bound in span)
        and span[0] <= span[1]
    ):
        return [span[0], span[1]]
    raise _Invalid(f"{where}.span must be [start, end]: two non-negative integers with start <= end (got {span!r})")


def _removal(item: object, index: int) -> str:
    where = f"decision.remove[{index}]"
    if not isinstance(item, str):
        raise _Invalid(f"{where} must be a JSON pointer string")
    try:
        tokens = parse_pointer(item)
    except RedactionError as exc:
        raise _Invalid(f"{where}: {exc}") from None
    if len(tokens) < 2 or tokens[0] not in REDACTABLE_MEMBERS:
        raise _Invalid(f"{where} must point to a member inside /params, /result or /error (got {item!r})")
    _check_target(tokens, where, item)
    return item


# What a request calls or reads: changing it would make the server do something other than
# what the policy judged and the audit log records. Deny such a request instead.
_FIXED_TARGETS = (["params"], ["params", "name"], ["params", "uri"])


def _check_target(tokens: list[str], where: str, pointer: str) -> None:
    if tokens in _FIXED_TARGETS:
        raise _Invalid(f"{where} may not change {pointer!r} (what the request calls or reads); deny the message instead")


def _obligation(item: object, index: int) -> dict[str, Any]:
    where = f"decision.obligations[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise _Invalid(f"{where} must be an object with a string 'type'")
    kind = item["type"]
    if kind not in KNOWN_OBLIGATIONS:
        raise _Invalid(f"{where} has unknown obligation type {kind!r}")
    if kind == "tag" and not (isinstance(item.get("tag"), str) and item["tag"]):
        raise _Invalid(f"{where}: a tag obligation needs a non-empty string 'tag'")
    if kind == "require_approval" and not (isinstance(item.get("message"), str) and item["message"]):
        raise _Invalid(f"{where}: a require_approval obligation needs a non-empty string 'message'")
    return dict(item)


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


# -- redaction -------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise RedactionError(f"invalid regular expression {pattern!r}: {exc}") from None


def parse_pointer(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON pointer into unescaped reference tokens."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise RedactionError(f"JSON pointer must be empty or start with '/': {pointer!r}")
    tokens = pointer[1:].split("/")
    for token in tokens:
        # "~" is only valid as "~0" or "~1".
        if "~" in token and _BAD_ESCAPE.search(token):
            raise RedactionError(f"invalid '~' escape in JSON pointer {pointer!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in tokens]


def apply_redactions(message: dict[str, Any], redact: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Apply ``redact`` instructions to a JSON-RPC message.

    Returns ``(redacted_message, problems)``. The input message is never
    modified: containers on each redacted path are copied. A pointer that
    does not resolve is skipped and described in ``problems``.

    Span redactions (``"span": [start, end]``) come first: their offsets are
    character offsets (Python ``str`` indices) into the string as the policy
    saw it, so all spans of one pointer are applied together, from the last
    to the first, before anything else changes that string. Overlapping
    spans are merged so that no character of any of them survives.
    The other instructions then run in order: without a ``pattern`` the whole
    value is replaced by the replacement string; with one, every match inside
    the string value (or inside every string nested in an array/object value)
    is replaced literally. Raises RedactionError for an invalid pointer or
    regular expression, and for a span that does not fit the string at its
    pointer (or a pointer to a non-string), so the caller can deny.
    """
    result: dict[str, Any] = dict(message)
    copied: set[int] = {id(result)}
    problems: list[str] = []
    spans: dict[str, list[dict[str, Any]]] = {}
    for entry in redact:
        if entry.get("span") is not None:
            spans.setdefault(entry["pointer"], []).append(entry)
    for pointer, entries in spans.items():
        found = _locate(result, pointer, copied)
        if found is None:
            problems.append(f"redaction pointer {pointer!r} does not resolve")
            continue
        parent, key = found
        parent[key] = _redact_spans(parent[key], pointer, entries)
    for entry in redact:
        if entry.get("span") is not None:
            continue
        pointer = entry["pointer"]
        pattern = entry.get("pattern")
        regex = _compile(pattern) if pattern is not None else None
        replacement = entry.get("replacement")
        if replacement is None:
            replacement = DEFAULT_REPLACEMENT
        found = _locate(result, pointer, copied)
        if found is None:
            problems.append(f"redaction pointer {pointer!r} does not resolve")
            continue
        parent, key = found
        if regex is None:
            parent[key] = replacement
        else:
            parent[key] = _substitute(parent[key], regex, replacement)
    return result, problems


def apply_removals(message: dict[str, Any], remove: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Delete the members or array elements that ``remove`` points at (e.g. ``/result/tools/3``).

    Like :func:`apply_redactions` the input is never modified. All pointers refer to the
    message as the policy saw it: elements of one array are deleted from the highest
    index down, so earlier deletions never shift later ones.
    """
    result: dict[str, Any] = dict(message)
    copied: set[int] = {id(result)}
    problems: list[str] = []
    resolved = []
    for pointer in dict.fromkeys(remove):
        found = _locate(result, pointer, copied)
        if found is None:
            problems.append(f"removal pointer {pointer!r} does not resolve")
            continue
        parent, key = found
        resolved.append((id(parent), key if isinstance(key, int) else -1, parent, key))
    for _, _, parent, key in sorted(resolved, key=lambda r: (r[0], r[1]), reverse=True):
        del parent[key]
    return result, problems


def _locate(root: dict[str, Any], pointer: str, copied: set[int]) -> tuple[Any, str | int] | None:
    """The container and key ``pointer`` designates (containers on the way copied), or None."""
    tokens = parse_pointer(pointer)
    if not tokens:
        raise RedactionError("refusing to modify the whole message (empty pointer)")
    parent = _resolve_parent(root, tokens, copied)
    key = _child_key(parent, tokens[-1]) if parent is not None else None
    return None if key is None else (parent, key)


def _resolve_parent(root: dict[str, Any], tokens: list[str], copied: set[int]) -> Any:
    """Walk to the container holding the last token, copying containers on the way."""
    node: Any = root
    for token in tokens[:-1]:
        key = _child_key(node, token)
        if key is None:
            return None
        child = node[key]
        if not isinstance(child, (dict, list)):
            return None
        if id(child) not in copied:
            child = dict(child) if isinstance(child, dict) else list(child)
            node[key] = child
            copied.add(id(child))
        node = child
    return node


def _child_key(node: Any, token: str) -> str | int | None:
    """The dict key or list index ``token`` designates in ``node``, or None."""
    if isinstance(node, dict):
        return token if token in node else None
    # RFC 6901 array indices: no sign, no leading zeros; "-" never exists.
    if isinstance(node, list) and _INDEX.fullmatch(token):
        index = int(token)
        return index if index < len(node) else None
    return None


def _redact_spans(value: Any, pointer: str, entries: list[dict[str, Any]]) -> str:
    """Replace the character ranges of ``entries`` (all for one pointer) in the string ``value``."""
    if not isinstance(value, str):
        raise RedactionError(f"span redaction at {pointer!r}: the value is a {_json_type(value)}, not a string")
    ranges = []
    for entry in entries:
        start, end = entry["span"]
        if end > len(value):
            raise RedactionError(
                f"span redaction at {pointer!r}: span [{start}, {end}] is beyond the string's {len(value)} characters"
            )
        replacement = entry.get("replacement")
        ranges.append((start, end, DEFAULT_REPLACEMENT if replacement is None else replacement))
    ranges.sort(key=lambda item: (item[0], item[1]))
    # Merge overlapping ranges: replacing a nested or overlapping span after
    # another one would otherwise work on shifted offsets and could leave
    # original characters behind. Adjacent ranges stay separate.
    merged: list[tuple[int, int, list[str]]] = []
    for start, end, replacement in ranges:
        if merged and start < merged[-1][1]:
            last_start, last_end, replacements = merged[-1]
            if replacement not in replacements:
                replacements.append(replacement)
            merged[-1] = (last_start, max(last_end, end), replacements)
        else:
            merged.append((start, end, [replacement]))
    for start, end, replacements in reversed(merged):
        value = value[:start] + "".join(replacements) + value[end:]
    return value


def _substitute(value: Any, regex: re.Pattern[str], replacement: str) -> Any:
    """Replace matches in a string, or in every string nested in ``value``."""
    if isinstance(value, str):
        return regex.sub(lambda _match: replacement, value)
    if isinstance(value, list):
        return [_substitute(item, regex, replacement) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, regex, replacement) for key, item in value.items()}
    return value
