"""Tool-poisoning detector: hidden instructions in tool, prompt and resource definitions.

Every string of a definition (name, description, input-schema descriptions and property
names...) is checked for:

* instructions addressed to the model that honest tools do not give (``rules/poisoning.yaml``:
  ``<IMPORTANT>`` blocks, secrecy toward the user, reading credentials, sending data
  elsewhere, overriding other tools), in the normalised text, in decoded base64 / hex /
  URL-encoded segments and in words written in leetspeak or letter by letter, spelled out;
* invisible Unicode (tag characters, bidi controls, zero-width characters, variation-selector
  smuggling), ANSI escape sequences, and padding that pushes text out of a reviewer's view;
* optionally, the injection classifier's score for the text (kind ``tool_description``).

Results are cached by the digest of the definition, so each distinct definition is scanned
once per process. The detector reports; the policy decides what is poisoned.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from .artifacts import MODELS_DIR, TOKENIZER_FILE
from .jsonwalk import escape, strings
from .normalize import ansi_runs, decoded_segments, deobfuscated_segments, fold_lookalikes, invisible_runs, known_words, normalize

RULES_FILE = Path(__file__).resolve().parent.parent / "rules" / "poisoning.yaml"
_TOKENIZER = MODELS_DIR / TOKENIZER_FILE  # its words: what a disguised word must spell out
SEVERITIES = ("low", "medium", "high")
# The arrays of list results the detector scans, and what their items are.
LISTS = {"tools": "tool", "prompts": "prompt", "resources": "resource", "resourceTemplates": "resource_template"}
SCORE_FLOOR = 0.1  # classifier scores below this are not reported (nor remembered per session)
_CLASSIFIER_MIN_CHARS = 40  # shorter strings carry no instruction worth a model call
_MAX_HITS = 32
_MEMO_MAX_CHARS = 2048  # longer strings are read every time (the memo must stay small)


@functools.cache
def tokenizer_words() -> frozenset[str]:
    """The English words of the injection model's tokenizer, read once (empty without it):
    what a word in leetspeak or spelled letter by letter must spell out to be read."""
    try:
        vocab = orjson.loads(_TOKENIZER.read_bytes())["model"]["vocab"]
    except (OSError, KeyError, TypeError, orjson.JSONDecodeError):
        return frozenset()
    return known_words(vocab)


@dataclass(frozen=True, slots=True)
class Hit:
    """One piece of evidence in a definition: ``pointer`` is relative to the definition."""

    rule: str
    category: str
    severity: str
    pointer: str
    start: int
    end: int
    decoded: str | None = None  # the encoding the evidence was hidden in, if any

    def as_dict(self, base: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule, "category": self.category, "severity": self.severity,
            "pointer": base + self.pointer, "start": self.start, "end": self.end,
        }
        if self.decoded:
            out["decoded"] = self.decoded
        return out


@dataclass(frozen=True, slots=True)
class ItemReport:
    """What one definition holds: its digest, rule hits and classifier score."""

    digest: str
    hits: tuple[Hit, ...]
    score: float | None = None
    score_pointer: str | None = None

    @property
    def suspicious(self) -> bool:
        """Worth reporting: a rule hit, or a classifier score above the reporting floor."""
        return bool(self.hits) or (self.score or 0.0) >= SCORE_FLOOR

    def as_dict(self, base: str = "") -> dict[str, Any]:
        return {
            "digest": self.digest,
            "hits": [h.as_dict(base) for h in self.hits],
            "score": self.score,
            "score_pointer": None if self.score_pointer is None else base + self.score_pointer,
        }


@dataclass(frozen=True, slots=True)
class _Rule:
    id: str
    category: str
    severity: str
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class PoisoningRules:
    rules: tuple[_Rule, ...]
    padding: re.Pattern[str]


class PoisoningRulesError(ValueError):
    """rules/poisoning.yaml is unusable; the message names the rule."""


def load_poisoning_rules(path: str | Path = RULES_FILE) -> PoisoningRules:
    """Compile the rules file; raises :class:`PoisoningRulesError` naming the faulty rule."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("rules"), list):
        raise PoisoningRulesError(f"{path}: expected version: 1 and a list of rules")
    rules = []
    for raw in doc["rules"]:
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(rule_id, str) or raw.get("severity") not in SEVERITIES or not raw.get("category"):
            raise PoisoningRulesError(f"{path}: rule {rule_id!r} needs an id, a category and a severity in {SEVERITIES}")
        try:
            regex = re.compile(raw["regex"], re.IGNORECASE)
        except (KeyError, re.error) as exc:
            raise PoisoningRulesError(f"{path}: rule {rule_id}: bad regex: {exc}") from None
        rules.append(_Rule(rule_id, str(raw["category"]), raw["severity"], regex))
    pad = doc.get("padding") or {}
    spaces, lines = int(pad.get("spaces", 80)), int(pad.get("blank_lines", 10))
    # Only padding followed by more text hides anything; trailing blanks are harmless.
    padding = re.compile(rf"[ \t\u00a0\u3000]{{{spaces},}}(?=\S)|(?:[ \t]*\r?\n){{{lines},}}(?=[ \t]*\S)")
    return PoisoningRules(tuple(rules), padding)


Scorer = Callable[[str], float]


class PoisoningScanner:
    """Scans definitions from list results; thread-safe, with an LRU cache by digest."""

    def __init__(
        self, rules: PoisoningRules | None = None, *, scorer: Scorer | None = None, cache_size: int = 4096
    ) -> None:
        self._rules = rules or load_poisoning_rules()
        tokenizer_words()  # read now, at start, not while the first listing waits
        # Definitions repeat their strings ("type", "string", "path", a shared parameter's
        # description): each distinct one is read once.
        self._text_hits = functools.lru_cache(maxsize=16384)(self._hits_of)
        self._scorer = scorer
        self._cache: OrderedDict[str, ItemReport] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def scan_item(self, item: Any) -> ItemReport:
        """The report for one definition (a tool, prompt, resource or template object)."""
        digest = "sha256:" + hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                return cached
        report = self._scan(item, digest)
        with self._lock:
            self._cache[digest] = report
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return report

    def scan_text(self, text: str, pointer: str = "") -> list[Hit]:
        """Rule and character-level hits in one string."""
        found = self._text_hits(text) if len(text) <= _MEMO_MAX_CHARS else self._hits_of(text)
        if not pointer:
            return list(found)
        return [dataclasses.replace(hit, pointer=pointer) for hit in found]

    def _hits_of(self, text: str) -> tuple[Hit, ...]:
        """The hits of one string, with an empty pointer (:meth:`scan_text` sets it)."""
        hits: list[Hit] = []
        pointer = ""
        norm = normalize(text)
        folded = fold_lookalikes(norm.text)  # "ignоre" with a Cyrillic о reads as "ignore"
        for rule in self._rules.rules:
            for m in rule.regex.finditer(folded):
                start, end = norm.to_original(*m.span())
                hits.append(Hit(rule.id, rule.category, rule.severity, pointer, start, end))
        hits.extend(_character_hits(text, pointer))
        for m in self._rules.padding.finditer(text):
            hits.append(Hit("excessive_padding", "padding", "medium", pointer, m.start(), m.end()))
        # Emphasis a model reads through ("Do **not** tell the user"): the rules read the
        # text without it too; evidence is the whole string.
        plain = _EMPHASIS.sub("", folded)
        if plain != folded:
            seen = {h.rule for h in hits}
            for rule in self._rules.rules:
                if rule.id not in seen and rule.regex.search(plain):
                    hits.append(Hit(rule.id, rule.category, rule.severity, pointer, 0, len(text), "markup"))
        for seg in decoded_segments(norm.text) + deobfuscated_segments(folded, tokenizer_words(), short_words=True):
            start, end = norm.to_original(seg.start, seg.end)
            seg_folded = fold_lookalikes(seg.text)  # once per segment, not once per rule
            for rule in self._rules.rules:
                if rule.regex.search(seg_folded):
                    hits.append(Hit(rule.id, rule.category, rule.severity, pointer, start, end, seg.encoding))
        return tuple(hits)

    def _scan(self, item: Any, digest: str) -> ItemReport:
        hits: list[Hit] = []
        best: tuple[float, str] | None = None
        for pointer, text in _definition_strings(item):
            hits.extend(self.scan_text(text, pointer))
            if self._scorer is not None and len(text) >= _CLASSIFIER_MIN_CHARS:
                score = self._scorer(text)
                if best is None or score > best[0]:
                    best = (score, pointer)
        hits = list(dict.fromkeys(hits))  # a key read as written and as words may hit twice
        hits.sort(key=lambda h: (SEVERITIES.index(h.severity) * -1, h.pointer, h.start))
        score, where = best if best else (None, None)
        return ItemReport(digest, tuple(hits[:_MAX_HITS]), score, where)


def _definition_strings(item: Any) -> Iterator[tuple[str, str]]:
    """Every string value of a definition, and every object key in it.

    Keys count: "full-schema poisoning" hides orders in property names (a required
    parameter named ``content_of_ssh_id_rsa``), in ``$defs``, annotation or ``_meta`` keys.
    A key is read as written and, when it differs, as words ("read_ssh_key" -> "read ssh key").
    """
    yield from strings(item, "")
    stack = [("", item)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}/{escape(key)}"
                if isinstance(key, str):
                    yield here, key
                    worded = _SEPARATOR.sub(" ", key)
                    if worded != key:
                        yield here, worded
                if isinstance(value, (dict, list)):
                    stack.append((here, value))
        elif isinstance(node, list):
            stack.extend((f"{where}/{i}", v) for i, v in enumerate(node) if isinstance(v, (dict, list)))


# One separator between two word characters, replaced one for one so spans stay valid;
# "~/.ssh" keeps its dot.
_SEPARATOR = re.compile(r"(?<=[^\W_])[_\-.](?=[^\W_])")
_EMOJI_CONTEXT = re.compile(r"[^\w\s]")
# Markdown emphasis and code marks at the edge of a word (not the "_" inside read_file).
_EMPHASIS = re.compile(r"(?<![\w*_~`])[*_~`]+|[*_~`]+(?![\w*_~`])")


def _character_hits(text: str, pointer: str) -> list[Hit]:
    hits = [Hit("ansi_escape", "terminal_escape", "high", pointer, s, e) for s, e in ansi_runs(text)]
    for start, end, cls in invisible_runs(text):
        run = text[start:end]
        if cls == "tag":
            hits.append(Hit("unicode_tag_characters", "invisible_unicode", "high", pointer, start, end))
        elif cls == "bidi":
            hits.append(Hit("bidi_control", "invisible_unicode", "high", pointer, start, end))
        elif cls == "variation_selector":
            # One VS-15/VS-16 after a symbol is ordinary emoji presentation; supplementary
            # selectors or runs of them encode bytes ("emoji smuggling").
            before = text[start - 1] if start else ""
            if len(run) == 1 and run <= "\ufe0f" and before and _EMOJI_CONTEXT.match(before):
                continue
            hits.append(Hit("variation_selector_run", "invisible_unicode", "high", pointer, start, end))
        elif cls == "zero_width":
            # A zero-width joiner between two symbols builds an emoji sequence.
            before, after = text[start - 1 : start], text[end : end + 1]
            if run in ("\u200d", "\u200c") and before and after and _EMOJI_CONTEXT.match(before) and _EMOJI_CONTEXT.match(after):
                continue
            hits.append(Hit("zero_width_characters", "invisible_unicode", "medium", pointer, start, end))
        else:
            hits.append(Hit("invisible_format_characters", "invisible_unicode", "low", pointer, start, end))
    return hits


def list_items(result: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(pointer, kind, definition)`` for every definition in a list result."""
    if not isinstance(result, dict):
        return
    for key, kind in LISTS.items():
        items = result.get(key)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    yield f"/result/{key}/{i}", kind, item
