"""MCP over WebSocket: every message, either way, goes through the pipeline on its own.

One socket is one conversation, so it gets one session. A denied request is answered on
the socket it came from with the JSON-RPC error; a denied notification is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...pipeline import C2S, S2C, Inspector
from ...session import Session

SUBPROTOCOL = "mcp"


@dataclass(slots=True)
class Relay:
    """What to do with one message: send ``forward`` on, ``reply`` back (either may be None)."""

    forward: bytes | None
    reply: bytes | None


class WebSocketInspection:
    """The firewall's view of one WebSocket connection."""

    def __init__(self, inspector: Inspector, session: Session, max_message_bytes: int) -> None:
        self._inspector = inspector
        self.session = session
        self._limit = max_message_bytes

    def from_client(self, data: bytes) -> Relay:
        return self._judge(data, C2S)

    def from_server(self, data: bytes) -> Relay:
        return self._judge(data, S2C)

    def _judge(self, data: bytes, direction: str) -> Relay:
        if len(data) > self._limit:
            outcome = self._inspector.refuse_oversized(
                len(data), self._limit, direction, self.session, data[:512] + data[-512:])
            return Relay(outcome.forward, outcome.reply)
        outcome = self._inspector.inspect(data, direction, self.session)
        return Relay(outcome.forward, outcome.reply)
