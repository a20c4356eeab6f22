"""Enrichers: evidence added to the policy input before each decision.

Each one is small and named after the ``input.findings`` key it fills. They run on the
relay path, so each decides cheaply whether a message concerns it at all.
"""

from __future__ import annotations

from typing import Any

from detectors.secrets import SecretScanner

from .jsonrpc import Kind
from .pipeline import C2S, MessageContext
from .policy.decision import Decision


class SpanFindingsEnricher:
    """Base for detectors that report ``{pointer, rule, start, end, part}`` spans.

    Scope: tools/call arguments from the client, everything the server sends in params,
    and the result or error of every response. Subclasses set ``name`` and the scanner,
    which needs ``scan(value, pointer=..., part=...)`` returning findings with ``as_dict()``.
    """

    name: str
    _scanner: Any

    def enrich(self, ctx: MessageContext) -> None:
        body = ctx.message.body
        kind = ctx.message.kind
        scan = self._scanner.scan
        findings: list[Any]
        if kind is Kind.RESPONSE:
            findings = scan(body.get("result"), pointer="/result", part="result")
        elif kind is Kind.ERROR_RESPONSE:
            findings = scan(body.get("error"), pointer="/error", part="error")
        elif ctx.direction == C2S:
            if ctx.tool is None:
                return
            findings = scan(ctx.tool.get("arguments"), pointer="/params/arguments", part="arguments")
        else:
            findings = scan(body.get("params"), pointer="/params", part="params")
        ctx.findings[self.name] = [f.as_dict() for f in findings]

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        return None


class SecretsEnricher(SpanFindingsEnricher):
    """``input.findings.secrets``: credentials in tool arguments, results and server messages."""

    name = "secrets"

    def __init__(self, scanner: SecretScanner | None = None) -> None:
        self._scanner = scanner or SecretScanner()
