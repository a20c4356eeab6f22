"""Helpers for the detector tests: an in-memory inspector and the real servers' lists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from firewall.config import LimitsConfig
from firewall.paths import DEFAULT_POLICY_DIR
from firewall.pipeline import Inspector, Outcome
from firewall.policy.bundle import load_bundle
from firewall.policy.engine import create_engine
from firewall.session import ServerIdentity, Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from mcp_peers import fetch_lists, server_commands  # noqa: E402

__all__ = ["Harness", "fetch_lists", "server_commands"]


class MemoryAudit:
    accepting = True

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


class Harness:
    """The real pipeline and default bundle, in process: feed frames, read outcomes."""

    def __init__(self, enrichers: tuple[Any, ...], data: dict[str, Any] | None = None) -> None:
        bundle = load_bundle(DEFAULT_POLICY_DIR)
        self.audit = MemoryAudit()
        self.inspector = Inspector(
            create_engine("regorus", bundle, data), self.audit, bundle_digest=bundle.digest,
            limits=LimitsConfig(), enrichers=enrichers,
        )
        self.session = Session(ServerIdentity("srv"), transport="stdio", cwd="/", resolve_symlinks=False)
        self._id = 0

    def request(self, method: str, params: dict[str, Any]) -> tuple[Outcome, int]:
        self._id += 1
        frame = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}
        return self.inspector.inspect(orjson.dumps(frame), "client_to_server", self.session), self._id

    def respond(self, msg_id: int, result: dict[str, Any]) -> Outcome:
        frame = {"jsonrpc": "2.0", "id": msg_id, "result": result}
        return self.inspector.inspect(orjson.dumps(frame), "server_to_client", self.session)

    def exchange(self, method: str, params: dict[str, Any], result: dict[str, Any]) -> Outcome:
        """A request the policy lets through, then its response; the response's outcome."""
        outcome, msg_id = self.request(method, params)
        assert outcome.forward is not None, outcome.reply
        return self.respond(msg_id, result)

    @property
    def findings(self) -> dict[str, Any]:
        return self.audit.rows[-1]["findings"] or {}
