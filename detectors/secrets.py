"""Credential detector: finds secrets in JSON values with the rules of ``rules/secrets.yaml``.

It reports where (a JSON pointer and character span) and which rule, never the secret
itself, so findings can be logged and audited safely. Redaction is the policy's call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from firewall.audit.redact import SecretRules, load_secret_rules

_MIN_LENGTH = 6  # no rule of the file matches anything shorter
_MAX_STRINGS = 10_000


@dataclass(frozen=True, slots=True)
class SecretFinding:
    """One credential: the string it sits in (pointer), where in it, and which rule."""

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

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping ``(start, end, rule)`` spans of the secrets in ``text``."""
        if len(text) < _MIN_LENGTH:
            return []
        spans: list[tuple[int, int, str]] = []
        for rule in self._rules.candidates(text.lower()):
            for start, end in rule.spans(text):
                spans.append((start, end, rule.id))
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

    def scan(self, value: Any, *, pointer: str, part: str) -> list[SecretFinding]:
        """Findings for every string leaf of ``value``, located by RFC 6901 pointers."""
        findings: list[SecretFinding] = []
        stack: list[tuple[str, Any]] = [(pointer, value)]
        seen = 0
        while stack and seen < _MAX_STRINGS:
            where, node = stack.pop()
            if isinstance(node, str):
                seen += 1
                for start, end, rule in self.scan_text(node):
                    findings.append(SecretFinding(where, rule, start, end, part))
            elif isinstance(node, dict):
                stack.extend((f"{where}/{_escape(k)}", v) for k, v in node.items() if isinstance(v, (str, dict, list)))
            elif isinstance(node, list):
                stack.extend((f"{where}/{i}", v) for i, v in enumerate(node) if isinstance(v, (str, dict, list)))
        findings.sort(key=lambda f: (f.pointer, f.start))
        return findings


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
