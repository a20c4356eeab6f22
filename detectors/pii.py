"""Personal-data detector: finds emails, card numbers, IBANs, US SSNs, phone numbers and IP
addresses in JSON values with the rules of ``rules/pii.yaml``.

Candidates come from the rule's regex; checksums and numbering plans come from
well-kept libraries (python-stdnum for Luhn, IBAN and SSN; phonenumbers for phone
numbers). Like the secrets detector it reports where and which rule, never the value.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .jsonwalk import string_leaves
from .memo import TextMemo, memoised_scan
from .secrets import SpanFinding
from .normalize import normalize

RULES_FILE = Path(__file__).resolve().parent.parent / "rules" / "pii.yaml"
_MIN_LENGTH = 7  # the shortest rule match: "1.1.1.1"


PiiFinding = SpanFinding


@dataclass(frozen=True, slots=True)
class PiiRule:
    id: str
    regex: re.Pattern[str]
    validate: Callable[[str], bool]
    # Characters every match contains (empty: no pre-check): a string lacking all of them
    # is skipped unmatched.
    needs: str


class PiiRulesError(ValueError):
    """rules/pii.yaml is unusable; the message names the rule."""


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _email(candidate: str) -> bool:
    local, _, domain = candidate.rpartition("@")
    return ".." not in local and not local.endswith(".") and ".." not in domain


def _luhn(digits_re: re.Pattern[str] | None) -> Callable[[str], bool]:
    from stdnum import luhn

    def check(candidate: str) -> bool:
        digits = _digits(candidate)
        if digits_re is not None and not digits_re.fullmatch(digits):
            return False
        return luhn.is_valid(digits)

    return check


def _iban() -> Callable[[str], bool]:
    from stdnum import iban

    return iban.is_valid


def _us_ssn() -> Callable[[str], bool]:
    from stdnum.us import ssn

    return ssn.is_valid


def _phone(region: str) -> Callable[[str], bool]:
    import phonenumbers

    def check(candidate: str) -> bool:
        if len(_digits(candidate)) < 7:
            return False
        try:
            number = phonenumbers.parse(candidate, None if candidate.startswith("+") else region)
        except phonenumbers.NumberParseException:
            return False
        return phonenumbers.is_valid_number(number)

    return check


def _ip(version: int) -> Callable[[str], bool]:
    def check(candidate: str) -> bool:
        if version == 6 and sum(c.isalnum() for c in candidate) < 3:
            return False  # "::", "1::" and the like are rarely addresses in prose
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            return False
        return True

    return check


def _validator(name: str | None, digits: re.Pattern[str] | None, region: str) -> Callable[[str], bool] | None:
    """The named validator of rules/pii.yaml (None: accept every candidate), or None if unknown."""
    match name:
        case None:
            return lambda _candidate: True
        case "email":
            return _email
        case "luhn":
            return _luhn(digits)
        case "iban":
            return _iban()
        case "us_ssn":
            return _us_ssn()
        case "phone":
            return _phone(region)
        case "ipv4":
            return _ip(4)
        case "ipv6":
            return _ip(6)
    return None


def _excluding(exclude: re.Pattern[str] | None, check: Callable[[str], bool]) -> Callable[[str], bool]:
    if exclude is None:
        return check
    return lambda candidate: not exclude.search(candidate) and check(candidate)


_NEEDS = {"email": "@", "ipv4": ".", "ipv6": ":"}


def load_pii_rules(path: str | Path = RULES_FILE) -> list[PiiRule]:
    """Compile the rules file; raises :class:`PiiRulesError` naming the faulty rule."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("rules"), list):
        raise PiiRulesError(f"{path}: expected version: 1 and a list of rules")
    region = str(doc.get("phone_region") or "US")
    rules: list[PiiRule] = []
    for raw in doc["rules"]:
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(rule_id, str):
            raise PiiRulesError(f"{path}: every rule needs a string id")
        try:
            regex = re.compile(raw["regex"])
            digits = re.compile(raw["digits"]) if raw.get("digits") else None
            exclude = re.compile(raw["exclude"]) if raw.get("exclude") else None
        except (KeyError, re.error) as exc:
            raise PiiRulesError(f"{path}: rule {rule_id}: bad regex: {exc}") from None
        validator = raw.get("validator")
        check = _validator(validator, digits, region)
        if check is None:
            raise PiiRulesError(f"{path}: rule {rule_id}: unknown validator {validator!r}")
        needs = _NEEDS.get(validator, "0123456789") if validator else ""
        # Logs and listings repeat the same values; validating each distinct one once is enough.
        check = functools.lru_cache(maxsize=4096)(_excluding(exclude, check))
        rules.append(PiiRule(rule_id, regex, check, needs))
    return rules


class PiiScanner:
    """Scans every string of a JSON value; rules are compiled once, at construction."""

    def __init__(self, rules: list[PiiRule] | None = None, *, enabled: set[str] | None = None) -> None:
        rules = rules if rules is not None else load_pii_rules()
        self._rules = [r for r in rules if enabled is None or r.id in enabled]
        # One character-class search per distinct `needs` (digits, "@", "." ...) and text.
        self._needs = {r.needs: re.compile(f"[{re.escape(r.needs)}]") for r in self._rules if r.needs}
        self._memo: TextMemo[tuple[tuple[int, int, str], ...]] = TextMemo()

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self._rules]

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping ``(start, end, rule)`` spans, in ``text``'s own offsets.

        Text is matched after normalisation (so an address split by zero-width characters
        or written in fullwidth digits is still found); spans map back to ``text``.
        """
        if len(text) < _MIN_LENGTH:
            return []
        return memoised_scan(self._memo, text, self._scan_text)

    def _scan_text(self, text: str) -> list[tuple[int, int, str]]:
        norm = normalize(text)
        body = norm.text
        spans: list[tuple[int, int, str]] = []
        taken = bytearray(len(body))
        present: dict[str, bool] = {}
        for rule in self._rules:  # file order is priority order: a card is not also a phone
            needs = rule.needs
            if needs:
                found = present.get(needs)
                if found is None:
                    found = present[needs] = self._needs[needs].search(body) is not None
                if not found:
                    continue
            for m in rule.regex.finditer(body):
                start, end = m.span()
                if any(taken[start:end]) or not rule.validate(m.group()):
                    continue
                taken[start:end] = b"\x01" * (end - start)
                o_start, o_end = norm.to_original(start, end)
                spans.append((o_start, o_end, rule.id))
        spans.sort()
        return spans

    def scan(self, value: Any, *, pointer: str, part: str) -> list[PiiFinding]:
        """Findings for every string leaf of ``value``, located by RFC 6901 pointers."""
        return self.scan_leaves(string_leaves(value, pointer, min_len=_MIN_LENGTH), part=part)

    def scan_leaves(self, leaves: list[tuple[str, str]], *, part: str) -> list[PiiFinding]:
        """:meth:`scan` of already walked ``(pointer, string)`` leaves (any may be short)."""
        findings = [
            PiiFinding(where, rule, start, end, part)
            for where, text in leaves
            for start, end, rule in self.scan_text(text)
        ]
        if len(findings) > 1:
            findings.sort(key=lambda f: (f.pointer, f.start))
        return findings
