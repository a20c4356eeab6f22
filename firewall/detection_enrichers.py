"""Detector enrichers: PII, tool poisoning, prompt injection and intent findings for the policy.

Each fills ``input.findings.<name>`` and decides nothing: the Rego bundle turns findings
into decisions with thresholds kept in data (``data.mcpfw.config.detectors``). Each checks
first, cheaply, whether a message concerns it, so that other messages pay nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from detectors.normalize import decoded_segments, deobfuscated_segments, normalize
from detectors.pii import PiiScanner
from detectors.memo import TextMemo, memoised_scan
from detectors.poisoning import PoisoningScanner, list_items

from .config import DetectorsConfig
from .enrichers import SPAN_MIN_LENGTH, SecretsEnricher, SpanFindingsEnricher
from .jsonrpc import Kind
from .pipeline import C2S, S2C, MessageContext
from .policy.decision import Decision
from .session import Session

if TYPE_CHECKING:
    from detectors.injection import InjectionClassifier
    from detectors.intent import History, IntentScorer

# The _meta key a client sets to declare what the current task is (on a tools/call, or on
# initialize for the whole session). Reverse-DNS prefix, as MCP recommends for _meta keys.
INTENT_META_KEY = "dev.mcpfw/intent"
_LIST_METHODS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})


class _PerSession:
    """State kept per session, forgotten with the session."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._data: weakref.WeakKeyDictionary[Session, Any] = weakref.WeakKeyDictionary()
        self._factory = factory
        self._lock = threading.Lock()

    def get(self, session: Session) -> Any:
        with self._lock:
            state = self._data.get(session)
            if state is None:
                state = self._data[session] = self._factory()
            return state

    def peek(self, session: Session) -> Any | None:
        """The session's state if it has any (creates none: a stateless HTTP request is a
        session of its own, and most never need state)."""
        return self._data.get(session)


def _response_to(ctx: MessageContext, *methods: str) -> bool:
    return ctx.message.kind is Kind.RESPONSE and ctx.direction == S2C and ctx.method in methods


def _error_from_server(ctx: MessageContext) -> bool:
    """An error answer to a request that reads content (its message reaches the model too)."""
    return (ctx.message.kind is Kind.ERROR_RESPONSE and ctx.direction == S2C
            and ctx.method in ("tools/call", "prompts/get", "resources/read"))


def _tool_call_request(ctx: MessageContext) -> bool:
    return ctx.message.kind is Kind.REQUEST and ctx.direction == C2S and ctx.tool is not None


# -- PII ------------------------------------------------------------------------------------


class PiiEnricher(SpanFindingsEnricher):
    """``input.findings.pii``: personal data in tool arguments, results and server messages.

    Same scope and finding shape as the secrets enricher: ``{pointer, rule, start, end, part}``.
    """

    name = "pii"

    def __init__(self, scanner: PiiScanner | None = None) -> None:
        self._scanner = scanner or PiiScanner()


# -- tool poisoning ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Definitions:
    """The evidence about every definition with findings in the lists seen last, by table."""

    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def update(self, table: str, name: str, entry: dict[str, Any] | None) -> None:
        names = self.tables.setdefault(table, {})
        if entry is None:
            names.pop(name, None)  # a definition listed clean (again)
        else:
            names[name] = entry


def _uri_key(uri: str) -> str:
    """A resource URI as servers may read it: the scheme (and an authority's host) without
    case, as RFC 3986 has them, so "FILE:///x" finds what "file:///x" was listed as."""
    scheme, sep, rest = uri.partition(":")
    if not sep or not scheme.isascii() or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return uri
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = "//" + authority.lower() + slash + path
    return scheme.lower() + ":" + rest


_SERVER_DESCRIPTIONS = frozenset({"initialize", "server/discover"})
_SERVER_INFO_TEXT = ("title", "description")  # optional fields: hiding them leaves a valid result
_KIND_TABLE = {"tool": "tools", "prompt": "prompts", "resource": "resources", "resource_template": "resources"}


class PoisoningEnricher:
    """``input.findings.poisoning``: hidden instructions in definitions the server lists.

    On list results (and the initialize instructions): ``{"items": [...], "scanned": n}``,
    one item per definition with evidence. On tools/call, prompts/get and resources/read:
    ``{"target": {...}}``, the evidence about the definition being used, remembered from
    the lists this session saw; a session that saw no such list (a stateless HTTP
    exchange) gets what the same server last listed in any session.
    """

    name = "poisoning"

    def __init__(self, scanner: PoisoningScanner | None = None) -> None:
        self._scanner = scanner or PoisoningScanner()
        self._seen = _PerSession(_Definitions)
        self._by_server: dict[str, _Definitions] = {}
        self._lock = threading.Lock()

    def enrich(self, ctx: MessageContext) -> None:
        kind = ctx.message.kind
        if kind is Kind.RESPONSE and ctx.direction == S2C:
            if ctx.method in _LIST_METHODS:
                self._scan_list(ctx)
            elif ctx.method in _SERVER_DESCRIPTIONS:
                self._scan_server(ctx)
        elif kind is Kind.REQUEST and ctx.direction == C2S:
            self._report_target(ctx)

    def _server_state(self, ctx: MessageContext) -> _Definitions:
        with self._lock:
            return self._by_server.setdefault(ctx.session.server.name, _Definitions())

    def _scan_list(self, ctx: MessageContext) -> None:
        states = (self._seen.get(ctx.session), self._server_state(ctx))
        items = []
        scanned = 0
        for pointer, kind, item in list_items(ctx.message.body.get("result")):
            scanned += 1
            report = self._scanner.scan_item(item)
            name = (item.get("uri") or item.get("uriTemplate")) if kind.startswith("resource") else item.get("name")
            entry = {"pointer": pointer, "kind": kind, "name": name, **report.as_dict(pointer)}
            if isinstance(name, str):
                key = _uri_key(name) if kind.startswith("resource") else name
                for state in states:
                    state.update(_KIND_TABLE[kind], key, entry if report.suspicious else None)
            if report.suspicious:
                items.append(entry)
        ctx.findings[self.name] = {"items": items, "scanned": scanned}

    def _scan_server(self, ctx: MessageContext) -> None:
        """The server's instructions and self-description, which clients show the model
        (initialize, and server/discover of the 2026 era)."""
        result = ctx.message.body.get("result")
        if not isinstance(result, dict):
            return
        parts: list[tuple[str, str, str, dict[str, Any]]] = []  # (item pointer, kind, base of hits, text)
        if isinstance(result.get("instructions"), str):
            parts.append(("/result", "server_instructions", "/result", {"instructions": result["instructions"]}))
        info = result.get("serverInfo")
        if isinstance(info, dict):
            for name in _SERVER_INFO_TEXT:
                if isinstance(info.get(name), str):
                    parts.append((f"/result/serverInfo/{name}", "server_info", "/result/serverInfo", {name: info[name]}))
        if not parts:
            return
        items = []
        for pointer, kind, base, text in parts:
            report = self._scanner.scan_item(text)
            if report.suspicious:
                items.append({"pointer": pointer, "kind": kind, "name": None, **report.as_dict(base)})
        ctx.findings[self.name] = {"items": items, "scanned": len(parts)}

    def _report_target(self, ctx: MessageContext) -> None:
        params = ctx.params if isinstance(ctx.params, dict) else {}
        if ctx.method == "tools/call":
            table, key = "tools", params.get("name")
        elif ctx.method == "prompts/get":
            table, key = "prompts", params.get("name")
        elif ctx.method == "resources/read":
            table, key = "resources", params.get("uri")
            key = _uri_key(key) if isinstance(key, str) else key
        else:
            return
        if not isinstance(key, str):
            return
        session: _Definitions | None = self._seen.peek(ctx.session)
        names = session.tables.get(table) if session is not None else None
        if names is None:  # this session saw no such list: trust what the server showed others
            names = self._server_state(ctx).tables.get(table, {})
        entry = names.get(key)
        if entry is not None:
            ctx.findings[self.name] = {"target": entry}

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        return None


# -- prompt injection -------------------------------------------------------------------------

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


def injection_targets(ctx: MessageContext, min_len: int = 0) -> Iterator[ScanTarget]:
    """The strings of a message the injection classifier should read, if any.

    tools/call results, resources/read contents and tools/call arguments are scored as
    tool output; prompts/get messages as prompts. Arguments are content on its way into a
    tool (paths, shell commands, file contents, message bodies), not a user's chat turn:
    the "prompt" kind is trained on chat turns and jailbreak prompts and calibrated on
    documentation prose, the "tool_output" kind on files, code and documents of the kind
    arguments carry (models/MODEL_CARD.md).

    Strings shorter than ``min_len`` may be left out (the detector skips them anyway).
    """
    if _tool_call_request(ctx):
        assert ctx.tool is not None
        for pointer, text in ctx.string_leaves(ctx.tool.get("arguments"), "/params/arguments", min_len):
            yield ScanTarget(pointer, "tool_output", text)
        return
    if ctx.method == "sampling/createMessage" and ctx.direction == S2C and ctx.message.kind is Kind.REQUEST:
        # The server asks the client's model to complete these messages: text planted in them
        # (from a document the server fetched, say) speaks to that model directly.
        params = ctx.params if isinstance(ctx.params, dict) else {}
        if isinstance(params.get("systemPrompt"), str):
            yield ScanTarget("/params/systemPrompt", "prompt", params["systemPrompt"])
        yield from _message_targets(params.get("messages"), "/params/messages")
        return
    if _error_from_server(ctx):
        error = ctx.message.body.get("error")
        if isinstance(error, dict):
            if isinstance(error.get("message"), str):
                yield ScanTarget("/error/message", "tool_output", error["message"])
            for pointer, text in ctx.string_leaves(error.get("data"), "/error/data", min_len):
                yield ScanTarget(pointer, "tool_output", text)
        return
    if ctx.direction == S2C and (
        (ctx.message.kind is Kind.NOTIFICATION and ctx.method in SCANNED_NOTIFICATIONS)
        or (ctx.message.kind is Kind.RESPONSE and ctx.method in TASK_METHODS)
    ):
        # Status messages, progress and log text reach the host, and a task's answer may
        # carry the tool's result itself (tasks/get in the 2026 tasks extension) or the
        # server's own requests: every string is read as tool output.
        part, pointer = ("params", "/params") if ctx.message.kind is Kind.NOTIFICATION else ("result", "/result")
        for where, text in ctx.string_leaves(ctx.message.body.get(part), pointer, min_len):
            yield ScanTarget(where, "tool_output", text)
        return
    if ctx.message.kind is not Kind.RESPONSE or ctx.direction != S2C:
        return
    result = ctx.message.body.get("result")
    if not isinstance(result, dict):
        return
    if ctx.method == "tools/call":
        yield from _content_targets(result.get("content"), "/result/content", "tool_output")
        for pointer, text in ctx.string_leaves(result.get("structuredContent"), "/result/structuredContent", min_len):
            yield ScanTarget(pointer, "tool_output", text)
        # A CreateTaskResult (the call runs as a task): its status message reaches the host.
        for pointer, text in ctx.string_leaves(result.get("task"), "/result/task", min_len):
            yield ScanTarget(pointer, "tool_output", text)
    elif ctx.method == "prompts/get":
        if isinstance(result.get("description"), str):
            yield ScanTarget("/result/description", "tool_description", result["description"])
        yield from _message_targets(result.get("messages"), "/result/messages")
    elif ctx.method == "resources/read":
        contents = result.get("contents")
        if isinstance(contents, list):
            for i, item in enumerate(contents):
                yield from _resource_targets(item, f"/result/contents/{i}", "tool_output")


def _message_targets(messages: Any, base: str) -> Iterator[ScanTarget]:
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
                yield from _block_targets(block, f"{where}/{j}" if isinstance(content, list) else where, "prompt")


def _content_targets(content: Any, base: str, kind: str) -> Iterator[ScanTarget]:
    if isinstance(content, list):
        for i, block in enumerate(content):
            yield from _block_targets(block, f"{base}/{i}", kind)


def _block_targets(block: Any, where: str, kind: str) -> Iterator[ScanTarget]:
    if not isinstance(block, dict):
        return
    if block.get("type") == "text" and isinstance(block.get("text"), str):
        yield ScanTarget(f"{where}/text", kind, block["text"])
    elif block.get("type") == "resource_link":
        for field_name in ("description", "title"):  # both are shown to the model
            if isinstance(block.get(field_name), str):
                yield ScanTarget(f"{where}/{field_name}", kind, block[field_name])
    elif block.get("type") == "resource":
        yield from _resource_targets(block.get("resource"), f"{where}/resource", kind)


def _resource_targets(item: Any, where: str, kind: str) -> Iterator[ScanTarget]:
    if not isinstance(item, dict):
        return
    if isinstance(item.get("text"), str):
        yield ScanTarget(f"{where}/text", kind, item["text"])
    elif isinstance(item.get("blob"), str) and str(item.get("mimeType") or "").startswith(_TEXTUAL_MIME):
        try:
            text = base64.b64decode(item["blob"], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return
        yield ScanTarget(f"{where}/blob", kind, text)


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

    def scan(self, targets: Iterator[ScanTarget] | list[ScanTarget]) -> dict[str, Any] | None:
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
            if not _tool_call_request(ctx) and ctx.method != "sampling/createMessage":
                return
        elif kind is Kind.NOTIFICATION:
            if ctx.direction != S2C or ctx.method not in SCANNED_NOTIFICATIONS:
                return
        elif not _response_to(ctx, "tools/call", "prompts/get", "resources/read", *TASK_METHODS) \
                and not _error_from_server(ctx):
            return
        # The span detectors walked the arguments already (strings of SPAN_MIN_LENGTH and up).
        min_len = SPAN_MIN_LENGTH if self._detector.min_chars >= SPAN_MIN_LENGTH else 0
        found = self._detector.scan(injection_targets(ctx, min_len))
        if found is not None:
            ctx.findings[self.name] = found

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        return None


# -- intent ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Purpose:
    """A declared purpose and whom it applies to (None matches anyone)."""

    purpose: str
    client: str | None = None
    key_id: str | None = None
    server: str | None = None

    def applies(self, client: str | None, key_id: str | None, server: str) -> bool:
        return (
            (self.client is None or (isinstance(client, str) and self.client.strip().casefold() == client.strip().casefold()))
            and (self.key_id is None or self.key_id == key_id)
            and (self.server is None or self.server == server)
        )


@dataclass(slots=True)
class _IntentSession:
    intent: str | None = None  # declared on initialize


_MAX_DESCRIPTIONS = 10_000  # per server


class IntentEnricher:
    """``input.findings.intent``: how far a tools/call is from the task and from the client's habits.

    The task is, in order: a purpose configured for the client / API key / server (it binds
    the client), ``_meta["dev.mcpfw/intent"]`` on the call, the same key on the session's
    initialize request.
    History (when enabled) is per server and client (and API key), learnt from allowed calls
    that fitted. Scoring embeds only calls that have something to be compared with.
    """

    name = "intent"

    def __init__(
        self, scorer_factory: Callable[[], IntentScorer], *, purposes: tuple[Purpose, ...] = (),
        history: bool = False, min_history: int = 20, max_history: int = 256,
    ) -> None:
        self._scorer_factory = scorer_factory
        self._scorer: IntentScorer | None = None
        self._purposes = purposes
        self._history_on = history
        self._min_history = min_history
        self._max_history = max_history
        self._sessions = _PerSession(_IntentSession)
        self._histories: dict[tuple[str, str | None, str | None], History] = {}
        self._descriptions: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    @property
    def scorer(self) -> IntentScorer:
        if self._scorer is None:  # loads the model on first need when injection is off
            self._scorer = self._scorer_factory()
        return self._scorer

    def enrich(self, ctx: MessageContext) -> None:
        kind = ctx.message.kind
        if kind is Kind.REQUEST and ctx.direction == C2S:
            if ctx.method == "initialize":
                meta_intent = _meta_intent(ctx.params)
                if meta_intent:
                    self._sessions.get(ctx.session).intent = meta_intent
            elif ctx.tool is not None:
                self._score_call(ctx)
        elif _response_to(ctx, "tools/list"):  # descriptions make calls far easier to compare
            self._learn_descriptions(ctx)

    def _learn_descriptions(self, ctx: MessageContext) -> None:
        # Kept per server, not per session: a stateless HTTP exchange has a session of its
        # own, and a server describes its tools the same way to every client.
        result = ctx.message.body.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return
        with self._lock:
            table = self._descriptions.setdefault(ctx.session.server.name, {})
            for tool in tools:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str) and isinstance(tool.get("description"), str):
                    if len(table) < _MAX_DESCRIPTIONS or tool["name"] in table:
                        table[tool["name"]] = tool["description"]

    def _description(self, ctx: MessageContext, name: str) -> str | None:
        return self._descriptions.get(ctx.session.server.name, {}).get(name)

    def task_for(self, ctx: MessageContext) -> tuple[str | None, str]:
        """The task text for a call and where it came from (``purpose`` or ``meta``).

        A purpose the operator configured for this client binds it: the client's own
        ``_meta`` intent counts only where none is configured (otherwise a client would
        escape its purpose by declaring another one)."""
        client, key_id = ctx.session.client_name, (ctx.identity or {}).get("key_id")
        for purpose in self._purposes:
            if purpose.applies(client, key_id, ctx.session.server.name):
                return purpose.purpose, "purpose"
        meta_intent = _meta_intent(ctx.params)
        if meta_intent:
            return meta_intent, "meta"
        state = self._sessions.peek(ctx.session)
        session_intent = state.intent if state is not None else None
        if session_intent:
            return session_intent, "meta"
        return None, "purpose"

    def _history_key(self, ctx: MessageContext) -> tuple[str, str | None, str | None]:
        return ctx.session.server.name, ctx.session.client_name, (ctx.identity or {}).get("key_id")

    def _score_call(self, ctx: MessageContext) -> None:
        task, source = self.task_for(ctx)
        history = self._histories.get(self._history_key(ctx)) if self._history_on else None
        if not task and (history is None or len(history) < self._min_history):
            return  # nothing to compare with: no embedding, no cost
        assert ctx.tool is not None
        name = ctx.tool.get("name") or ""
        result = self.scorer.score(
            name=name, arguments=ctx.tool.get("arguments"), description=self._description(ctx, name),
            task=task, task_source=source, history=history, min_history=self._min_history,
        )
        if result is not None:
            ctx.findings[self.name] = {"tool": name, **result.as_dict()}

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        """Learn allowed calls that fitted (or had nothing to be judged against) as history."""
        if not self._history_on or not decision.allow or not _tool_call_request(ctx):
            return
        found = ctx.findings.get(self.name)
        if found is not None and found.get("label") == "mismatch":
            return
        from detectors.intent import History, call_pattern

        assert ctx.tool is not None
        name, arguments = ctx.tool.get("name") or "", ctx.tool.get("arguments")
        vector = self.scorer.embed_call(name, arguments, self._description(ctx, name))
        digest = hashlib.blake2b(vector.tobytes(), digest_size=16).digest()
        key = self._history_key(ctx)
        with self._lock:
            history = self._histories.get(key)
            if history is None:
                history = self._histories[key] = History(self._max_history)
            history.add(vector, call_pattern(name, arguments), digest)


def _meta_intent(params: Any) -> str | None:
    meta = params.get("_meta") if isinstance(params, dict) else None
    value = meta.get(INTENT_META_KEY) if isinstance(meta, dict) else None
    return value.strip()[:2000] if isinstance(value, str) and value.strip() else None


# -- assembly ----------------------------------------------------------------------------------


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
