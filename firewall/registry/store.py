"""The registry as one firewall process sees it: the file, the state, and what it records.

``view()`` returns the current :class:`RegistryView`, re-reading the files only when their
signature (mtime, size, inode) changed, so approvals made with ``mcpfw registry approve``
reach running firewalls without a restart. ``record_*`` write what a server showed to the
state under the writers' lock, deciding on the freshly read state so that processes
racing to pin the same server agree on who came first.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .document import RegistryDocument, load_document
from .files import RegistryFileError, Signature, signature
from .state import State, StateStore, server_state
from .view import RegistryView


@dataclass(slots=True)
class ListObservation:
    """Definitions one list response showed, to be recorded in the state."""

    tenant: str
    server: str
    kind: str
    items: list[tuple[str, str, dict[str, Any]]]  # (name, digest, canonical definition)
    complete: bool  # the whole list (no pagination): names absent from it were removed
    may_pin: bool  # tofu: pin on first use
    continuation: bool = False  # a later page of the listing that made the first use
    # Names never pinned on first use: definitions with high-severity poisoning evidence stay
    # unapproved until a person approves them (as `mcpfw registry approve` requires --force).
    unpinnable: frozenset[str] = frozenset()
    now: float = field(default_factory=time.time)

    def needed(self, view: RegistryView) -> bool:
        """Whether recording would change anything, judged from ``view`` (no lock, no I/O)."""
        t, s, k = self.tenant, self.server, self.kind
        if self.may_pin and (view.first_use(t, s, k) or self.continuation):
            return True
        names = view.names(t, s, k)
        for name, digest, _ in self.items:
            known = names.get(name)
            if known is None or known.observed != digest:
                return True
        if self.complete:
            listed = {name for name, _, _ in self.items}
            if any(known.observed and name not in listed for name, known in names.items()):
                return True
        announcement = view.announcement(t, s, k)
        if announcement is not None and announcement[0] <= self.now:
            return self.complete or any(name not in announcement[1] for name, _, _ in self.items)
        return False

    def apply(self, state: State, document: RegistryDocument) -> bool:
        srv = server_state(state, self.tenant, self.server, create=True)
        assert srv is not None
        entries = document.server(self.tenant, self.server)
        approved_any = entries is not None and any(e.definition is not None for e in entries.kinds[self.kind].values())
        pins = srv.get("pins", {}).get(self.kind)
        changed = False
        if self.may_pin and pins is None and not approved_any:
            pins = srv.setdefault("pins", {})[self.kind] = {}
            pin_now = changed = True
        else:
            pin_now = self.may_pin and self.continuation and pins is not None
        definitions = srv.setdefault("definitions", {})
        observed = srv.setdefault("observed", {}).get(self.kind)
        if observed is None:
            observed = srv["observed"][self.kind] = {}
            changed = True
        for name, digest, definition in self.items:
            if pin_now and pins is not None and name not in pins and name not in self.unpinnable:
                pins[name] = {"digest": digest, "at": self.now}
                definitions[digest] = definition
                changed = True
            seen = observed.get(name)
            if seen is None or seen["digest"] != digest:
                first_seen = seen.get("first_seen", seen["at"]) if seen else self.now
                observed[name] = {"digest": digest, "at": self.now, "first_seen": first_seen}
                definitions[digest] = definition
                changed = True
        if self.complete:
            listed = {name for name, _, _ in self.items}
            for name in [n for n in observed if n not in listed]:
                del observed[name]
                changed = True
        return self._verify(srv) or changed

    def _verify(self, srv: dict[str, Any]) -> bool:
        """A list answered after a change announcement: what it shows is verified again."""
        announced = srv.get("announced", {})
        announcement = announced.get(self.kind)
        if announcement is None or announcement["at"] > self.now:
            return False  # nothing announced, or announced after this list was answered
        if self.complete:
            del announced[self.kind]
            if not announced:
                del srv["announced"]
            return True
        listed = set(announcement.get("listed", ()))
        names = {name for name, _, _ in self.items}
        if names <= listed:
            return False
        announcement["listed"] = sorted(listed | names)
        return True


@dataclass(slots=True)
class ProtocolObservation:
    """The era, version and capabilities a server negotiated."""

    tenant: str
    server: str
    record: dict[str, Any]  # era, version, capabilities, digest
    may_pin: bool
    now: float = field(default_factory=time.time)

    def needed(self, view: RegistryView) -> bool:
        approved, pinned, observed = view.protocol(self.tenant, self.server)
        if self.may_pin and approved is None and pinned is None:
            return True
        return observed is None or observed.get("digest") != self.record["digest"]

    def apply(self, state: State, document: RegistryDocument) -> bool:
        srv = server_state(state, self.tenant, self.server, create=True)
        assert srv is not None
        protocol = srv.setdefault("protocol", {})
        changed = False
        entries = document.server(self.tenant, self.server)
        if self.may_pin and protocol.get("pin") is None and (entries is None or entries.protocol is None):
            protocol["pin"] = {**self.record, "at": self.now}
            changed = True
        observed = protocol.get("observed")
        if observed is None or observed.get("digest") != self.record["digest"]:
            protocol["observed"] = {**self.record, "at": self.now}
            changed = True
        return changed


@dataclass(slots=True)
class ChangeObservation:
    """A server announced that its list of a kind changed (list_changed).

    Until a list of that kind answered after ``now`` is recorded, the definitions pinned
    for it are unverified: the server may already offer something else under their names.
    """

    tenant: str
    server: str
    kind: str
    now: float = field(default_factory=time.time)

    def needed(self, view: RegistryView) -> bool:
        announcement = view.announcement(self.tenant, self.server, self.kind)
        return announcement is None or announcement[0] < self.now

    def apply(self, state: State, document: RegistryDocument) -> bool:
        srv = server_state(state, self.tenant, self.server, create=True)
        assert srv is not None
        announced = srv.setdefault("announced", {})
        current = announced.get(self.kind)
        if current is not None and current["at"] >= self.now:
            return False  # another process recorded a later announcement: it stands
        # A later announcement starts over: names listed before it are unverified again.
        announced[self.kind] = {"at": self.now, "listed": []}
        return True


Observation = ListObservation | ProtocolObservation | ChangeObservation


class RegistryStore:
    """The registry file and the state file of one firewall process, with a cached view."""

    def __init__(self, file: Path, state_file: Path) -> None:
        self.file = file
        self.state = StateStore(state_file)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._warned: str | None = None
        self._signatures: tuple[Signature, Signature] = (signature(file), self.state.signature())
        # Read now: a broken registry stops the firewall at start, not at the first message.
        self._view = RegistryView(load_document(file), self.state.read())

    def view(self, max_age: float = 0.0) -> RegistryView:
        """The current view; files are checked for changes at most every ``max_age`` seconds."""
        now = time.monotonic()
        if max_age and now - self._checked < max_age:
            return self._view
        self._checked = now
        current = (signature(self.file), self.state.signature())
        if current == self._signatures:
            return self._view
        with self._lock:
            view = self._view
            try:
                document = load_document(self.file) if current[0] != self._signatures[0] else view.document
                state = self.state.read() if current[1] != self._signatures[1] else view.state
            except RegistryFileError as exc:
                self._warn(str(exc))  # keep enforcing the last good registry
                return view
            self._view = RegistryView(document, state, view.generation + 1)
            self._signatures = current
            return self._view

    def record(self, observation: Observation) -> RegistryView:
        """Write what a server showed (if it is news) and return the view including it."""
        view = self.view()
        if not observation.needed(view):
            return view
        document = view.document
        state, state_signature = self.state.update(lambda st: observation.apply(st, document))
        with self._lock:
            # The state read under the writers' lock is the newest there is; the document
            # keeps its old signature, so a file changed meanwhile is still re-read later.
            self._view = RegistryView(self._view.document, state, self._view.generation + 1)
            self._signatures = (self._signatures[0], state_signature)
            return self._view

    def _warn(self, message: str) -> None:
        if message != self._warned:
            self._warned = message
            print(f"mcpfw: registry: {message}; still enforcing the last readable version", file=sys.stderr)
