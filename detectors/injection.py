"""Prompt-injection / jailbreak classifier for MCP traffic.

Scores user prompts, tool RESULTS (indirect injection arriving in a web page,
email, file, ticket ... that a tool returns) and tool descriptions.

Pipeline (all artefacts in ``models/``, loaded once per process):

1. light normalisation: Unicode NFKC, removal of zero-width / bidi / other
   invisible format characters, and *decoding* of Unicode tag characters
   (U+E0020-E007E, "ASCII smuggling") to the ASCII they hide; an offset map
   keeps spans in the caller's coordinates.
2. WordPiece tokenisation of the whole text (``tokenizers``) and overlapping
   windows of ``window_tokens`` word pieces (well under the model's 256-piece
   limit) every ``stride`` pieces; for texts longer than one window also
   sentence/line/JSON-field aligned windows (segments packed up to 32 pieces),
   so a short injected sentence is not diluted by the carrier text.
3. stage 1, every window: hashed word-piece uni/bi-gram counts, linear; all
   windows at once through prefix sums (well under 1 ms for 20,000
   characters).  Windows scoring below the per-kind screen threshold are not
   embedded ("cascade" mode; ``mode="full"`` embeds all).
4. stage 2, the top ``max_embed_windows`` windows: all-MiniLM-L6-v2 int8
   ONNX sentence embedding (one batched onnxruntime call) + rule hits
   (patterns derived from pyatr / toolwall-guard / mcp-tool-auditor) +
   character statistics + the stage-1 logit -> logistic model.
5. the worst window gives the score, its span and the per-kind threshold.

No torch, no network, no pickle: the classifier is numpy arrays in an
``.npz`` (loaded with ``allow_pickle=False``) plus JSON metadata.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import json
import math
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np

from .artifacts import CLASSIFIER_META, CLASSIFIER_NPZ, MODELS_DIR, ONNX_FILE, RULES_FILE, TOKENIZER_FILE
from .normalize import known_words
from .wordpiece import AsciiWordPiece

Kind = Literal["prompt", "tool_output", "tool_description"]
KINDS: tuple[str, ...] = ("prompt", "tool_output", "tool_description")


CLS_ID, SEP_ID, PAD_ID = 101, 102, 0
MODEL_MAX_TOKENS = 256
DEFAULT_WINDOW_TOKENS = 64  # content word pieces per window (+[CLS]/[SEP])
DEFAULT_STRIDE = 32

VOCAB = 30522
BIGRAM_BUCKETS = 1 << 18
LEX_DIM = VOCAB + BIGRAM_BUCKETS + len(KINDS)

# --------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------
# zero-width, bidi controls, soft hyphen, word joiner & invisible operators,
# Mongolian vowel separator, BOM, interlinear annotation, variation selectors.
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
)
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]|[\U000e0000-\U000e001f\U000e007f-\U000e01ef]")
_TAG_RE = re.compile("[\U000e0020-\U000e007e]")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


@dataclass
class Normalized:
    text: str
    # breakpoints (normalised offset, original offset) for offset mapping
    norm_starts: list[int]
    orig_starts: list[int]
    invisible: int  # invisible characters removed
    tags: int  # tag characters decoded
    non_ascii: int  # non-ASCII characters in the raw text
    raw_len: int

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        if not self.norm_starts:
            return start, end
        return self._map(start, False), self._map(end, True)

    def _map(self, pos: int, is_end: bool) -> int:
        # segment i maps normalised [ns_i, ns_i+1) onto original [os_i, os_i+1)
        i = bisect.bisect_right(self.norm_starts, pos) - 1
        if i < 0:
            return 0
        if i >= len(self.norm_starts) - 1:
            return self.raw_len
        ns, os_ = self.norm_starts[i], self.orig_starts[i]
        nn, no = self.norm_starts[i + 1], self.orig_starts[i + 1]
        if nn - ns == no - os_:
            return os_ + (pos - ns)
        return no if (is_end and pos > ns) else os_


def _map_char(ch: str) -> str:
    if _INVISIBLE_RE.match(ch):
        return ""
    if _TAG_RE.match(ch):
        return chr(ord(ch) - 0xE0000)
    return unicodedata.normalize("NFKC", ch)


def normalize(text: str) -> Normalized:
    """NFKC + invisible-character removal + tag-character decoding, with an offset map."""
    if text.isascii():
        return Normalized(text, [], [], 0, 0, 0, len(text))
    out: list[str] = []
    norm_starts: list[int] = []
    orig_starts: list[int] = []
    invisible = tags = non_ascii = 0
    npos = 0
    last = 0
    for m in _NON_ASCII_RUN.finditer(text):
        s, e = m.span()
        if s > last:  # ASCII run, identity
            norm_starts.append(npos)
            orig_starts.append(last)
            out.append(text[last:s])
            npos += s - last
        for j in range(s, e):
            ch = text[j]
            non_ascii += 1
            rep = _map_char(ch)
            if rep == "":
                invisible += 1
            elif len(rep) == 1 and 0xE0000 <= ord(ch) <= 0xE007F:
                tags += 1
            norm_starts.append(npos)
            orig_starts.append(j)
            out.append(rep)
            npos += len(rep)
        last = e
    if last < len(text):
        norm_starts.append(npos)
        orig_starts.append(last)
        out.append(text[last:])
        npos += len(text) - last
    norm_starts.append(npos)
    orig_starts.append(len(text))
    return Normalized("".join(out), norm_starts, orig_starts, invisible, tags, non_ascii, len(text))


# --------------------------------------------------------------------------
# windows & cheap features (shared with models/train_classifier.py)
# --------------------------------------------------------------------------

@dataclass
class Window:
    tok_start: int
    tok_end: int
    char_start: int  # in normalised text
    char_end: int


@dataclass
class Analysis:
    raw: str
    norm: Normalized
    ids: np.ndarray  # content word-piece ids (no specials), int64
    offsets: list[tuple[int, int]]  # empty when the text is a single window (fast path)
    windows: list[Window]
    id_list: list[int] | None = None  # the ids as a list, when the fast path made them


def make_windows(n_tokens: int, offsets: list[tuple[int, int]], text_len: int,
                 window: int = DEFAULT_WINDOW_TOKENS, stride: int = DEFAULT_STRIDE,
                 text: str | None = None, sentences: bool = False, short_sentences: bool = False) -> list[Window]:
    """Fixed windows of ``window`` pieces every ``stride``; with ``sentences`` (and a text longer than one
    window) also the sentence/line-aligned windows of :func:`sentence_windows` (appended after them);
    with ``short_sentences`` (and a text of one window) also each of its sentences (:func:`segment_windows`)."""
    out = _fixed_windows(n_tokens, offsets, text_len, window, stride)
    if text is None:
        return out
    if sentences and n_tokens > window:
        seen = {(w.tok_start, w.tok_end) for w in out}
        out += [w for w in sentence_windows(offsets, text, window) if (w.tok_start, w.tok_end) not in seen]
    elif short_sentences and n_tokens <= window:
        out += segment_windows(offsets, text)
    return out


def _fixed_windows(n_tokens: int, offsets: list[tuple[int, int]], text_len: int, window: int,
                   stride: int) -> list[Window]:
    if n_tokens == 0:
        return [Window(0, 0, 0, text_len)]
    starts = list(range(0, max(1, n_tokens - window + stride), stride))
    if starts[-1] + window < n_tokens:
        starts.append(n_tokens - window)
    out = []
    for s in starts:
        e = min(n_tokens, s + window)
        out.append(Window(s, e, offsets[s][0], offsets[e - 1][1]))
    if len(out) == 1:  # a single window covers the whole text
        out[0].char_start, out[0].char_end = 0, text_len
    return out


# sentence / line / field boundaries: a new segment starts right after a match
_SEG_BREAK_RE = re.compile(r'\n|\\n|[.!?](?=[\s"<\\)\]*]|$)|"\s*[,:}\]]|-->|<!--|\|')
MIN_SENTENCE_TOKENS = 4
SENTENCE_PACK_TOKENS = 32


def sentence_windows(offsets: list[tuple[int, int]], text: str, max_tokens: int,
                     pack: int = SENTENCE_PACK_TOKENS) -> list[Window]:
    """Windows aligned to sentences / lines / JSON string fields, so a short injected sentence is scored
    (nearly) on its own instead of being diluted by the carrier text around it.  Consecutive segments are
    packed greedily up to ``pack`` word pieces; a segment of pack..max_tokens pieces is its own window,
    longer ones are left to the fixed windows; windows under MIN_SENTENCE_TOKENS pieces are dropped."""
    n = len(offsets)
    if n == 0:
        return []
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=n)
    brk = np.fromiter((m.end() for m in _SEG_BREAK_RE.finditer(text)), dtype=np.int64)
    cut = np.unique(np.searchsorted(starts, brk))
    cut = cut[(cut > 0) & (cut < n)]
    bounds = np.concatenate([[0], cut, [n]]).tolist()
    out: list[Window] = []
    s0 = bounds[0]
    for i in range(1, len(bounds)):
        b_prev, b = bounds[i - 1], bounds[i]
        if b - s0 > pack and b_prev > s0:  # close the pack before this segment
            if b_prev - s0 >= MIN_SENTENCE_TOKENS:
                out.append(Window(s0, b_prev, offsets[s0][0], offsets[b_prev - 1][1]))
            s0 = b_prev
        if b - s0 > pack:  # a single long segment
            if b - s0 <= max_tokens:
                out.append(Window(s0, b, offsets[s0][0], offsets[b - 1][1]))
            s0 = b
    if n - s0 >= MIN_SENTENCE_TOKENS:
        out.append(Window(s0, n, offsets[s0][0], offsets[n - 1][1]))
    return out


def segment_windows(offsets: list[tuple[int, int]], text: str, min_tokens: int = MIN_SENTENCE_TOKENS) -> list[Window]:
    """One window per sentence / line of a text that fits one window, so that a sentence appended to a
    short description is scored on its own rather than averaged with the rest. A segment under
    ``min_tokens`` pieces joins the next one (the last joins the one before). None for a single segment."""
    n = len(offsets)
    if n < 2 * min_tokens:
        return []
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=n)
    brk = np.fromiter((m.end() for m in _SEG_BREAK_RE.finditer(text)), dtype=np.int64)
    cuts = np.unique(np.searchsorted(starts, brk))
    spans: list[list[int]] = []
    s0 = 0
    for c in cuts[(cuts > 0) & (cuts < n)].tolist():
        if c - s0 >= min_tokens:
            spans.append([s0, c])
            s0 = c
    if spans and n - s0 < min_tokens:
        spans[-1][1] = n
    else:
        spans.append([s0, n])
    if len(spans) < 2:
        return []
    return [Window(a, b, offsets[a][0], offsets[b - 1][1]) for a, b in spans]


def lexical_scores(weights: np.ndarray, bias: float, ids: np.ndarray, windows: list[Window],
                   kind_idx: int) -> np.ndarray:
    """Stage-1 logits of all windows at once (format 2: word-piece uni-/bi-gram COUNTS scaled by
    1/sqrt(number of n-grams)), via prefix sums: O(tokens + windows) whatever the window overlap."""
    tok_s = np.fromiter((w.tok_start for w in windows), dtype=np.int64, count=len(windows))
    tok_e = np.fromiter((w.tok_end for w in windows), dtype=np.int64, count=len(windows))
    cu = np.zeros(ids.size + 1)
    cb = np.zeros(max(ids.size, 1))
    if ids.size:
        np.cumsum(weights[ids], out=cu[1:])
        if ids.size > 1:
            np.cumsum(weights[VOCAB + (ids[:-1] * 1000003 + ids[1:]) % BIGRAM_BUCKETS], out=cb[1:])
    L = tok_e - tok_s
    nb = np.maximum(L - 1, 0)
    tot = (cu[tok_e] - cu[tok_s]) + (cb[tok_s + nb] - cb[tok_s])
    nf = L + nb
    return np.where(nf > 0, tot / np.sqrt(np.maximum(nf, 1)), 0.0) + float(weights[VOCAB + BIGRAM_BUCKETS + kind_idx]) + bias


def lexical_score_whole(weights: Sequence[float], bias: float, ids: list[int], kind_idx: int) -> float:
    """:func:`lexical_scores` of a single window spanning all of ``ids``, in plain Python on
    the weights as a list: for a short text a handful of small numpy calls cost more than
    the scoring itself."""
    n = len(ids)
    kind_weight = weights[VOCAB + BIGRAM_BUCKETS + kind_idx] + bias
    if n == 0:
        return kind_weight
    total = 0.0
    for i in ids:
        total += weights[i]
    for a, b in pairwise(ids):
        total += weights[VOCAB + (a * 1000003 + b) % BIGRAM_BUCKETS]
    return total / math.sqrt(2 * n - 1) + kind_weight


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= -700.0 else 0.0


def lexical_count_features(ids: np.ndarray) -> np.ndarray:
    """Training side of :func:`lexical_scores`: the (repeated) n-gram feature indices of one window."""
    if ids.size == 0:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([ids, VOCAB + ((ids[:-1] * 1000003 + ids[1:]) % BIGRAM_BUCKETS)])


def lexical_indices(ids: np.ndarray, kind_idx: int) -> np.ndarray:
    """Sorted unique hashed uni/bi-gram feature indices of one window (+ the kind feature)."""
    if ids.size:
        uni = ids
        big = VOCAB + ((ids[:-1] * 1000003 + ids[1:]) % BIGRAM_BUCKETS)
        feats = np.unique(np.concatenate([uni, big]))
    else:
        feats = np.empty(0, dtype=np.int64)
    return feats


def lexical_score(weights: np.ndarray, bias: float, feats: np.ndarray, kind_idx: int) -> float:
    n = feats.size
    s = float(weights[feats].sum()) / np.sqrt(n) if n else 0.0
    return s + float(weights[VOCAB + BIGRAM_BUCKETS + kind_idx]) + bias


_ROLE_TAG_RE = re.compile(
    r"<\|?(?:im_start|im_end|system|endoftext)\|?>|\[/?(?:INST|SYS)\]|</?(?:important|system|instructions?)>"
    r"|(?:^|\n)\s*(?:system|assistant)\s*:", re.IGNORECASE)
_URL_RE = re.compile(r"https?://|www\.")
CHAR_FEATURES = ("log_chars", "frac_upper", "frac_punct", "frac_digit", "frac_non_ascii_raw",
                 "log_invisible_raw", "log_tags_raw", "role_tags", "urls", "exclam")


def char_features(window_text: str, raw_span: str) -> np.ndarray:
    """Character statistics of one window (normalised text) and its raw span."""
    n = max(1, len(window_text))
    letters = sum(1 for c in window_text if c.isalpha()) or 1
    upper = sum(1 for c in window_text if c.isupper())
    punct = sum(1 for c in window_text if c in "<>[]{}|#*`~!$%^&_=\\")
    digits = sum(1 for c in window_text if c.isdigit())
    if raw_span.isascii():
        non_ascii = invisible = tags = 0
    else:
        non_ascii = len(raw_span) - len(raw_span.encode("ascii", "ignore"))
        invisible = len(_INVISIBLE_RE.findall(raw_span))
        tags = len(_TAG_RE.findall(raw_span))
    return np.array([
        np.log1p(len(window_text)) / 8.0, upper / letters, punct / n, digits / n,
        non_ascii / max(1, len(raw_span)), np.log1p(invisible), np.log1p(tags),
        min(3, len(_ROLE_TAG_RE.findall(window_text))), min(3, len(_URL_RE.findall(window_text))),
        min(5, window_text.count("!")) / 5.0,
    ], dtype=np.float32)


class RulePack:
    """Regex rule groups derived (at training time) from pyatr, toolwall-guard and
    mcp-tool-auditor; see models/injection_rules.json for attribution/licences."""

    def __init__(self, path: Path):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        self.groups: list[str] = list(data["groups"])
        gi = {g: i for i, g in enumerate(self.groups)}
        self.rules: list[tuple[int, re.Pattern[str]]] = []
        for r in data["rules"]:
            try:
                self.rules.append((gi[r["group"]], re.compile(r["pattern"], re.IGNORECASE if r.get("ignore_case", True) else 0)))
            except re.error:
                continue

    def features(self, text: str) -> np.ndarray:
        out = np.zeros(len(self.groups), dtype=np.float32)
        for g, rx in self.rules:
            if rx.search(text):
                out[g] += 1.0
        return np.log1p(out)


# --------------------------------------------------------------------------
# serving
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class InjectionResult:
    score: float  # 0..1, logistic probability of the worst window ("calibrated-ish")
    label: str  # "injection" | "benign"
    threshold: float  # per-kind decision threshold applied to score
    span: tuple[int, int]  # [start, end) of the worst window in the caller's text
    window_count: int  # windows the text was split into
    kind: str = "tool_output"
    embedded_windows: int = 0  # windows that went through the MiniLM stage
    stage: str = "embed"  # "embed" or "screen" (stage 1 only, below the screen threshold)


class InjectionClassifier:
    """Load once per process; ``score()`` is thread-safe (one onnxruntime session)."""

    def __init__(self, models_dir: str | os.PathLike | None = None, *, mode: str = "cascade",
                 max_embed_windows: int | None = None, cache_size: int = 4096, intra_op_threads: int = 1,
                 thresholds: dict[str, float] | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        d = Path(models_dir) if models_dir else MODELS_DIR
        meta = json.loads((d / CLASSIFIER_META).read_text(encoding="utf-8"))
        self.meta = meta
        arr = np.load(d / CLASSIFIER_NPZ, allow_pickle=False)
        self.lex_w = arr["lex_w"].astype(np.float32)
        # The same weights for plain-Python scoring of single windows (lexical_score_whole).
        self._lex_w_list = array.array("d")
        self._lex_w_list.frombytes(self.lex_w.astype(np.float64).tobytes())
        self.lex_b = float(arr["lex_b"][0])
        self.mean = arr["feat_mean"].astype(np.float32)
        self.scale = arr["feat_scale"].astype(np.float32)
        self.layers = [(arr[f"W{i}"].astype(np.float32), arr[f"b{i}"].astype(np.float32))
                       for i in range(int(meta["stage2"]["n_layers"]))]
        # per-kind thresholds were calibrated on validation for the default cascade mode;
        # callers (e.g. mode="full", which scores more windows) may override them.
        self.thresholds = {k: float(v) for k, v in meta["thresholds"].items()}
        if thresholds:
            self.thresholds.update({k: float(v) for k, v in thresholds.items()})
        self.screens = {k: float(v) for k, v in meta["screen_thresholds"].items()}
        self.window_tokens = int(meta["window_tokens"])
        self.stride = int(meta["stride"])
        # kinds whose texts (when longer than one window) also get sentence-aligned windows
        sw = meta.get("sentence_windows", [])
        self.sentence_kinds = set(KINDS if sw is True else (sw or []))
        # kinds whose texts of one window are also scored sentence by sentence
        self.short_sentence_kinds = set(meta.get("short_sentence_windows", []))
        self.lex_counts = bool(meta["stage1"].get("counts", False))
        self.max_embed = int(max_embed_windows or meta.get("max_embed_windows", 2))
        if mode not in ("cascade", "full"):
            raise ValueError("mode must be 'cascade' or 'full'")
        self.mode = mode
        self.rules = RulePack(d / RULES_FILE)

        self.tokenizer = Tokenizer.from_file(str(d / TOKENIZER_FILE))
        self.tokenizer.no_truncation()  # windowing is done here
        self.tokenizer.no_padding()
        vocab = self.tokenizer.get_vocab()
        self._wordpiece = AsciiWordPiece(vocab)
        self.words = known_words(vocab)  # for normalize.deobfuscated_segments
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(d / ONNX_FILE), so, providers=["CPUExecutionProvider"])
        self._cache: OrderedDict[bytes, InjectionResult] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # -- pieces shared with training --------------------------------------
    def analyse(self, text: str, kind: str = "tool_output") -> Analysis:
        norm = normalize(text)
        # Short printable ASCII (most arguments and many results) fits one window, whose
        # span is the whole text: its ids alone are needed, and are cheaper to get here.
        fast = self._wordpiece.ids(norm.text, self.window_tokens)
        if fast is not None and not (kind in self.short_sentence_kinds and _SEG_BREAK_RE.search(norm.text)):
            ids = np.asarray(fast, dtype=np.int64)
            return Analysis(text, norm, ids, [], [Window(0, len(fast), 0, len(norm.text))], fast)
        enc = self.tokenizer.encode(norm.text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = enc.offsets
        wins = make_windows(len(ids), offsets, len(norm.text), self.window_tokens, self.stride,
                            norm.text, kind in self.sentence_kinds, kind in self.short_sentence_kinds)
        return Analysis(text, norm, ids, offsets, wins)

    def embed(self, id_lists: list[np.ndarray]) -> np.ndarray:
        """Sentence embeddings of word-piece windows, one onnxruntime call."""
        L = max(len(x) for x in id_lists) + 2
        ids = np.zeros((len(id_lists), L), dtype=np.int64)
        mask = np.zeros((len(id_lists), L), dtype=np.int64)
        for i, x in enumerate(id_lists):
            n = len(x)
            ids[i, 0] = CLS_ID
            ids[i, 1:n + 1] = x
            ids[i, n + 1] = SEP_ID
            mask[i, : n + 2] = 1
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def stage2(self, feats: np.ndarray) -> np.ndarray:
        x = (feats - self.mean) / self.scale
        for i, (W, b) in enumerate(self.layers):
            x = x @ W + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        z = x[:, 0]
        return 1.0 / (1.0 + np.exp(-z))

    # -- public API --------------------------------------------------------
    def score(self, text: str, kind: Kind = "tool_output") -> InjectionResult:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                              person=kind.encode()[:16]).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        res = self._score(text, kind)
        with self._lock:
            self._cache[key] = res
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return res

    def score_many(self, items: Iterable[tuple[str, Kind]]) -> list[InjectionResult]:
        return [self.score(t, k) for t, k in items]

    def _score(self, text: str, kind: str) -> InjectionResult:
        kind_idx = KINDS.index(kind)
        thr = self.thresholds[kind]
        a = self.analyse(text, kind)
        wins = a.windows
        if a.ids.size == 0 and not a.norm.text.strip():
            return InjectionResult(0.0, "benign", thr, (0, len(text)), len(wins), kind, 0, "screen")
        if self.lex_counts and len(wins) == 1:
            ids = a.id_list if a.id_list is not None else a.ids.tolist()
            logit = lexical_score_whole(self._lex_w_list, self.lex_b, ids, kind_idx)
            if self.mode != "full" and not (a.norm.invisible or a.norm.tags):
                # One window below the screen (most short texts): answered without numpy.
                p = _sigmoid(logit)
                screen = self.screens[kind]
                if p < screen:
                    span = a.norm.to_original(wins[0].char_start, wins[0].char_end)
                    return InjectionResult(p, "injection" if p >= thr else "benign", thr, span, 1, kind, 0, "screen")
            logits = np.array([logit])
        elif self.lex_counts:
            logits = lexical_scores(self.lex_w, self.lex_b, a.ids, wins, kind_idx)
        else:  # format 1 artefacts: binary n-gram sets, one window at a time
            logits = np.empty(len(wins), dtype=np.float64)
            for i, w in enumerate(wins):
                feats = lexical_indices(a.ids[w.tok_start:w.tok_end], kind_idx)
                logits[i] = lexical_score(self.lex_w, self.lex_b, feats, kind_idx)
        p1 = 1.0 / (1.0 + np.exp(-logits))
        if self.mode == "full":
            chosen = list(np.argsort(-p1))
        else:
            order = np.argsort(-p1)[: self.max_embed]
            chosen = [int(i) for i in order if p1[i] >= self.screens[kind]]
            # always look at obfuscated text with the embedding model
            if not chosen and (a.norm.invisible or a.norm.tags):
                chosen = [int(order[0])]
        if not chosen:
            best = int(np.argmax(p1))
            w = wins[best]
            span = a.norm.to_original(w.char_start, w.char_end)
            s = float(min(p1[best], self.screens[kind]))
            return InjectionResult(s, "injection" if s >= thr else "benign", thr, span, len(wins), kind, 0, "screen")
        # cascade: the top window alone first; if it already crosses the threshold we
        # stop ("early accept": the label cannot change, the reported score is that
        # window's).  Otherwise the remaining candidates go in ONE batched call.
        # full mode: batches of 16 windows.
        if self.mode == "full":
            calls = [chosen[c0:c0 + 16] for c0 in range(0, len(chosen), 16)]
        else:
            calls = [chosen[:1]] + ([chosen[1:]] if len(chosen) > 1 else [])
        probs_l: list[float] = []
        done: list[int] = []
        for ci, part in enumerate(calls):
            emb = self.embed([a.ids[wins[i].tok_start:wins[i].tok_end] if wins[i].tok_end > wins[i].tok_start
                              else np.asarray([100], dtype=np.int64) for i in part])
            side = np.stack([side_features(self.rules, a, wins[i]) for i in part])
            kind_oh = np.zeros((len(part), len(KINDS)), dtype=np.float32)
            kind_oh[:, kind_idx] = 1.0
            feats = np.hstack([emb, side, kind_oh, logits[part, None].astype(np.float32)])
            probs_l.extend(self.stage2(feats).tolist())
            done.extend(part)
            if self.mode != "full" and ci == 0 and probs_l[0] >= thr:
                break
        chosen = done
        probs = np.asarray(probs_l)
        j = int(np.argmax(probs))
        w = wins[chosen[j]]
        span = a.norm.to_original(w.char_start, w.char_end)
        s = float(probs[j])
        return InjectionResult(s, "injection" if s >= thr else "benign", thr, span, len(wins), kind,
                               len(chosen), "embed")


def side_features(rules: RulePack, a: Analysis, w: Window) -> np.ndarray:
    """Rule-group hits + character statistics of one window (training uses the same code)."""
    wt = a.norm.text[w.char_start:w.char_end]
    os_, oe = a.norm.to_original(w.char_start, w.char_end)
    return np.concatenate([rules.features(wt), char_features(wt, a.raw[os_:oe])])


_DEFAULT: InjectionClassifier | None = None
_DEFAULT_LOCK = threading.Lock()


def get_classifier() -> InjectionClassifier:
    """Process-wide singleton (models are loaded once)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = InjectionClassifier()
        return _DEFAULT
