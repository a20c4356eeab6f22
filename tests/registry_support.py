"""Helpers for the registry tests: the real pipeline and default bundle, in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from firewall.config import LimitsConfig
from firewall.paths import DEFAULT_POLICY_DIR
from firewall.pipeline import Inspector, Outcome, build_input
from firewall.policy.bundle import load_bundle
from firewall.policy.engine import create_engine
from firewall.registry.enricher import Modes, RegistryEnricher
from firewall.registry.store import RegistryStore
from firewall.session import ServerIdentity, Session

_BUNDLE = load_bundle(DEFAULT_POLICY_DIR)


class MemoryAudit:
    accepting = True

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def tool(name: str, description: str = "Does things.", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": {"type": "object", "properties": {}}, **extra}


def template(uri_template: str, description: str = "A resource.", **extra: Any) -> dict[str, Any]:
    return {"uriTemplate": uri_template, "name": uri_template, "description": description, **extra}


def codes(error: dict[str, Any] | None) -> list[str] | None:
    """The reason codes of a JSON-RPC denial (None: the request went on)."""
    return None if error is None else [r["code"] for r in error["data"]["reasons"]]


class Capture:
    """Keeps every policy input (runs after the other enrichers, so sees the finished input)."""

    name = "capture"

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any] | None] = []

    def enrich(self, ctx: Any) -> None:
        self.inputs.append(build_input(ctx))

    def after(self, ctx: Any, decision: Any, forwarded: Any) -> None:
        return None

    @property
    def last(self) -> dict[str, Any]:
        return self.inputs[-1]


class Firewall:
    """One firewall process: an inspector with the registry enricher (and optional others)."""

    def __init__(self, registry: Path, *, mode: str = "tofu", servers: dict[str, str] | None = None,
                 extra: tuple[Any, ...] = (), data: dict[str, Any] | None = None) -> None:
        self.store = RegistryStore(registry, registry.with_name(registry.stem + ".state.json"))
        self.enricher = RegistryEnricher(self.store, Modes(mode, servers or {}), recheck_seconds=0.0)
        self.audit = MemoryAudit()
        self.capture = Capture()
        self.inspector = Inspector(
            create_engine("regorus", _BUNDLE, data), self.audit, bundle_digest=_BUNDLE.digest,
            limits=LimitsConfig(), enrichers=(*extra, self.enricher, self.capture),
        )

    def session(self, server: str = "drift") -> Conversation:
        return Conversation(self, server)


class Conversation:
    """One client-server session through the firewall."""

    def __init__(self, firewall: Firewall, server: str) -> None:
        self.firewall = firewall
        self.session = Session(ServerIdentity(server), transport="stdio", cwd="/", resolve_symlinks=False)
        self._id = 0

    def _send(self, frame: dict[str, Any], direction: str) -> Outcome:
        return self.firewall.inspector.inspect(orjson.dumps(frame), direction, self.session)

    def request(self, method: str, params: dict[str, Any]) -> tuple[Outcome, int]:
        self._id += 1
        return self._send({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}, "client_to_server"), self._id

    def exchange(self, method: str, params: dict[str, Any], result: dict[str, Any]) -> Outcome:
        outcome, msg_id = self.request(method, params)
        assert outcome.forward is not None, outcome.reply
        return self._send({"jsonrpc": "2.0", "id": msg_id, "result": result}, "server_to_client")

    def notify(self, method: str, params: dict[str, Any] | None = None) -> Outcome:
        frame: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            frame["params"] = params
        return self._send(frame, "server_to_client")

    def initialize(self, version: str = "2025-11-25", capabilities: dict[str, Any] | None = None) -> Outcome:
        return self.exchange(
            "initialize", {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            {"protocolVersion": version, "capabilities": capabilities or {"tools": {}}, "serverInfo": {"name": "s", "version": "1"}},
        )

    def list_tools(self, tools: list[dict[str, Any]], params: dict[str, Any] | None = None, **result: Any) -> list[str]:
        """The names the client receives."""
        outcome = self.exchange("tools/list", params or {}, {"tools": tools, **result})
        if outcome.forward is None:
            return []
        return [t["name"] for t in orjson.loads(outcome.forward)["result"]["tools"]]

    def list_kind(self, method: str, key: str, items: list[dict[str, Any]], params: dict[str, Any] | None = None,
                  **result: Any) -> list[str]:
        """prompts/list or resources/templates/list: the names (uriTemplates) the client receives."""
        outcome = self.exchange(method, params or {}, {key: items, **result})
        if outcome.forward is None:
            return []
        field = "uriTemplate" if key == "resourceTemplates" else "name"
        return [i[field] for i in orjson.loads(outcome.forward)["result"][key]]

    def use(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """None if the request went on to the server, else the JSON-RPC error the client got."""
        outcome, _ = self.request(method, params)
        if outcome.forward is not None:
            return None
        return orjson.loads(outcome.reply)["error"]

    def read(self, uri: str) -> dict[str, Any] | None:
        return self.use("resources/read", {"uri": uri})

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """None if the call went on to the server, else the JSON-RPC error the client got."""
        outcome, _ = self.request("tools/call", {"name": name, "arguments": arguments or {}})
        if outcome.forward is not None:
            return None
        return orjson.loads(outcome.reply)["error"]

    @property
    def registry(self) -> dict[str, Any] | None:
        """input.registry of the last message judged."""
        return self.firewall.capture.last["registry"]
