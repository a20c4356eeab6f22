"""What the detector enrichers share: per-session state and the tests of what a message is."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..jsonrpc import Kind
from ..pipeline import C2S, S2C, MessageContext
from ..session import Session


# The _meta key a client sets to declare what the current task is (on a tools/call, or on
# initialize for the whole session). Reverse-DNS prefix, as MCP recommends for _meta keys.
INTENT_META_KEY = "dev.mcpfw/intent"
LIST_METHODS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})


class PerSession:
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


def response_to(ctx: MessageContext, *methods: str) -> bool:
    return ctx.message.kind is Kind.RESPONSE and ctx.direction == S2C and ctx.method in methods


def error_from_server(ctx: MessageContext) -> bool:
    """An error answer to a request that reads content (its message reaches the model too)."""
    return (ctx.message.kind is Kind.ERROR_RESPONSE and ctx.direction == S2C
            and ctx.method in ("tools/call", "prompts/get", "resources/read"))


def tool_call_request(ctx: MessageContext) -> bool:
    return ctx.message.kind is Kind.REQUEST and ctx.direction == C2S and ctx.tool is not None
