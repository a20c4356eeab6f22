"""``input.findings.injection``: the prompt-injection classifier on the texts a message
carries to the model (tool results, prompts, resources, arguments), worst window reported."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from detectors.normalize import decoded_segments, deobfuscated_segments, normalize
from detectors.memo import TextMemo, memoised_scan

from ..enrichers import SPAN_MIN_LENGTH
from ..jsonrpc import Kind
from ..pipeline import S2C, MessageContext, learns_nothing
from ._common import error_from_server, response_to, tool_call_request

if TYPE_CHECKING:
    from detectors.injection import InjectionClassifier


_WHITESPACE = re.compile(r"\s")
_REPORT_FLOOR = 0.05  # items scoring below this are counted but not listed
_MAX_ITEMS = 32


def reported_score(score: float, threshold: float) -> tuple[float, float]:
    """``score`` and ``threshold`` rounded for the findings, with as many decimals as it takes
    (4 at least) for the rounded pair to compare like the exact one.

    The calibrated thresholds sit close to 1 (e.g. 0.9999993), where 4 decimals would make a
    flagged and an unflagged score look the same (both 1.0); a policy comparing
    ``item.score >= item.threshold``, or a person reading the audit record, must see the
    difference the model saw. Rounding is monotone, so a score at or above the threshold
    never rounds below it; only a score below it can round up to it, and then more digits
    are kept.
    """
    above = score >= threshold
    for digits in range(4, 17):
        s, t = round(score, digits), round(threshold, digits)
        if (s >= t) == above:
            return s, t
    return score, threshold


_TEXTUAL_MIME = ("text/", "application/json", "application/xml", "application/yaml", "application/javascript")


class ScanTarget(NamedTuple):
    """One string to score: where it is, what kind of text it is, and the text.

    (Immutable; a named tuple because one is made per string on the relay path, and a
    frozen dataclass costs several times more to construct.)"""

    pointer: str
    kind: str
    text: str


# Answers about tasks (SEP-1686 and its 2026 extension) and server notifications that carry
# text for the host: read whole by the injection detector.
TASK_METHODS = ("tasks/get", "tasks/list", "tasks/cancel", "tasks/result")
SCANNED_NOTIFICATIONS = frozenset({"notifications/tasks/status", "notifications/progress", "notifications/message"})


def injection_targets(ctx: MessageContext, min_len: int = 0) -> list[ScanTarget]:
    """The strings of a message the injection classifier should read, if any.

    tools/call results, resources/read contents and tools/call arguments are scored as
    tool output; prompts/get messages as prompts. Arguments are content on its way into a
    tool (paths, shell commands, file contents, message bodies), not a user's chat turn:
    the "prompt" kind is trained on chat turns and jailbreak prompts and calibrated on
    documentation prose, the "tool_output" kind on files, code and documents of the kind
    arguments carry (models/MODEL_CARD.md).

    Strings shorter than ``min_len`` may be left out (the detector skips them anyway).
    (Built as a list by helpers that append to it: every message of a call passes here, and
    a chain of generators costs several times more.)
    """
    out: list[ScanTarget] = []
    kind = ctx.message.kind
    if tool_call_request(ctx):
        assert ctx.tool is not None
        _every_string(ctx, ctx.tool.get("arguments"), "/params/arguments", min_len, out)
        return out
    if ctx.method == "sampling/createMessage" and ctx.direction == S2C and kind is Kind.REQUEST:
        # The server asks the client's model to complete these messages: text planted in them
        # (from a document the server fetched, say) speaks to that model directly.
        params = ctx.params if isinstance(ctx.params, dict) else {}
        if isinstance(params.get("systemPrompt"), str):
            out.append(ScanTarget("/params/systemPrompt", "prompt", params["systemPrompt"]))
        _message_targets(params.get("messages"), "/params/messages", out)
        return out
    if error_from_server(ctx):
        error = ctx.message.body.get("error")
        if isinstance(error, dict):
            if isinstance(error.get("message"), str):
                out.append(ScanTarget("/error/message", "tool_output", error["message"]))
            _every_string(ctx, error.get("data"), "/error/data", min_len, out)
        return out
    if ctx.direction == S2C and (
        (kind is Kind.NOTIFICATION and ctx.method in SCANNED_NOTIFICATIONS)
        or (kind is Kind.RESPONSE and ctx.method in TASK_METHODS)
    ):
        # Status messages, progress and log text reach the host, and a task's answer may
        # carry the tool's result itself (tasks/get in the 2026 tasks extension) or the
        # server's own requests: every string is read as tool output.
        part, pointer = ("params", "/params") if kind is Kind.NOTIFICATION else ("result", "/result")
        _every_string(ctx, ctx.message.body.get(part), pointer, min_len, out)
        return out
    if kind is not Kind.RESPONSE or ctx.direction != S2C:
        return out
    result = ctx.message.body.get("result")
    if not isinstance(result, dict):
        return out
    if ctx.method == "tools/call":
        content = result.get("content")
        if isinstance(content, list):
            for i, block in enumerate(content):
                _block_targets(block, f"/result/content/{i}", "tool_output", out)
        structured = result.get("structuredContent")
        if structured is not None:
            _every_string(ctx, structured, "/result/structuredContent", min_len, out)
        task = result.get("task")
        if task is not None:
            # A CreateTaskResult (the call runs as a task): its status message reaches the host.
            _every_string(ctx, task, "/result/task", min_len, out)
    elif ctx.method == "prompts/get":
        if isinstance(result.get("description"), str):
            out.append(ScanTarget("/result/description", "tool_description", result["description"]))
        _message_targets(result.get("messages"), "/result/messages", out)
    elif ctx.method == "resources/read":
        contents = result.get("contents")
        if isinstance(contents, list):
            for i, item in enumerate(contents):
                _resource_targets(item, f"/result/contents/{i}", "tool_output", out)
    return out


def _every_string(ctx: MessageContext, value: Any, pointer: str, min_len: int, out: list[ScanTarget]) -> None:
    """Every string of ``value`` (the walk the message's detectors share), read as tool output."""
    for where, text in ctx.string_leaves(value, pointer, min_len):
        out.append(ScanTarget(where, "tool_output", text))


def _message_targets(messages: Any, base: str, out: list[ScanTarget]) -> None:
    """The text of chat messages (prompts/get results, sampling requests): a content block,
    or a list of them, per message."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        if isinstance(message, dict):
            content = message.get("content")
            blocks = content if isinstance(content, list) else [content]
            where = f"{base}/{i}/content"
            for j, block in enumerate(blocks):
                _block_targets(block, f"{where}/{j}" if isinstance(content, list) else where, "prompt", out)


def _block_targets(block: Any, where: str, kind: str, out: list[ScanTarget]) -> None:
    if not isinstance(block, dict):
        return
    block_type = block.get("type")
    if block_type == "text":
        text = block.get("text")
        if isinstance(text, str):
            out.append(ScanTarget(f"{where}/text", kind, text))
    elif block_type == "resource_link":
        for field_name in ("description", "title"):  # both are shown to the model
            if isinstance(block.get(field_name), str):
                out.append(ScanTarget(f"{where}/{field_name}", kind, block[field_name]))
    elif block_type == "resource":
        _resource_targets(block.get("resource"), f"{where}/resource", kind, out)


def _resource_targets(item: Any, where: str, kind: str, out: list[ScanTarget]) -> None:
    if not isinstance(item, dict):
        return
    if isinstance(item.get("text"), str):
        out.append(ScanTarget(f"{where}/text", kind, item["text"]))
    elif isinstance(item.get("blob"), str) and str(item.get("mimeType") or "").startswith(_TEXTUAL_MIME):
        try:
            text = base64.b64decode(item["blob"], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return
        out.append(ScanTarget(f"{where}/blob", kind, text))


# One classifier verdict on a string or a decoded segment of it, without its place:
# (score, label, threshold, start, end, windows, decoded encoding or None). A plain tuple:
# one is made per scored string on the relay path.
_Assessed = tuple[float, str, float, int, int, int, "str | None"]


class InjectionDetector:
    """Scores strings with the classifier, including their decoded (base64/hex/URL) segments
    and their words spelled in leetspeak or letter by letter, spelled out."""

    def __init__(self, classifier: InjectionClassifier, *, min_chars: int = 12, max_chars: int = 200_000, decode: bool = True) -> None:
        self.classifier = classifier
        self._min_chars = self.min_chars = min_chars
        self._max_chars = max_chars
        self._decode = decode
        self._memos: dict[str, TextMemo[tuple[_Assessed, ...]]] = {}  # one per kind of text

    def scan(self, targets: Iterable[ScanTarget]) -> dict[str, Any] | None:
        """``findings.injection`` for these strings, or None when none was worth scoring."""
        items: list[dict[str, Any]] = []
        scanned = 0
        budget = self._max_chars
        truncated = False
        for target in targets:
            if len(target.text) < self._min_chars:
                continue
            if budget <= 0:
                truncated = True
                break
            text = target.text[:budget]
            truncated = truncated or len(text) < len(target.text)
            budget -= len(text)
            for score, label, threshold, start, end, windows, decoded in self._assess(target.kind, text):
                scanned += 1
                item = {
                    "pointer": target.pointer, "kind": target.kind, "score": score, "label": label,
                    "threshold": threshold, "start": start, "end": end, "windows": windows,
                }
                if decoded:
                    item["decoded"] = decoded
                items.append(item)
        if not items:
            return None
        items.sort(key=lambda i: -i["score"])
        worst = items[0]
        return {
            "score": worst["score"], "label": worst["label"], "kind": worst["kind"], "threshold": worst["threshold"],
            "pointer": worst["pointer"], "start": worst["start"], "end": worst["end"],
            "items": [i for i in items[:_MAX_ITEMS] if i["score"] >= _REPORT_FLOOR],
            "scanned": scanned, "truncated": truncated,
        }

    def _assess(self, kind: str, text: str) -> list[_Assessed]:
        """What the classifier says of ``text`` and of the segments it decodes to (memoised:
        the answer depends on the text and its kind alone)."""
        memo = self._memos.get(kind)
        if memo is None:
            memo = self._memos[kind] = TextMemo()
        return memoised_scan(memo, text, functools.partial(self._score_all, kind))

    def _score_all(self, kind: str, text: str) -> list[_Assessed]:
        found: list[_Assessed] = []
        norm = normalize(text)  # free for ASCII text
        # An instruction needs words: a string without whitespace (a path, URL, id or
        # encoded blob) is not scored itself; what it decodes to is, below.
        if _WHITESPACE.search(norm.text):
            found.append(self._score(kind, text))
        if self._decode:
            segments = decoded_segments(norm.text) + deobfuscated_segments(norm.text, self.classifier.words)
            for seg in segments:
                found.append(self._score(kind, seg.text, span=norm.to_original(seg.start, seg.end), decoded=seg.encoding))
        return found

    def _score(self, kind: str, text: str, span: tuple[int, int] | None = None, decoded: str | None = None) -> _Assessed:
        res = self.classifier.score(text, kind)  # type: ignore[arg-type]
        start, end = span if span is not None else res.span
        score, threshold = reported_score(float(res.score), float(res.threshold))
        return (score, res.label, threshold, start, end, res.window_count, decoded)


class InjectionEnricher:
    """``input.findings.injection``: the worst-scoring string of a message, with every item."""

    name = "injection"

    def __init__(self, detector: InjectionDetector) -> None:
        self._detector = detector

    def enrich(self, ctx: MessageContext) -> None:
        kind = ctx.message.kind
        # Cheap guard first: only tools/call and sampling requests and a few responses concern us.
        if kind is Kind.REQUEST:
            if not tool_call_request(ctx) and ctx.method != "sampling/createMessage":
                return
        elif kind is Kind.NOTIFICATION:
            if ctx.direction != S2C or ctx.method not in SCANNED_NOTIFICATIONS:
                return
        elif not response_to(ctx, "tools/call", "prompts/get", "resources/read", *TASK_METHODS) \
                and not error_from_server(ctx):
            return
        # The span detectors walked the arguments already (strings of SPAN_MIN_LENGTH and up).
        min_len = SPAN_MIN_LENGTH if self._detector.min_chars >= SPAN_MIN_LENGTH else 0
        found = self._detector.scan(injection_targets(ctx, min_len))
        if found is not None:
            ctx.findings[self.name] = found

    after = learns_nothing
