"""Intent-versus-action: does a tool call fit the declared task, or what this client usually does?

A call becomes a short text (tool name in words, the tool's description, argument names
and short values) embedded with the same MiniLM ONNX model the injection classifier loads
(its session and tokenizer are reused, not loaded twice). The score is a calibrated
probability that the call does not fit, from the cosine similarity to the task and to the
client's earlier legitimate calls (``rules/intent.yaml``, fitted by bench/calibrate_intent.py).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

RULES_FILE = Path(__file__).resolve().parent.parent / "rules" / "intent.yaml"
_MAX_TOKENS = 254  # the model's 256 minus [CLS] and [SEP]
_MAX_VALUE_CHARS = 80
_MAX_ARGS = 12


class TextEmbedder(Protocol):
    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


class MiniLmEmbedder:
    """Sentence embeddings from the injection classifier's already-loaded MiniLM session."""

    def __init__(self, classifier: Any, cache_size: int = 4096) -> None:
        self._clf = classifier
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts]
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                hit = self._cache.get(key)
                out.append(hit)
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            ids = [np.asarray(self._clf.tokenizer.encode(texts[i], add_special_tokens=False).ids[:_MAX_TOKENS] or [100], dtype=np.int64)
                   for i in missing]
            vectors = np.asarray(self._clf.embed(ids), dtype=np.float32)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
            with self._lock:
                for i, vec in zip(missing, vectors, strict=True):
                    out[i] = vec
                    self._cache[keys[i]] = vec
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return np.stack(out)  # type: ignore[arg-type]


def _words(name: str) -> str:
    """``read_text_file`` / ``getFileInfo`` / ``git-log`` -> ``read text file`` / ``get file info`` / ``git log``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return re.sub(r"[_\-./:]+", " ", spaced).strip().lower()


def call_text(name: str, arguments: Any, description: str | None = None) -> str:
    """The text a call is judged by: what the tool is and what it is being asked to do."""
    parts = [_words(name)]
    if description:
        first = re.split(r"(?<=[.!?])\s", description.strip(), maxsplit=1)[0]
        parts.append(first[:200])
    if isinstance(arguments, dict):
        shown = []
        for key, value in list(arguments.items())[:_MAX_ARGS]:
            if isinstance(value, (str, int, float, bool)):
                shown.append(f"{_words(key)}: {str(value)[:_MAX_VALUE_CHARS]}")
            else:
                shown.append(_words(key))
        if shown:
            parts.append("; ".join(shown))
    return ". ".join(parts)


def call_pattern(name: str, arguments: Any) -> str:
    """A value-free description of a call for evidence: ``read_text_file(path)``."""
    keys = sorted(arguments) if isinstance(arguments, dict) else []
    return f"{name}({', '.join(keys)})"


@dataclass(frozen=True, slots=True)
class Calibration:
    """Logistic map from cosine similarity to the probability that a call does not fit."""

    center: float
    slope: float

    def mismatch(self, similarity: float) -> float:
        return 1.0 / (1.0 + math.exp(-self.slope * (self.center - similarity)))


@dataclass(frozen=True, slots=True)
class IntentModel:
    task: Calibration
    history: Calibration
    threshold: float


def load_intent_model(path: str | Path = RULES_FILE) -> IntentModel:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    cal = doc["calibration"]
    return IntentModel(
        Calibration(float(cal["task"]["center"]), float(cal["task"]["slope"])),
        Calibration(float(cal["history"]["center"]), float(cal["history"]["slope"])),
        float(doc["threshold"]),
    )


@dataclass(slots=True)
class History:
    """A client's earlier legitimate calls: embeddings and value-free patterns, bounded."""

    capacity: int
    vectors: list[np.ndarray] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)

    def add(self, vector: np.ndarray, pattern: str, key: bytes) -> None:
        """Remember a call once (``key`` identifies its content); the oldest go first."""
        if key in self.keys:
            return
        if len(self.vectors) >= self.capacity:
            del self.vectors[0], self.patterns[0], self.keys[0]
        self.vectors.append(vector)
        self.patterns.append(pattern)
        self.keys.append(key)

    def nearest(self, vector: np.ndarray) -> tuple[float, str] | None:
        if not self.vectors:
            return None
        sims = np.stack(self.vectors) @ vector
        best = int(np.argmax(sims))
        return float(sims[best]), self.patterns[best]

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True, slots=True)
class IntentResult:
    score: float  # 0..1, probability the call does not fit (the lower of the available signals)
    label: str  # "mismatch" | "fits"
    threshold: float
    source: str  # "purpose" | "meta" | "history": what the score rests on
    nearest: dict[str, Any]
    task_score: float | None
    history_score: float | None
    history_size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4), "label": self.label, "threshold": self.threshold, "source": self.source,
            "nearest": self.nearest, "task_score": self.task_score, "history_score": self.history_score,
            "history_size": self.history_size,
        }


class IntentScorer:
    """Scores calls against a task text and a client's history."""

    def __init__(self, embedder: TextEmbedder, model: IntentModel | None = None) -> None:
        self._embedder = embedder
        self.model = model or load_intent_model()

    def embed_call(self, name: str, arguments: Any, description: str | None = None) -> np.ndarray:
        return self._embedder.embed_texts([call_text(name, arguments, description)])[0]

    def score(
        self, *, name: str, arguments: Any, description: str | None = None, task: str | None = None,
        task_source: str = "purpose", history: History | None = None, min_history: int = 1,
        call_vector: np.ndarray | None = None,
    ) -> IntentResult | None:
        """None when there is nothing to compare with (no task, too little history)."""
        use_history = history is not None and len(history) >= min_history
        if not task and not use_history:
            return None
        vec = call_vector if call_vector is not None else self.embed_call(name, arguments, description)
        model = self.model
        candidates: list[tuple[float, str, dict[str, Any]]] = []
        task_score = history_score = None
        if task:
            sim = float(self._embedder.embed_texts([task])[0] @ vec)
            task_score = model.task.mismatch(sim)
            candidates.append((task_score, task_source, {"source": task_source, "text": task[:200], "similarity": round(sim, 4)}))
        if use_history:
            assert history is not None
            near = history.nearest(vec)
            if near is not None:
                sim, pattern = near
                history_score = model.history.mismatch(sim)
                candidates.append((history_score, "history", {"source": "history", "pattern": pattern, "similarity": round(sim, 4)}))
        # The call fits if it fits the task OR what the client legitimately did before.
        score, source, nearest = min(candidates, key=lambda c: c[0])
        return IntentResult(
            score, "mismatch" if score >= model.threshold else "fits", model.threshold, source, nearest,
            None if task_score is None else round(task_score, 4),
            None if history_score is None else round(history_score, 4),
            len(history) if history is not None else 0,
        )
