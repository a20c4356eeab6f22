"""``input.findings.intent``: how far a tool call is from the declared task and from the
client's usual calls."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..jsonrpc import Kind
from ..pipeline import C2S, MessageContext
from ..policy.decision import Decision
from ._common import INTENT_META_KEY, PerSession, response_to, tool_call_request

if TYPE_CHECKING:
    from detectors.intent import History, IntentScorer


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
        self._sessions = PerSession(_IntentSession)
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
        elif response_to(ctx, "tools/list"):  # descriptions make calls far easier to compare
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
        if not self._history_on or not decision.allow or not tool_call_request(ctx):
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
