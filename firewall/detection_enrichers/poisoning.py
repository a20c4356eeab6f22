"""``input.findings.poisoning``: hidden instructions and invisible text in what a server
describes (tools, prompts, resources, its own instructions), scanned once per distinct text."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from detectors.poisoning import PoisoningScanner, list_items

from ..jsonrpc import Kind
from ..pipeline import C2S, S2C, MessageContext, learns_nothing
from ._common import LIST_METHODS, PerSession


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
        self._seen = PerSession(_Definitions)
        self._by_server: dict[str, _Definitions] = {}
        self._lock = threading.Lock()

    def enrich(self, ctx: MessageContext) -> None:
        kind = ctx.message.kind
        if kind is Kind.RESPONSE and ctx.direction == S2C:
            if ctx.method in LIST_METHODS:
                self._scan_list(ctx)
            elif ctx.method in _SERVER_DESCRIPTIONS:
                self._scan_server(ctx)
        elif kind is Kind.REQUEST and ctx.direction == C2S:
            self._report_target(ctx)

    def _server_state(self, ctx: MessageContext) -> _Definitions:
        name = ctx.session.server.name
        state = self._by_server.get(name)  # every call looks here: no new object when it exists
        if state is None:
            with self._lock:
                state = self._by_server.setdefault(name, _Definitions())
        return state

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

    after = learns_nothing
