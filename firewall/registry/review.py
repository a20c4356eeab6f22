"""What ``mcpfw registry`` shows and changes: the registry entries, pending changes, approvals.

Everything here works on a :class:`RegistryView` (read) or through
:func:`update_document` / :meth:`StateStore.update` (write, under the writers' lock), so it
is safe to run while firewalls serve.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .definitions import KINDS, PROTOCOL_FIELDS, SPECS
from .document import Entry, ProtocolEntry, RegistryDocument, update_document
from .state import StateStore, server_state
from .textdiff import changed_fields, field_diffs
from .view import APPROVED, CHANGED, NEW, PINNED, TOFU, Modes, RegistryView

REMOVED = "removed"  # approved or pinned, and missing from the last complete list
UNSEEN = "unseen"  # approved in the file, never listed by the server yet


@dataclass(slots=True)
class Row:
    """One name of one server and how its last observed definition compares."""

    tenant: str
    server: str
    kind: str
    name: str
    status: str
    reference: str | None  # the approved or pinned digest it is compared with
    observed: str | None
    source: str | None  # "file" or "tofu": where the reference comes from
    shadows: list[str] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        """Waiting for a decision: new, changed, removed, or pinned while shadowing another server."""
        return self.status in (NEW, CHANGED, REMOVED) or (self.status == PINNED and bool(self.shadows))

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "server": self.server, "kind": self.kind, "name": self.name, "status": self.status,
            "pinned_digest": self.reference, "observed_digest": self.observed, "source": self.source, "shadows": self.shadows,
        }


@dataclass(slots=True)
class ProtocolRow:
    tenant: str
    server: str
    status: str
    reference: dict[str, Any] | None
    observed: dict[str, Any] | None
    source: str | None

    @property
    def pending(self) -> bool:
        return self.status in (NEW, CHANGED)

    @property
    def fields(self) -> list[str]:
        if self.reference is None or self.observed is None:
            return []
        return [f for f in PROTOCOL_FIELDS if self.reference.get(f) != self.observed.get(f)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "server": self.server, "status": self.status, "fields": self.fields,
            "pinned": _protocol_fields(self.reference), "observed": _protocol_fields(self.observed), "source": self.source,
        }


def rows(view: RegistryView, modes: Modes, *, tenant: str | None = None, server: str | None = None) -> list[Row]:
    """Every name the registry knows, with its status, sorted by tenant, server, kind, name."""
    out = []
    for t, s in view.servers():
        if (tenant and t != tenant) or (server and s != server):
            continue
        mode = modes.of(s)
        srv = server_state(view.state, t, s) or {}
        for kind in KINDS:
            observed_kind = kind in srv.get("observed", {})
            for name, known in sorted(view.names(t, s, kind).items()):
                if known.observed:
                    status, reference = view.classify(t, s, kind, name, known.observed, mode)
                else:
                    reference = known.approved or (known.pinned if mode == TOFU else None)
                    if reference is None:
                        continue  # only rejected definitions, nothing offered
                    status = REMOVED if observed_kind else UNSEEN
                source = "file" if known.approved else ("tofu" if reference else None)
                shadows = view.shadows(t, s, kind, name, mode) if SPECS[kind].shadowable else []
                out.append(Row(t, s, kind, name, status, reference, known.observed, source, shadows))
    return out


def protocol_rows(view: RegistryView, modes: Modes, *, tenant: str | None = None, server: str | None = None) -> list[ProtocolRow]:
    out = []
    for t, s in view.servers():
        if (tenant and t != tenant) or (server and s != server):
            continue
        approved, pinned, observed = view.protocol(t, s)
        reference = approved or (pinned if modes.of(s) == TOFU else None)
        if reference is None and observed is None:
            continue
        if observed is None:
            status = UNSEEN
        elif reference is None:
            status = NEW
        elif reference.get("digest") == observed.get("digest"):
            status = APPROVED if approved else PINNED
        else:
            status = CHANGED
        out.append(ProtocolRow(t, s, status, reference, observed, "file" if approved else ("tofu" if reference else None)))
    return out


def change_details(view: RegistryView, row: Row) -> dict[str, Any]:
    """The definitions on both sides of a pending change, the changed fields and their diffs."""
    old, new = view.definition(row.reference), view.definition(row.observed)
    details: dict[str, Any] = {"pinned": old, "observed": new}
    if old is not None and new is not None:
        details["fields"] = changed_fields(old, new)
        details["diff"] = field_diffs(old, new)
    return details


# -- changing the registry ----------------------------------------------------------------


class ReviewError(Exception):
    """An approval or rejection that cannot be done as asked; the message says why."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def approve(
    file: Path, state: StateStore, view: RegistryView, modes: Modes, *, tenant: str, server: str,
    kind: str, names: Iterable[str] | None, by: str,
) -> list[Row]:
    """Make the observed definitions of ``names`` (all pending ones if None) the approved ones.

    A removed name is taken out of the registry (file entry and pin), so that it counts as
    new if it comes back.
    """
    candidates = {r.name: r for r in rows(view, modes, tenant=tenant, server=server) if r.kind == kind}
    if names is None:
        chosen = [r for r in candidates.values() if r.pending]
    else:
        chosen = []
        for name in names:
            row = candidates.get(name)
            if row is None or row.status == UNSEEN:
                raise ReviewError(f"server {server!r} has not shown a {SPECS[kind].label} named {name!r}")
            chosen.append(row)
    if not chosen:
        return []
    stamp = now_iso()

    def change(doc: RegistryDocument) -> None:
        table = doc.server_for_update(tenant, server).kinds[kind]
        for row in chosen:
            entry = table.get(row.name)
            if row.status == REMOVED:
                if entry is not None:
                    entry.definition = entry.digest = entry.approved_at = entry.approved_by = None
                    if not entry.rejected:
                        del table[row.name]
                continue
            definition = view.definition(row.observed)
            if definition is None:
                raise ReviewError(f"the state no longer holds the definition of {row.name!r}; list the server again")
            rejected = [d for d in (entry.rejected if entry else []) if d != row.observed]
            table[row.name] = Entry(row.name, definition, row.observed, stamp, by, rejected)

    update_document(file, change)
    removed = {r.name for r in chosen if r.status == REMOVED}
    if removed:
        _forget_pins(state, tenant, server, kind, removed)
    return chosen


def reject(
    file: Path, view: RegistryView, modes: Modes, *, tenant: str, server: str, kind: str, name: str,
) -> Row:
    """Refuse the definition ``name`` was last seen with; an approval of it is withdrawn."""
    row = next((r for r in rows(view, modes, tenant=tenant, server=server) if r.kind == kind and r.name == name), None)
    if row is None or row.observed is None:
        raise ReviewError(f"server {server!r} offers no {SPECS[kind].label} named {name!r} to reject")
    digest = row.observed

    def change(doc: RegistryDocument) -> None:
        table = doc.server_for_update(tenant, server).kinds[kind]
        entry = table.get(name) or Entry(name)
        if entry.digest == digest:
            entry.definition = entry.digest = entry.approved_at = entry.approved_by = None
        entry.rejected = sorted({*entry.rejected, digest})
        table[name] = entry

    update_document(file, change)
    return row


def approve_protocol(file: Path, view: RegistryView, modes: Modes, *, tenant: str, server: str, by: str) -> ProtocolRow:
    row = next(iter(protocol_rows(view, modes, tenant=tenant, server=server)), None)
    if row is None or row.observed is None:
        raise ReviewError(f"no protocol observed for server {server!r}")
    record = _protocol_fields(row.observed)
    assert record is not None

    def change(doc: RegistryDocument) -> None:
        doc.server_for_update(tenant, server).protocol = ProtocolEntry(record, row.observed["digest"], now_iso(), by)  # type: ignore[index]

    update_document(file, change)
    return row


def _forget_pins(state: StateStore, tenant: str, server: str, kind: str, names: set[str]) -> None:
    def change(st: dict[str, Any]) -> bool:
        pins = (server_state(st, tenant, server) or {}).get("pins", {}).get(kind, {})
        gone = [n for n in names if n in pins]
        for name in gone:
            del pins[name]
        return bool(gone)

    state.update(change)


# -- export and import --------------------------------------------------------------------


def effective_document(view: RegistryView, *, server: str | None = None) -> RegistryDocument:
    """The registry file plus what tofu pinned, as one registry file (for review and git).

    Pinned definitions become entries approved by "tofu" at the time they were pinned;
    the file's own entries win over pins of the same name.
    """
    doc = _copy(view.document)
    for tenant, body in view.state.get("tenants", {}).items():
        for name, data in body.get("servers", {}).items():
            entries = doc.server_for_update(tenant, name)
            for kind, pins in data.get("pins", {}).items():
                table = entries.kinds[kind]
                for key, pin in pins.items():
                    existing = table.get(key)
                    if existing is not None and existing.definition is not None:
                        continue
                    definition = data.get("definitions", {}).get(pin["digest"])
                    if definition is None:
                        continue
                    rejected = existing.rejected if existing else []
                    table[key] = Entry(key, definition, pin["digest"], _epoch_iso(pin["at"]), "tofu", rejected)
            pin = data.get("protocol", {}).get("pin")
            if pin and entries.protocol is None:
                record = _protocol_fields(pin)
                assert record is not None
                entries.protocol = ProtocolEntry(record, pin["digest"], _epoch_iso(pin["at"]), "tofu")
    if server is not None:
        for servers in doc.tenants.values():
            for name in [n for n in servers if n != server]:
                del servers[name]
    doc.prune()
    return doc


def _copy(doc: RegistryDocument) -> RegistryDocument:
    return RegistryDocument.from_data(doc.to_data(), "registry")


def import_document(file: Path, incoming: RegistryDocument, *, replace: bool) -> int:
    """Merge ``incoming`` into the registry file (its entries win); returns the entries taken."""
    taken = 0

    def change(doc: RegistryDocument) -> None:
        nonlocal taken
        if replace:
            doc.tenants.clear()
        for tenant, servers in incoming.tenants.items():
            for name, entries in servers.items():
                target = doc.server_for_update(tenant, name)
                if entries.protocol is not None:
                    target.protocol = entries.protocol
                    taken += 1
                for kind in KINDS:
                    for key, entry in entries.kinds[kind].items():
                        target.kinds[kind][key] = entry
                        taken += 1

    update_document(file, change)
    return taken


def _protocol_fields(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: record.get(k) for k in PROTOCOL_FIELDS}


def _epoch_iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")
