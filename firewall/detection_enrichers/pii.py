"""``input.findings.pii``: personal data in tool arguments, results and server messages."""

from __future__ import annotations

from detectors.pii import PiiScanner

from ..enrichers import SpanFindingsEnricher


class PiiEnricher(SpanFindingsEnricher):
    """``input.findings.pii``: personal data in tool arguments, results and server messages.

    Same scope and finding shape as the secrets enricher: ``{pointer, rule, start, end, part}``.
    """

    name = "pii"

    def __init__(self, scanner: PiiScanner | None = None) -> None:
        self._scanner = scanner or PiiScanner()
