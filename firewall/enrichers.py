"""Enrichers: evidence added to the policy input before each decision.

Each one is small and named after the ``input.findings`` key it fills. They run on the
relay path, so each decides cheaply whether a message concerns it at all.
"""

from __future__ import annotations

from typing import Any

from detectors.jsonwalk import escape
from detectors.secrets import MIN_LENGTH as _SECRETS_MIN, SecretScanner

from .jsonrpc import Kind
from .pipeline import C2S, MessageContext
from .policy.decision import Decision


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

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        return None


class SecretsEnricher(SpanFindingsEnricher):
    """``input.findings.secrets``: credentials in tool arguments, results and server messages."""

    name = "secrets"

    def __init__(self, scanner: SecretScanner | None = None) -> None:
        self._scanner = scanner or SecretScanner()

    def enrich(self, ctx: MessageContext) -> None:
        super().enrich(ctx)
        found = ctx.findings.get(self.name)
        scanned = scanned_part(ctx)
        if found is None or scanned is None:
            return
        value, pointer, part = scanned
        # A credential used as an object key ({"ghp_...": true}): the finding names the
        # member, which the policy removes (a key cannot be redacted in place).
        for member, key in _long_keys(value, pointer):
            for start, end, rule in self._scanner.scan_text(key):
                found.append({"pointer": member, "rule": rule, "start": start, "end": end, "part": part, "in_key": True})


def _long_keys(value: Any, pointer: str) -> list[tuple[str, str]]:
    """``(member pointer, key)`` of every object key of ``value`` long enough to hold a secret."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [(pointer, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                member = f"{where}/{escape(key)}"
                if len(key) >= _SECRETS_MIN:
                    out.append((member, key))
                if isinstance(item, (dict, list)):
                    stack.append((member, item))
        elif isinstance(node, list):
            stack.extend((f"{where}/{i}", item) for i, item in enumerate(node) if isinstance(item, (dict, list)))
    return out
