"""What the firewall learns at run time, shared by every firewall process on the host.

One JSON file next to the registry file, written rarely (only when a server shows the
firewall something new) and read often. Claude Desktop and similar clients start one
stdio shim per server, and ``mcpfw proxy`` may run several workers, so writers serialise
on an ``flock`` and re-read before changing anything (see :mod:`.files`). A JSON file
rather than DuckDB or SQLite: DuckDB admits one writing process at a time, SQLite would
add a schema to migrate for a few kilobytes of data, and a JSON file can be read and
diffed by the people who review the registry.

Layout::

    {"version": 1, "tenants": {TENANT: {"servers": {SERVER: {
        "definitions": {DIGEST: definition},               # content-addressed
        "pins":     {KIND: {NAME: {"digest", "at"}}},      # trust on first use
        "observed": {KIND: {NAME: {"digest", "at", "first_seen"}}},  # the latest definitions seen
        "protocol": {"pin": {era, version, capabilities, digest, at}, "observed": {...}},
        "announced": {KIND: {"at", "listed": [NAME]}},     # change announced, not listed since
    }}}}}

A kind present in ``pins`` (even empty) has had its first use: later names are new.
A kind present in ``announced`` had a change announcement (list_changed) at ``at`` that no
complete list answered after it has shown yet; ``listed`` are the names pages answered
after it showed (paginated listings verify name by name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .files import RegistryFileError, Signature, atomic_write, exclusive, signature

State = dict[str, Any]


def empty_state() -> State:
    return {"version": 1, "tenants": {}}


def server_state(state: State, tenant: str, server: str, *, create: bool = False) -> dict[str, Any] | None:
    tenants = state.setdefault("tenants", {}) if create else state.get("tenants", {})
    body = tenants.setdefault(tenant, {"servers": {}}) if create else tenants.get(tenant)
    if body is None:
        return None
    servers = body.setdefault("servers", {}) if create else body.get("servers", {})
    return servers.setdefault(server, {}) if create else servers.get(server)


def referenced_digests(server: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for section in ("pins", "observed"):
        for table in server.get(section, {}).values():
            found.update(entry["digest"] for entry in table.values())
    return found


def collect_garbage(state: State) -> None:
    """Forget definitions nothing refers to any more."""
    for body in state.get("tenants", {}).values():
        for server in body.get("servers", {}).values():
            keep = referenced_digests(server)
            defs = server.get("definitions", {})
            for digest in [d for d in defs if d not in keep]:
                del defs[digest]


class StateStore:
    """The state file: read without a lock, changed under the writers' lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def signature(self) -> Signature:
        return signature(self.path)

    def read(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return empty_state()
        except OSError as exc:
            raise RegistryFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            state = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # Fail closed: starting over would re-trust every definition on first use.
            raise RegistryFileError(f"{self.path}: corrupt registry state ({exc}); move it away to start over") from None
        if not isinstance(state, dict) or state.get("version") != 1:
            raise RegistryFileError(f"{self.path}: not a version 1 registry state")
        return state

    def update(self, change: Callable[[State], bool]) -> tuple[State, Signature]:
        """Apply ``change`` to the current state under the lock; write only if it says it changed.

        Returns the state and the file's signature as of that state.
        """
        with exclusive(self.path):
            state = self.read()
            if change(state):
                collect_garbage(state)
                atomic_write(self.path, orjson.dumps(state, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
            return state, self.signature()
