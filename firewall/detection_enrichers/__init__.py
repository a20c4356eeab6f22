"""Detector enrichers: PII, tool poisoning, prompt injection and intent findings for the policy.

Each fills ``input.findings.<name>`` and decides nothing: the Rego bundle turns findings
into decisions with thresholds kept in data (``data.mcpfw.config.detectors``). Each checks
first, cheaply, whether a message concerns it, so that other messages pay nothing.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from detectors.pii import PiiScanner
from detectors.poisoning import PoisoningScanner

from ..config import DetectorsConfig
from ..enrichers import SecretsEnricher
from ._common import INTENT_META_KEY
from .injection import InjectionDetector, InjectionEnricher, ScanTarget, injection_targets, reported_score
from .intent import IntentEnricher, Purpose
from .pii import PiiEnricher
from .poisoning import PoisoningEnricher

if TYPE_CHECKING:
    from detectors.injection import InjectionClassifier
    from detectors.intent import IntentScorer

__all__ = [
    "INTENT_META_KEY", "Detectors", "InjectionDetector", "InjectionEnricher", "IntentEnricher", "PiiEnricher",
    "PoisoningEnricher", "Purpose", "ScanTarget", "injection_targets", "reported_score",
]


class Detectors:
    """The detectors one process shares, built once from the configuration.

    The proxy's enrichers and ``mcpfw detect`` use the same instances. The model (ONNX
    MiniLM) loads at construction when the injection detector is on, and on first need
    otherwise; with injection and intent both off, onnxruntime is never imported.
    """

    def __init__(self, config: DetectorsConfig, *, skip: frozenset[str] = frozenset()) -> None:
        """``skip``: enabled detectors not to build or run here (the proxy leaves out those
        whose findings its policy never reads); the others behave as configured."""
        self.config = config
        self.skip = skip
        self._classifier: InjectionClassifier | None = None
        self._lock = threading.Lock()
        self.pii = (
            PiiScanner(enabled=set(config.pii.rules) if config.pii.rules is not None else None)
            if config.pii.enabled and "pii" not in skip else None
        )
        self.injection = (
            InjectionDetector(
                self.classifier(), min_chars=config.injection.min_chars,
                max_chars=config.injection.max_chars, decode=config.injection.decode,
            )
            if config.injection.enabled and "injection" not in skip else None
        )
        self.poisoning: PoisoningScanner | None = None
        if config.poisoning.enabled and "poisoning" not in skip:
            scorer = None
            if config.poisoning.classifier and config.injection.enabled:
                clf = self.classifier()
                scorer = lambda text: float(clf.score(text, "tool_description").score)  # noqa: E731
            self.poisoning = PoisoningScanner(scorer=scorer)
        self._intent_scorer: IntentScorer | None = None

    def classifier(self) -> InjectionClassifier:
        with self._lock:
            if self._classifier is None:
                from detectors.injection import get_classifier

                self._classifier = get_classifier()
            return self._classifier

    def intent_scorer(self) -> IntentScorer:
        if self._intent_scorer is None:
            from detectors.intent import IntentScorer, MiniLmEmbedder

            self._intent_scorer = IntentScorer(MiniLmEmbedder(self.classifier()))
        return self._intent_scorer

    def enrichers(self) -> tuple[Any, ...]:
        """The enrichers for the pipeline, in a fixed order."""
        out: list[Any] = []
        if self.config.secrets.enabled and "secrets" not in self.skip:
            out.append(SecretsEnricher())
        if self.pii is not None:
            out.append(PiiEnricher(self.pii))
        if self.poisoning is not None:
            out.append(PoisoningEnricher(self.poisoning))
        if self.injection is not None:
            out.append(InjectionEnricher(self.injection))
        intent = self.config.intent
        if intent.enabled and "intent" not in self.skip:
            purposes = tuple(Purpose(p.purpose, p.client, p.key_id, p.server) for p in intent.purposes)
            out.append(IntentEnricher(
                self.intent_scorer, purposes=purposes, history=intent.history,
                min_history=intent.min_history, max_history=intent.max_history,
            ))
        return tuple(out)
