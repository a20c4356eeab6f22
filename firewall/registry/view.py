"""One consistent, indexed reading of the registry file and the learned state.

Everything the hot path asks (the status of a definition, who else offers a name) is a
dictionary lookup here; the index is rebuilt only when one of the two files changes.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.normalize import fold_lookalikes

from .definitions import KINDS, SPECS
from .document import RegistryDocument
from .state import State

TOFU = "tofu"
STRICT = "strict"
OFF = "off"
MODES = (STRICT, TOFU, OFF)
# Statuses of a definition against the registry.
APPROVED = "approved"  # equals the definition approved in the registry file
PINNED = "pinned"  # equals the definition first seen (tofu)
NEW = "new"  # nothing approved or pinned under this name
CHANGED = "changed"  # differs from what was approved or pinned: drift
REJECTED = "rejected"  # a definition the registry file refuses
UNLISTED = "unlisted"  # used but never listed, on a server whose list is known
UNVERIFIED = "unverified"  # used before the server's first list (tofu): nothing to compare with
TRUSTED = frozenset({APPROVED, PINNED})

ServerKey = tuple[str, str, str]  # tenant, server, kind
_MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Modes:
    """The registry mode of each server: its own setting, else the default."""

    default: str = TOFU
    servers: Mapping[str, str] = field(default_factory=dict)

    def of(self, server: str) -> str:
        return self.servers.get(server, self.default)

    def any_active(self) -> bool:
        return self.default != OFF or any(mode != OFF for mode in self.servers.values())


@dataclass(slots=True)
class Known:
    """What the registry holds about one name of one server."""

    approved: str | None = None
    approved_since: float = 0.0
    rejected: frozenset[str] = frozenset()
    pinned: str | None = None
    pinned_since: float = 0.0
    observed: str | None = None
    first_seen: float = 0.0


class RegistryView:
    """An immutable index over one version of the registry file and of the state."""

    def __init__(self, document: RegistryDocument, state: State, generation: int = 0) -> None:
        self.document = document
        self.state = state
        self.generation = generation
        self._known: dict[ServerKey, dict[str, Known]] = {}
        self._listed: set[ServerKey] = set()  # kinds with a first use (file entries or a pin table)
        self._offers: dict[tuple[str, str, str], dict[str, float]] = {}
        self._definitions: dict[str, dict[str, Any]] = {}
        self._protocol: dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]] = {}
        self._announced: dict[ServerKey, tuple[float, frozenset[str]]] = {}  # change announcements not yet listed
        # Verdicts computed against this view; valid as long as the view is (it never changes).
        self.memo: dict[Any, Any] = {}
        self._index_document()
        self._index_state()
        self._index_offers()

    # -- building ------------------------------------------------------------------------

    def _index_document(self) -> None:
        for tenant, servers in self.document.tenants.items():
            for server, entries in servers.items():
                for kind in KINDS:
                    table = entries.kinds[kind]
                    if any(e.definition is not None for e in table.values()):
                        self._listed.add((tenant, server, kind))
                    for key, entry in table.items():
                        known = self._slot(tenant, server, kind, key)
                        known.approved = entry.digest
                        known.approved_since = entry.since
                        known.rejected = frozenset(entry.rejected)
                        if entry.definition is not None and entry.digest:
                            self._definitions[entry.digest] = entry.definition
                if entries.protocol is not None:
                    self._protocol[(tenant, server)] = ({**entries.protocol.record, "digest": entries.protocol.digest}, None, None)

    def _index_state(self) -> None:
        for tenant, body in self.state.get("tenants", {}).items():
            for server, data in body.get("servers", {}).items():
                self._definitions.update(data.get("definitions", {}))
                for kind, table in data.get("pins", {}).items():
                    self._listed.add((tenant, server, kind))
                    for name, pin in table.items():
                        known = self._slot(tenant, server, kind, name)
                        known.pinned, known.pinned_since = pin["digest"], pin["at"]
                for kind, table in data.get("observed", {}).items():
                    for name, seen in table.items():
                        known = self._slot(tenant, server, kind, name)
                        known.observed, known.first_seen = seen["digest"], seen.get("first_seen", seen["at"])
                for kind, announcement in data.get("announced", {}).items():
                    self._announced[(tenant, server, kind)] = (announcement["at"], frozenset(announcement.get("listed", ())))
                protocol = data.get("protocol")
                if protocol:
                    approved = self._protocol.get((tenant, server), (None, None, None))[0]
                    self._protocol[(tenant, server)] = (approved, protocol.get("pin"), protocol.get("observed"))

    def _index_offers(self) -> None:
        """Who offers each name, and since when: approved or pinned definitions only."""
        for (tenant, server, kind), table in self._known.items():
            if not SPECS[kind].shadowable:
                continue
            for name, known in table.items():
                since = _offered_since(known, TOFU)
                if since is not None:
                    self._offers.setdefault((tenant, kind, lookalike_key(name)), {})[server] = since

    def _slot(self, tenant: str, server: str, kind: str, name: str) -> Known:
        table = self._known.setdefault((tenant, server, kind), {})
        known = table.get(name)
        if known is None:
            known = table[name] = Known()
        return known

    def remember(self, key: Any, value: Any) -> None:
        if len(self.memo) >= _MEMO_SIZE:
            self.memo.clear()
        self.memo[key] = value

    # -- questions -----------------------------------------------------------------------

    def known(self, tenant: str, server: str, kind: str, name: str) -> Known | None:
        return self._known.get((tenant, server, kind), {}).get(name)

    def names(self, tenant: str, server: str, kind: str) -> dict[str, Known]:
        return self._known.get((tenant, server, kind), {})

    def servers(self) -> list[tuple[str, str]]:
        """Every (tenant, server) the file or the state mentions, sorted."""
        found = {(t, s) for (t, s, _k) in self._known} | set(self._protocol)
        return sorted(found)

    def first_use(self, tenant: str, server: str, kind: str) -> bool:
        """True until the server's list of this kind was pinned or approved."""
        return (tenant, server, kind) not in self._listed

    def announcement(self, tenant: str, server: str, kind: str) -> tuple[float, frozenset[str]] | None:
        """(when, names listed since) of a change the server announced and no complete list showed yet."""
        return self._announced.get((tenant, server, kind))

    def announced(self, tenant: str, server: str, kind: str, name: str) -> bool:
        """Whether the server announced a change to this kind and ``name`` was not listed since."""
        found = self._announced.get((tenant, server, kind))
        return found is not None and name not in found[1]

    def definition(self, digest: str | None) -> dict[str, Any] | None:
        return self._definitions.get(digest) if digest else None

    def classify(self, tenant: str, server: str, kind: str, name: str, digest: str, mode: str) -> tuple[str, str | None]:
        """(status, the digest it was compared with) of a definition the server offers."""
        known = self.known(tenant, server, kind, name)
        if known is None:
            return NEW, None
        reference = known.approved or (known.pinned if mode == TOFU else None)
        if digest in known.rejected:
            return REJECTED, reference
        if reference is None:
            return NEW, None
        if digest == reference:
            return (APPROVED if known.approved else PINNED), reference
        return CHANGED, reference

    def classify_unseen(self, tenant: str, server: str, kind: str, name: str, mode: str) -> tuple[str, str | None]:
        """Status of a name used without having been listed (no definition to compare)."""
        known = self.known(tenant, server, kind, name)
        if known is not None and known.approved:
            return APPROVED, known.approved
        if known is not None and known.pinned and mode == TOFU:
            return PINNED, known.pinned
        if mode == TOFU and self.first_use(tenant, server, kind):
            return UNVERIFIED, None
        return UNLISTED, None

    def shadows(self, tenant: str, server: str, kind: str, name: str, mode: str) -> list[str]:
        """Other servers of the tenant that offered ``name``, or a name a model would read as
        the same (:func:`lookalike_key`), before this server did.

        Servers that offered it at the same instant shadow each other: none was first."""
        offers = self._offers.get((tenant, kind, lookalike_key(name)))
        if not offers or (len(offers) == 1 and server in offers):
            return []
        known = self.known(tenant, server, kind, name)
        own = _offered_since(known, mode) if known is not None else None
        limit = math.inf if own is None else own
        return sorted(other for other, since in offers.items() if other != server and since <= limit)

    def protocol(self, tenant: str, server: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        """(approved, pinned, last observed) protocol records of a server."""
        return self._protocol.get((tenant, server), (None, None, None))


def lookalike_key(name: str) -> str:
    """``name`` as a model would tell it apart: compatibility forms folded (NFKC), case and
    surrounding space ignored, invisible format characters dropped and common Cyrillic and
    Greek lookalikes of Latin letters read as those letters. Two servers offering names with
    the same key shadow each other as if the names were equal."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name).casefold())
    # Invisible format characters and combining marks (a dot over an i) dropped.
    visible = "".join(c for c in folded if unicodedata.category(c) not in ("Cf", "Mn", "Me"))
    return fold_lookalikes(visible).strip()


def _offered_since(known: Known, mode: str) -> float | None:
    """Since when a server offers a name it is trusted with: first seen, else approved."""
    if not known.approved and not (known.pinned and mode == TOFU):
        return None
    # Ordering uses when the server first showed the name, not when someone approved it:
    # approving a newcomer must not turn the original into the shadow.
    seen = [t for t in (known.pinned_since if known.pinned else 0.0, known.first_seen if known.observed else 0.0) if t]
    return min(seen) if seen else known.approved_since
