"""Secret removal for audit records, and the argument digest.

Two mechanisms, both applied to a *copy* of the value:

* key names: a value stored under a key whose name suggests a secret
  (``password``, ``api_key``, ``Authorization``, ``sessionId``...; matched
  case-, underscore- and dash-insensitively) becomes ``"[REDACTED]"``;
* credential patterns: every string is scanned with the rules of
  ``rules/secrets.yaml`` and each matching span becomes
  ``"[REDACTED:<rule-id>]"``.

Redaction is deliberately not done on the relay hot path: the relay thread
hands the raw arguments to :meth:`firewall.audit.AuditLog.record` and the
audit writer thread calls :func:`args_digest` (on the unredacted value) and
:func:`redact_for_audit` just before storing the row.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import yaml

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[2] / "rules" / "secrets.yaml"
"""Where :func:`load_secret_rules` looks when no path is given."""

REDACTED = "[REDACTED]"
"""Replacement for values under secret-looking keys."""

_MAX_DEPTH = 256
_MIN_SCAN_LENGTH = 6  # shorter strings cannot hold any pattern of the rule file
_LONG_TEXT = 16 * 1024
_CUT_MARGIN = 4096  # longer than any secret the rules match, except PEM blocks
_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}


class SecretRulesError(ValueError):
    """The secret rule file is missing, malformed or has an invalid rule."""


@dataclass(frozen=True, slots=True)
class SecretRule:
    """One compiled credential pattern of the rule file."""

    id: str
    description: str
    pattern: re.Pattern[str]
    keywords: tuple[str, ...] = ()
    min_entropy: float | None = None

    def may_match(self, lowered: str) -> bool:
        """Cheap pre-check: True unless keywords exist and none is in ``lowered``."""
        return not self.keywords or any(k in lowered for k in self.keywords)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Start/end offsets of the secrets this rule finds in ``text``."""
        if not self.may_match(text.lower()):
            return []
        found = []
        for match in self.pattern.finditer(text):
            span = self._secret_span(match)
            if span is not None:
                found.append(span)
        return found

    def redact(self, text: str) -> str:
        """``text`` with every secret span replaced by ``[REDACTED:<id>]``."""
        return self.pattern.sub(self._replacement, text)

    def _secret_span(self, match: re.Match[str]) -> tuple[int, int] | None:
        group = "secret" if "secret" in self.pattern.groupindex else 0
        start, end = match.span(group)
        if start < 0 or start == end:
            return None
        if self.min_entropy is not None and shannon_entropy(match.string[start:end]) < self.min_entropy:
            return None
        return start, end

    def _replacement(self, match: re.Match[str]) -> str:
        whole = match.group(0)
        span = self._secret_span(match)
        if span is None:
            return whole
        offset = match.start()
        return f"{whole[: span[0] - offset]}[REDACTED:{self.id}]{whole[span[1] - offset :]}"


def shannon_entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character (0.0 for "")."""
    if not text:
        return 0.0
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in Counter(text).values())


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of ``words``, factored by common prefixes: Python's ``re`` tries
    every branch of a flat alternation at each position, a trie only the branches that fit."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + emit(sub) for ch, sub in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: the rest is optional (any match will do)
            return f"(?:{body})?"
        return body

    return emit(tree)


class SecretRules:
    """An ordered, immutable set of :class:`SecretRule` with a keyword index.

    Iterating yields the rules in file order. :meth:`candidates` returns only
    the rules whose keyword pre-check passes, testing each distinct keyword once.
    """

    __slots__ = ("rules", "_keywords", "_unconditional", "_any_keyword")

    def __init__(self, rules: tuple[SecretRule, ...]) -> None:
        self.rules = rules
        self._keywords = tuple(sorted({k for rule in rules for k in rule.keywords}))
        self._unconditional = [r for r in rules if not r.keywords]
        # One regex over every keyword, factored as a trie: whether a text holds any.
        self._any_keyword = re.compile(_trie_pattern(self._keywords)) if self._keywords else None

    def __iter__(self) -> Iterator[SecretRule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def any_keyword(self, lowered: str) -> bool:
        """Whether any rule's keyword occurs in ``lowered``; False means no rule can match it
        (every rule of the file has keywords, see :meth:`may_match`)."""
        if self._unconditional:
            return True
        return self._any_keyword is not None and self._any_keyword.search(lowered) is not None

    def candidates(self, lowered: str) -> list[SecretRule]:
        """Rules worth running on a text whose lower-cased form is ``lowered``."""
        # Most texts hold no keyword: one pass of the keyword trie says so (twice as fast
        # as the substring tests below, at any length).
        if self._any_keyword is not None and self._any_keyword.search(lowered) is None:
            return list(self._unconditional)
        # Which keywords are present: plain substring tests (memmem), overlaps included.
        present = {k for k in self._keywords if k in lowered}
        return [r for r in self.rules if not r.keywords or not present.isdisjoint(r.keywords)]


def load_secret_rules(path: str | os.PathLike[str] | None = None) -> SecretRules:
    """Load and compile the credential rules (default: ``rules/secrets.yaml``).

    The result is cached per file and reloaded when the file changes. Raises
    :class:`SecretRulesError` naming the offending rule when the file is invalid.
    """
    resolved = Path(path).expanduser().resolve() if path is not None else DEFAULT_RULES_PATH
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise SecretRulesError(f"cannot read secret rules {resolved}: {exc.strerror or exc}") from exc
    return _load_rules(str(resolved), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_rules(path: str, _mtime_ns: int, _size: int) -> SecretRules:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise SecretRulesError(f"cannot load secret rules {path}: {exc}") from exc
    entries = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise SecretRulesError(f"{path}: expected a mapping with a 'rules' list")
    rules: list[SecretRule] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        rule = _parse_rule(entry, f"{path}: rule #{index + 1}")
        if rule.id in seen:
            raise SecretRulesError(f"{path}: duplicate rule id {rule.id!r}")
        seen.add(rule.id)
        rules.append(rule)
    return SecretRules(tuple(rules))


def _parse_rule(entry: object, where: str) -> SecretRule:
    if not isinstance(entry, dict):
        raise SecretRulesError(f"{where}: expected a mapping")
    rule_id, regex = entry.get("id"), entry.get("regex")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", rule_id):
        raise SecretRulesError(f"{where}: 'id' must be a lower-case slug")
    if not isinstance(regex, str) or not regex:
        raise SecretRulesError(f"{where} ({rule_id}): 'regex' must be a non-empty string")
    flags = 0
    for name in entry.get("flags") or ():
        if name not in _FLAGS:
            raise SecretRulesError(f"{where} ({rule_id}): unknown flag {name!r}")
        flags |= _FLAGS[name]
    try:
        pattern = re.compile(regex, flags)
    except re.error as exc:
        raise SecretRulesError(f"{where} ({rule_id}): invalid regex: {exc}") from exc
    keywords = entry.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
        raise SecretRulesError(f"{where} ({rule_id}): 'keywords' must be a list of strings")
    min_entropy = entry.get("min_entropy")
    if isinstance(min_entropy, bool) or not isinstance(min_entropy, (int, float, type(None))):
        raise SecretRulesError(f"{where} ({rule_id}): 'min_entropy' must be a number")
    return SecretRule(
        id=rule_id,
        description=str(entry.get("description") or ""),
        pattern=pattern,
        keywords=tuple(k.lower() for k in keywords),
        min_entropy=float(min_entropy) if min_entropy is not None else None,
    )


# Key names are compared after lower-casing and dropping separators, so
# "API-Key", "api_key" and "apiKey" all read "apikey".
_KEY_SEPARATORS = re.compile(r"[\s_.\-]+")
_SECRET_KEY_PARTS = (
    "password", "passwd", "passphrase", "secret", "apikey", "accesskey", "privatekey",
    "credential", "authorization", "cookie", "sessionid", "sessiontoken", "sessionkey",
)
# Suffix-only words: "token" must not catch "max_tokens" or "tokenizer".
_SECRET_KEY_SUFFIXES = ("token", "pwd", "auth", "session", "jwt", "bearer")
_SECRET_KEY_EXACT = frozenset({"pass", "pw"})


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """True when a mapping key's name suggests that its value is a secret."""
    key = _KEY_SEPARATORS.sub("", name.lower())
    return (
        key in _SECRET_KEY_EXACT
        or any(part in key for part in _SECRET_KEY_PARTS)
        or key.endswith(_SECRET_KEY_SUFFIXES)
    )


_ESCAPED_TOKEN = re.compile(r"[^\s\"'<>]*(?:%[0-9A-Fa-f]{2}|&#?[0-9A-Za-z]{1,8};|\\u00[2-7][0-9A-Fa-f])[^\s\"'<>]*")
_BACKSLASH_U = re.compile(r"\\u00([2-7][0-9A-Fa-f])")
_ENCODED_RUN = re.compile(r"[A-Za-z0-9+/_=-]{20,}|(?:\\x[0-9A-Fa-f]{2}){8,}")
_HEX_ESCAPES = re.compile(r"(?:\\x[0-9A-Fa-f]{2}){8,}")
_RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_=-"
# Every byte of an encoded run's alphabet becomes "a", every other byte " ": runs of 20 are
# then found by a substring search (memchr speed) instead of a regex tried at every position.
_RUN_MARKS = bytes(ord("a") if i in _RUN_CHARS else ord(" ") for i in range(256))
_RUN_NEEDLE = b"a" * 20
# A JSON pointer or path of lower-case words ("/params/arguments/message"): base64 made of
# lower-case letters, digits and "/" alone decodes to bytes of which every third is "h" or
# above, which spells none of the credentials the rules know (their prefixes and bodies have
# upper-case letters, digits or "_" there). Hex runs have no "/" and still count.
_PATH_LIKE = re.compile(r"[a-z0-9_-]*(?:/[a-z0-9_-]*)+")


def _has_encoded_run(text: str) -> bool:
    """Whether ``text`` holds a run of 20+ base64/hex/URL-safe characters that is not a
    lower-case path, or 8+ ``\\xNN`` escapes (what ``_ENCODED_RUN`` finds)."""
    if not text.isascii():
        return any(not _PATH_LIKE.fullmatch(m.group()) for m in _ENCODED_RUN.finditer(text))
    if "\\x" in text and _HEX_ESCAPES.search(text):
        return True
    marks = text.encode("ascii").translate(_RUN_MARKS)
    start = marks.find(_RUN_NEEDLE)
    while start >= 0:  # the first 20 marks of a run are the start of that (maximal) run
        end = marks.find(b" ", start)
        if end < 0:
            end = len(marks)
        if not _PATH_LIKE.fullmatch(text, start, end):
            return True
        start = marks.find(_RUN_NEEDLE, end)
    return False


def may_hide_secret(text: str) -> bool:
    """Whether ``text`` could spell a credential in a way the rules do not read as it is:
    non-ASCII (full-width forms, invisible characters), %-escapes, or a long encoded run."""
    return (
        not text.isascii() or "%" in text or "&" in text or "\\u00" in text or _has_encoded_run(text)
    )


def hidden_secret_spans(text: str, rules: SecretRules) -> list[tuple[int, int, str]]:
    """``(start, end, rule)`` of credentials ``text`` spells in a way the rules do not read
    as it is: with compatibility forms or invisible characters (a full-width "ｇｈｐ_", a
    zero-width space inside a token; mapped back to the original characters), base64, hex
    or URL encoding (the whole encoded segment), or a single %-escape ("ghp%5F...")."""
    from detectors.normalize import decoded_segments, normalize  # (detectors import this module)

    def rule_spans(value: str) -> list[tuple[int, int, str]]:
        return [(a, b, rule.id) for rule in rules.candidates(value.lower()) for a, b in rule.spans(value)]

    spans: list[tuple[int, int, str]] = []
    if not text.isascii():
        folded = normalize(text)
        if folded.changed:
            spans += [(*folded.to_original(a, b), rule) for a, b, rule in rule_spans(folded.text)]
    if _has_encoded_run(text):
        for segment in decoded_segments(text):
            if segment.encoding == "escaped":
                continue  # a wide region around the escapes: the token scan below is precise
            if rules.any_keyword(segment.text.lower()):
                spans += [(segment.start, segment.end, rule) for _, _, rule in rule_spans(segment.text)[:1]]
    if "%" in text or "&" in text or "\\u00" in text:
        for token in _ESCAPED_TOKEN.finditer(text):
            plain = token.group()
            for _ in range(3):  # %-escapes of %-escapes, HTML character references
                unescaped = html.unescape(unquote(_BACKSLASH_U.sub(lambda m: chr(int(m.group(1), 16)), plain)))
                if unescaped == plain:
                    break
                plain = unescaped
            if plain != token.group() and rules.any_keyword(plain.lower()):
                spans += [(token.start(), token.end(), rule) for _, _, rule in rule_spans(plain)[:1]]
    return spans


def redact_text(text: str, rules: SecretRules | None = None, *, max_chars: int | None = None) -> str:
    """``text`` with every credential-pattern match replaced span-wise.

    With ``max_chars``, a longer text is cut to that many characters (plus a
    note of its original length) after redaction; only a margin beyond the cut
    is scanned, so a secret straddling the cut is still removed.
    """
    if len(text) < _MIN_SCAN_LENGTH:
        return text
    if rules is None:
        rules = load_secret_rules()
    original = len(text)
    cut = max_chars is not None and original > max_chars
    if cut:
        text = text[: max_chars + _CUT_MARGIN]
    long_text = len(text) > _LONG_TEXT
    # Every rule reads the original text (one rule's replacement must not hide what another
    # keys on: a secret key found by the access key id written before it), then the spans
    # are replaced together, overlapping ones as one.
    found: list[tuple[int, int, str]] = []
    for rule in rules.candidates(text.lower()):
        for match in rule.pattern.finditer(text):
            span = rule._secret_span(match)
            if span is not None:
                found.append((span[0], span[1], rule.id))
        if long_text:
            # `re` keeps the GIL for a whole scan: let relay threads run between rules.
            time.sleep(0)
    if may_hide_secret(text):
        found += hidden_secret_spans(text, rules)
    if found:
        found.sort()
        parts: list[str] = []
        at = 0
        for start, end, rule_id in found:
            if start < at:  # overlaps the span just replaced: widen it
                if end > at:
                    at = end
                continue
            parts += (text[at:start], f"[REDACTED:{rule_id}]")
            at = end
        parts.append(text[at:])
        text = "".join(parts)
    if cut:
        text = f"{text[:max_chars]}…[truncated, {original} chars]"
    return text


@dataclass(frozen=True, slots=True)
class _Redaction:
    rules: SecretRules
    keys: bool
    max_chars: int | None


def redact_for_audit(
    value: Any,
    rules: SecretRules | None = None,
    *,
    keys: bool = True,
    max_chars: int | None = None,
) -> Any:
    """A copy of ``value`` (arguments/params, any JSON value) without secrets.

    Values under secret-looking keys become ``"[REDACTED]"`` (``None`` and
    booleans are kept: they carry no secret) unless ``keys`` is False; every
    string is scanned with the credential patterns and, with ``max_chars``,
    shortened to that length (see :func:`redact_text`). Tuples become lists.
    """
    if rules is None:
        rules = load_secret_rules()
    return _redact(value, _Redaction(rules, keys, max_chars), 0)


# Every word that makes a mapping key (after lower-casing and dropping separators) or a
# list element (_SECRET_FLAG) mark a secret contains one of these.
_SECRET_NEEDLES = re.compile(_trie_pattern({*_SECRET_KEY_PARTS, *_SECRET_KEY_SUFFIXES, *_SECRET_KEY_EXACT, "token"}))
# Mapping keys of the findings column that contain a rule keyword ("secret"). Keys are not
# scanned with the rules; in JSON text, this exact sequence can only be that key (a quote
# inside a string is escaped).
_NOISY_KEYS = ('"secrets":',)
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _may_name_secret(lowered: str) -> bool:
    """Whether a key or list element of the value with this lower-cased JSON text may mark a
    secret (:func:`is_secret_key`, ``_SECRET_FLAG``); False is certain.

    Both compare text with separators dropped, so the screen drops them too. An escape
    (``\\n``) stands for a character that would be dropped: such texts answer True.
    """
    if "\\" in lowered:
        return True
    if lowered.isascii():  # without escapes, the only whitespace JSON text holds is " "
        stripped = lowered.replace(" ", "").replace("_", "").replace(".", "").replace("-", "")
    else:
        # _SECRET_FLAG ignores case, and then "ſ", "ı", "İ" and the Kelvin sign match
        # "s", "i", "i" and "k": fold them (lower() makes "İ" an "i" and a combining dot).
        stripped = _KEY_SEPARATORS.sub("", lowered).translate(_CASE_FOLDS)
    return _SECRET_NEEDLES.search(stripped) is not None


_CASE_FOLDS = str.maketrans({"ſ": "s", "ı": "i", "\u0307": None})


def _refuse(value: Any) -> Any:
    raise TypeError


def redacted_json(
    value: Any, rules: SecretRules | None = None, *, keys: bool = True, max_chars: int | None = None
) -> str:
    """``orjson.dumps(redact_for_audit(value, ...), default=str)`` as text, cheaply when
    there is nothing to redact.

    The value's JSON text is screened first: every string of the value, and every mapping
    key, appears in it verbatim (no rule keyword or secret-key word contains a character
    JSON escapes), so when its lower-cased form holds no rule keyword, no secret-key word
    (with separators dropped) and no string can be longer than ``max_chars``, the redacted
    copy would equal the value and its text is the answer. Otherwise (or for values that
    are not plain JSON) the full walk runs.
    """
    if (type(value) is list or type(value) is dict) and not value:
        return "[]" if type(value) is list else "{}"
    if rules is None:
        rules = load_secret_rules()
    try:
        text = orjson.dumps(value, default=_refuse, option=_JSON_OPTIONS).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        text = None
    if text is not None and (max_chars is None or len(text) <= max_chars):
        lowered = text.lower()
        screened = lowered
        for noisy in _NOISY_KEYS:
            screened = screened.replace(noisy, ":")
        if not rules.any_keyword(screened) and not (keys and _may_name_secret(lowered)) and not may_hide_secret(text):
            return text
    redacted = redact_for_audit(value, rules, keys=keys, max_chars=max_chars)
    return orjson.dumps(redacted, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


def _redact(value: Any, how: _Redaction, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value, how.rules, max_chars=how.max_chars)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= _MAX_DEPTH:
        return "[REDACTED:too-deep]"
    if isinstance(value, Mapping):
        copy: dict[Any, Any] = {}
        for key, item in value.items():
            if how.keys and item is not None and not isinstance(item, bool) and is_secret_key(str(key)):
                redacted = REDACTED
            else:
                redacted = _redact(item, how, depth + 1)
            if isinstance(key, str) and len(key) >= _MIN_SCAN_LENGTH:
                # A credential used as a key ({"ghp_...": true}) is a secret like any other.
                clean = redact_text(key, how.rules, max_chars=how.max_chars)
                if clean != key:
                    key = clean
                    n = 2
                    while key in copy:  # two keys redacted alike must not overwrite each other
                        key, n = f"{clean}#{n}", n + 1
            copy[key] = redacted
        return copy
    if isinstance(value, (list, tuple)):
        return _redact_list(value, how, depth)
    # Not a JSON value (bytes, custom objects): store its text, scanned.
    return redact_text(str(value), how.rules, max_chars=how.max_chars)


# A list element naming a secret flag ("--password", "-token") makes the next
# element a secret: argv-style arguments of shell and exec tools.
_SECRET_FLAG = re.compile(
    r"--?[a-z0-9-]{0,30}(?:password|passwd|passphrase|token|secret|api-?key|access-?key)", re.IGNORECASE
)


def _redact_list(items: list[Any] | tuple[Any, ...], how: _Redaction, depth: int) -> list[Any]:
    copy: list[Any] = []
    secret_next = False
    for item in items:
        if secret_next and isinstance(item, str):
            copy.append(REDACTED)
        else:
            copy.append(_redact(item, how, depth + 1))
        secret_next = how.keys and isinstance(item, str) and _SECRET_FLAG.fullmatch(item) is not None
    return copy


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, non-ASCII kept as UTF-8."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        pass
    # orjson refuses integers beyond 64 bits (and unknown types); the standard
    # library writes the same canonical form for those.
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode("utf-8")
    except (TypeError, ValueError):
        return repr(value).encode("utf-8")


def args_digest(value: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``value`` (pass it unredacted)."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
