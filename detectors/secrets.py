"""Credential detector: finds secrets in JSON values with the rules of ``rules/secrets.yaml``.

It reports where (a JSON pointer and character span) and which rule, never the secret
itself, so findings can be logged and audited safely. Redaction is the policy's call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from firewall.audit.redact import SecretRules, hidden_secret_spans, load_secret_rules, may_hide_secret

from .jsonwalk import string_leaves
from .memo import TextMemo, memoised_scan

_MIN_LENGTH = 6  # no rule of the file matches anything shorter
MIN_LENGTH = _MIN_LENGTH


@dataclass(frozen=True, slots=True)
class SpanFinding:
    """One finding of a span detector (secrets, PII): the string it sits in (pointer), where
    in it, which rule, and which part of the message (arguments, result, error, params)."""

    pointer: str
    rule: str
    start: int
    end: int
    part: str

    def as_dict(self) -> dict[str, Any]:
        return {"pointer": self.pointer, "rule": self.rule, "start": self.start, "end": self.end, "part": self.part}


class SecretScanner:
    """Scans every string of a JSON value; rules are compiled once, at construction."""

    def __init__(self, rules: SecretRules | None = None) -> None:
        self._rules = rules if rules is not None else load_secret_rules()
        self._memo: TextMemo[tuple[tuple[int, int, str], ...]] = TextMemo()

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping ``(start, end, rule)`` spans of the secrets in ``text``."""
        if len(text) < _MIN_LENGTH:
            return []
        return memoised_scan(self._memo, text, self._scan_text)

    def _scan_text(self, text: str) -> list[tuple[int, int, str]]:
        spans = self._rule_spans(text)
        # The same text as a reader may see it: folded, decoded, unescaped (see there).
        if may_hide_secret(text):
            spans += hidden_secret_spans(text, self._rules)
        if len(spans) < 2:
            return spans
        spans.sort()
        merged = [spans[0]]
        for start, end, rule in spans[1:]:
            last_start, last_end, last_rule = merged[-1]
            if start < last_end:  # overlapping matches of two rules: one redaction
                merged[-1] = (last_start, max(end, last_end), last_rule)
            else:
                merged.append((start, end, rule))
        return merged

    def _rule_spans(self, text: str) -> list[tuple[int, int, str]]:
        return [(start, end, rule.id) for rule in self._rules.candidates(text.lower()) for start, end in rule.spans(text)]

    def scan(self, value: Any, *, pointer: str, part: str) -> list[SpanFinding]:
        """Findings for every string leaf of ``value``, located by RFC 6901 pointers."""
        return self.scan_leaves(string_leaves(value, pointer, min_len=_MIN_LENGTH), part=part)

    def scan_leaves(self, leaves: list[tuple[str, str]], *, part: str) -> list[SpanFinding]:
        """:meth:`scan` of already walked ``(pointer, string)`` leaves (any may be short)."""
        findings = [
            SpanFinding(where, rule, start, end, part)
            for where, text in leaves
            for start, end, rule in self.scan_text(text)
        ]
        if len(findings) > 1:
            findings.sort(key=lambda f: (f.pointer, f.start))
        return findings


SecretFinding = SpanFinding
