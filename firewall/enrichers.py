"""Enrichers: evidence added to the policy input before each decision.

Each one is small and named after the ``input.findings`` key it fills. They run on the
relay path, so each decides cheaply whether a message concerns it at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detectors.jsonwalk import escape
from detectors.secrets import MIN_LENGTH as _SECRETS_MIN, SecretScanner

from .jsonrpc import Kind
from .pipeline import C2S, MessageContext, learns_nothing


# Strings shorter than this hold no finding of either span detector (secrets: 6, PII: 7).
SPAN_MIN_LENGTH = min(_SECRETS_MIN, 7)


def scanned_part(ctx: MessageContext) -> tuple[Any, str, str] | None:
    """What the span detectors read of a message: ``(value, pointer, part)``, or None.

    tools/call arguments from the client, everything the server sends in params, and the
    result or error of every response."""
    body = ctx.message.body
    kind = ctx.message.kind
    if kind is Kind.RESPONSE:
        return body.get("result"), "/result", "result"
    if kind is Kind.ERROR_RESPONSE:
        return body.get("error"), "/error", "error"
    if ctx.direction == C2S:
        return None if ctx.tool is None else (ctx.tool.get("arguments"), "/params/arguments", "arguments")
    return body.get("params"), "/params", "params"


class SpanFindingsEnricher:
    """Base for detectors that report ``{pointer, rule, start, end, part}`` spans.

    Scope: tools/call arguments from the client, everything the server sends in params,
    and the result or error of every response. Subclasses set ``name`` and the scanner,
    which needs ``scan(value, pointer=..., part=...)`` returning findings with ``as_dict()``.
    """

    name: str
    _scanner: Any

    def enrich(self, ctx: MessageContext) -> None:
        scanned = scanned_part(ctx)
        if scanned is None:
            return
        value, pointer, part = scanned
        # The walk is shared with the other span detectors of this message.
        leaves = ctx.string_leaves(value, pointer, SPAN_MIN_LENGTH)
        scan_leaves = getattr(self._scanner, "scan_leaves", None)
        if scan_leaves is not None:
            findings = scan_leaves(leaves, part=part)
        else:  # a scanner with scan() only
            findings = self._scanner.scan(value, pointer=pointer, part=part)
        ctx.findings[self.name] = [f.as_dict() for f in findings]

    after = learns_nothing


class SecretsEnricher(SpanFindingsEnricher):
    """``input.findings.secrets``: credentials in tool arguments, results and server messages."""

    name = "secrets"

    def __init__(self, scanner: SecretScanner | None = None) -> None:
        self._scanner = scanner or SecretScanner()
        # Keys repeat from message to message ("content", "text", "arguments"): what the
        # rules find in each is remembered (bounded; a dict's reads and writes are atomic).
        self._key_spans: dict[str, list[tuple[int, int, str]]] = {}

    def enrich(self, ctx: MessageContext) -> None:
        super().enrich(ctx)
        found = ctx.findings.get(self.name)
        scanned = scanned_part(ctx)
        if found is None or scanned is None:
            return
        value, pointer, part = scanned
        # A credential used as an object key ({"ghp_...": true}): the finding names the
        # member, which the policy removes (a key cannot be redacted in place).
        for member, spans in _keys_with_spans(value, pointer, self._spans_of_key):
            for start, end, rule in spans:
                found.append({"pointer": member, "rule": rule, "start": start, "end": end, "part": part, "in_key": True})

    def _spans_of_key(self, key: str) -> list[tuple[int, int, str]]:
        spans = self._key_spans.get(key)
        if spans is None:
            spans = self._scanner.scan_text(key)
            if len(self._key_spans) >= _KEY_MEMO:
                self._key_spans.clear()
            self._key_spans[key] = spans
        return spans


_KEY_MEMO = 4096


def _keys_with_spans(
    value: Any, pointer: str, spans_of: Callable[[str], list[tuple[int, int, str]]]
) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """``(member pointer, spans)`` of every object key of ``value`` in which ``spans_of``
    finds something (keys too short to hold a secret are not asked about)."""
    out: list[tuple[str, list[tuple[int, int, str]]]] = []
    stack: list[tuple[str, Any]] = [(pointer, value)]
    while stack:
        where, node = stack.pop()
        if type(node) is dict:
            for key, item in node.items():
                if len(key) >= _SECRETS_MIN:
                    spans = spans_of(key)
                    if spans:
                        out.append((f"{where}/{escape(key)}", spans))
                if type(item) is dict or type(item) is list:
                    stack.append((f"{where}/{escape(key)}", item))
        elif type(node) is list:
            for i, item in enumerate(node):
                if type(item) is dict or type(item) is list:
                    stack.append((f"{where}/{i}", item))
    return out
