"""``input.registry``: how what a server offers compares with the registry.

* list responses (tools/list, prompts/list, resources/templates/list): every definition
  is digested, recorded in the state (pinned on first use in tofu mode) and classified;
  the input lists those that are not approved or pinned, or whose name another server of
  the tenant offered first, with the changed fields and a readable diff;
* tools/call and prompts/get: the status of the definition being used, whether this
  session's client saw it in its (filtered) list, and whether the server announced a
  change to that kind of definition that no list has shown since;
* resources/read: the same for every known resource template the URI matches (RFC 6570,
  see :mod:`.uritemplate`); URIs matching none are left alone;
* initialize and server/discover responses: the protocol era, version and capabilities
  against the pinned ones;
* list_changed notifications (also as delivered on 2026-07-28 subscriptions/listen
  streams): recorded in the state (the kind's definitions are unverified until a list
  answered after it shows them), and which definitions of the server are pending review.

Only those messages cost more than a few attribute lookups; a tools/call check is a
handful of dictionary lookups, a list response a digest per definition (cached per list).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..jsonrpc import Kind
from ..pipeline import C2S, S2C, MessageContext
from ..policy.decision import Decision
from .definitions import (
    BY_CHANGE_NOTIFICATION,
    BY_LIST_METHOD,
    BY_USE_METHOD,
    DEFAULT_TENANT,
    PROTOCOL_FIELDS,
    SPECS,
    KindSpec,
    canonical_definition,
    digest_of,
    protocol_record,
)
from .store import (
    ChangeObservation,
    ListObservation,
    ProtocolObservation,
    RegistryStore,
)
from .textdiff import changed_fields, field_diffs
from .uritemplate import compile_template
from .view import (
    APPROVED,
    CHANGED,
    NEW,
    OFF,
    PINNED,
    TOFU,
    TRUSTED,
    UNVERIFIED,
    Modes,
    RegistryView,
)

SUBSCRIPTION_META = "io.modelcontextprotocol/subscriptionId"
_PROTOCOL_METHODS = frozenset({"initialize", "server/discover"})
_TEMPLATES = SPECS["resource_templates"]
# Statuses the default rules let a client use: a read goes by the template it can use.
_USABLE = TRUSTED | {UNVERIFIED}
_DIFF_LIMIT = 2000  # characters per field in the policy input; `mcpfw registry diff` shows all
_CACHE_SIZE = 256

Entry = tuple[int, str, str, dict[str, Any]]  # index in the list, name, digest, definition


@dataclass(slots=True)
class _Seen:
    """Per session: the definitions its client was shown, and those taken out of its lists."""

    shown: dict[tuple[str, str], str] = field(default_factory=dict)
    hidden: dict[tuple[str, str], str] = field(default_factory=dict)


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self._size:
            self.popitem(last=False)


class RegistryEnricher:
    """Fills ``input.registry`` (see docs/contracts.md) and records what servers offer."""

    name = "registry"

    def __init__(self, store: RegistryStore, modes: Modes, *, recheck_seconds: float = 0.5) -> None:
        self._store = store
        self._modes = modes
        self._recheck = recheck_seconds
        self._sessions: dict[int, _Seen] = {}  # by id(session), dropped when the session is collected
        self._lists = _Lru(_CACHE_SIZE)  # hash of a list's raw items -> its entries
        self._changes = _Lru(_CACHE_SIZE)  # (reference, digest) -> (fields, diffs)
        self._tofu_cursors = _Lru(_CACHE_SIZE)  # pages that continue a first-use listing
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def store(self) -> RegistryStore:
        return self._store

    @property
    def modes(self) -> Modes:
        return self._modes

    # -- entry points --------------------------------------------------------------------

    def enrich(self, ctx: MessageContext) -> None:
        kind = ctx.message.kind
        if kind is Kind.REQUEST:
            if ctx.direction != C2S:
                return
            spec = BY_USE_METHOD.get(ctx.method or "")
            if spec is not None:
                mode = self._modes.of(ctx.session.server.name)
                if mode != OFF:
                    self._on_use(ctx, spec, mode)
            elif ctx.method == "resources/read":
                mode = self._modes.of(ctx.session.server.name)
                if mode != OFF:
                    self._on_read(ctx, mode)
        elif kind is Kind.RESPONSE:
            if ctx.direction != S2C:
                return
            spec = BY_LIST_METHOD.get(ctx.method or "")
            if spec is None and ctx.method not in _PROTOCOL_METHODS:
                return
            mode = self._modes.of(ctx.session.server.name)
            if mode == OFF:
                return
            if spec is not None:
                self._on_list(ctx, spec, mode)
            else:
                self._on_protocol(ctx, mode)
        elif kind is Kind.NOTIFICATION and ctx.direction == S2C:
            spec = BY_CHANGE_NOTIFICATION.get(ctx.method or "")
            if spec is not None:
                mode = self._modes.of(ctx.session.server.name)
                if mode != OFF:
                    self._on_change(ctx, spec, mode)

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        """Remember which definitions of a list this session's client actually received."""
        listing = getattr(self._local, "listing", None)
        if listing is None or listing[0] is not ctx:
            return
        self._local.listing = None
        _, spec, entries = listing
        removed = set(decision.remove) if forwarded is not None else None
        seen = self._sessions.get(id(ctx.session))
        if seen is None:
            seen = self._sessions[id(ctx.session)] = _Seen()
            weakref.finalize(ctx.session, self._sessions.pop, id(ctx.session), None)
        for index, name, digest, _ in entries:
            key = (spec.kind, name)
            if removed is None or f"/result/{spec.result_key}/{index}" in removed:
                seen.hidden[key] = digest
                seen.shown.pop(key, None)
            else:
                seen.shown[key] = digest
                seen.hidden.pop(key, None)

    # -- list responses ------------------------------------------------------------------

    def _on_list(self, ctx: MessageContext, spec: KindSpec, mode: str) -> None:
        result = ctx.message.body.get("result")
        items = result.get(spec.result_key) if isinstance(result, dict) else None
        if not isinstance(items, list):
            return
        assert isinstance(result, dict)
        tenant, server, kind = _tenant(ctx), ctx.session.server.name, spec.kind
        request = ctx.pending.params if ctx.pending is not None else None
        cursor = request.get("cursor") if isinstance(request, dict) else None
        next_cursor = result.get("nextCursor")
        complete = cursor is None and not next_cursor
        list_key, entries = self._entries(spec, items)
        # A cursor continues the first-use listing once: the server chose it, so a later
        # listing that presents it again must not have its pages pinned unseen.
        with self._lock:
            continuation = cursor is not None and self._tofu_cursors.pop((tenant, server, kind, cursor), None) is not None
        view = self._store.view()
        first_use = mode == TOFU and view.first_use(tenant, server, kind)
        # A list seen before, under the same registry files, has nothing new to record and
        # the same verdict: the common case costs one hash of the list.
        memo_key = ("list", list_key, tenant, server, kind, mode, complete)
        verdict = None if first_use or continuation or list_key is None else view.memo.get(memo_key)
        if verdict is None:
            observation = ListObservation(
                tenant, server, kind, [(n, d, df) for _, n, d, df in entries],
                complete=complete, may_pin=mode == TOFU, continuation=continuation,
                unpinnable=_severely_poisoned(ctx) if first_use or continuation else frozenset(),
            )
            view = self._store.record(observation)
            verdict = self._judge_list(view, spec, tenant, server, mode, entries, complete)
            if list_key is not None:
                view.remember(memo_key, verdict)
        if (first_use or continuation) and isinstance(next_cursor, str):
            with self._lock:
                self._tofu_cursors.put((tenant, server, kind, next_cursor), True)
        problems, removed = verdict
        poisoned = _poisoned_pointers(ctx) if problems else {}
        if poisoned:
            problems = [{**i, "poisoning": poisoned[i["pointer"]]} if i["pointer"] in poisoned else i for i in problems]
        ctx.registry = {
            "event": "list", "tenant": tenant, "server": server, "mode": mode, "kind": kind,
            "complete": complete, "first_use": first_use or continuation,
            "checked": len(entries), "items": problems, "removed": removed,
        }
        self._local.listing = (ctx, spec, entries)

    def _judge_list(
        self, view: RegistryView, spec: KindSpec, tenant: str, server: str, mode: str, entries: list[Entry], complete: bool,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(items needing attention, approved or pinned names missing from a complete list)."""
        kind = spec.kind
        problems = []
        for index, name, digest, definition in entries:
            status, reference = view.classify(tenant, server, kind, name, digest, mode)
            shadows = view.shadows(tenant, server, kind, name, mode) if spec.shadowable else []
            if status in TRUSTED and not shadows:
                continue
            item: dict[str, Any] = {
                "name": name, "pointer": f"/result/{spec.result_key}/{index}", "status": status, "digest": digest,
                "pinned_digest": reference, "fields": [], "shadows": shadows,
            }
            if status == CHANGED:
                item["fields"], item["diff"] = self._diff(view, reference, digest, definition)
            problems.append(item)
        removed = []
        if complete:
            listed = {name for _, name, _, _ in entries}
            for name, known in sorted(view.names(tenant, server, kind).items()):
                reference = known.approved or (known.pinned if mode == TOFU else None)
                if reference and name not in listed:
                    removed.append({"name": name, "status": "removed", "pinned_digest": reference})
        return problems, removed

    def _entries(self, spec: KindSpec, items: list[Any]) -> tuple[bytes | None, list[Entry]]:
        """A hash of the raw list and (index, name, digest, canonical definition) of each usable item."""
        try:
            key: bytes | None = hashlib.blake2b(orjson.dumps(items), digest_size=16).digest()
        except TypeError:  # integers beyond 64 bits: compute without the cache
            key = None
        if key is not None:
            cached = self._lists.get((spec.kind, key))
            if cached is not None:
                return key, cached
        entries: list[Entry] = []
        for index, item in enumerate(items):
            definition = canonical_definition(spec, item)
            if definition is not None:
                entries.append((index, definition[spec.key_field], digest_of(definition), definition))
        if key is not None:
            with self._lock:
                self._lists.put((spec.kind, key), entries)
        return key, entries

    def _diff(
        self, view: RegistryView, reference: str | None, digest: str, definition: dict[str, Any] | None
    ) -> tuple[list[str], dict[str, str]]:
        cached = self._changes.get((reference, digest))
        if cached is not None:
            return cached
        old, new = view.definition(reference), definition or view.definition(digest)
        if old is None or new is None:
            return [], {}
        found = (changed_fields(old, new), field_diffs(old, new, limit=_DIFF_LIMIT))
        with self._lock:
            self._changes.put((reference, digest), found)
        return found

    # -- use of a definition -------------------------------------------------------------

    def _on_use(self, ctx: MessageContext, spec: KindSpec, mode: str) -> None:
        params = ctx.params
        name = params.get(spec.key_field) if isinstance(params, dict) else None
        if not isinstance(name, str):
            return
        tenant, server = _tenant(ctx), ctx.session.server.name
        view = self._store.view(max_age=self._recheck)
        target = self._target(view, ctx, spec, tenant, server, name, mode)
        ctx.registry = {"event": "use", "tenant": tenant, "server": server, "mode": mode, "kind": spec.kind, "target": target}

    def _target(
        self, view: RegistryView, ctx: MessageContext, spec: KindSpec, tenant: str, server: str, name: str, mode: str,
    ) -> dict[str, Any]:
        """The verdict on using ``name``, with ``visible`` from what this session was shown."""
        kind = spec.kind
        visible: bool | None = None
        digest: str | None = None
        seen = self._sessions.get(id(ctx.session))
        if seen is not None:
            digest = seen.shown.get((kind, name))
            if digest is not None:
                visible = True
            else:
                digest = seen.hidden.get((kind, name))
                visible = False if digest is not None else None
        memo_key = ("use", tenant, server, kind, name, digest, mode)
        judged = view.memo.get(memo_key)
        if judged is None:
            judged = self._judge_use(view, spec, tenant, server, name, digest, mode)
            view.remember(memo_key, judged)
        if visible and judged["digest"] != digest:
            visible = False  # the session holds a definition the server no longer offers
        return {**judged, "visible": visible}

    # -- resources/read ------------------------------------------------------------------

    def _on_read(self, ctx: MessageContext, mode: str) -> None:
        """A read whose URI matches known resource templates is a use of them.

        Every match is reported, the one the client can most likely use first (then the
        most specific); the policy allows the read if any of them may be used. A URI that
        matches no template (a static resource) gets no verdict.
        """
        params = ctx.params
        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str):
            return
        tenant, server = _tenant(ctx), ctx.session.server.name
        view = self._store.view(max_age=self._recheck)
        matched = [name for name, template in self._templates(view, tenant, server) if template.matches(uri)]
        if not matched:
            return
        targets = [self._target(view, ctx, _TEMPLATES, tenant, server, name, mode) for name in matched]
        targets.sort(key=lambda t: not (t["status"] in _USABLE and t["visible"] is not False and not t["announced"]))
        ctx.registry = {
            "event": "use", "tenant": tenant, "server": server, "mode": mode, "kind": _TEMPLATES.kind,
            "target": targets[0], "uri": uri, "matches": targets,
        }

    def _templates(self, view: RegistryView, tenant: str, server: str) -> list[tuple[str, Any]]:
        """Every resource template the registry knows for the server, most specific first."""
        memo_key = ("templates", tenant, server)
        found = view.memo.get(memo_key)
        if found is None:
            compiled = [(name, compile_template(name)) for name in view.names(tenant, server, _TEMPLATES.kind)]
            found = sorted(compiled, key=lambda pair: (-pair[1].literal_length, pair[0]))
            view.remember(memo_key, found)
        return found

    def _judge_use(
        self, view: RegistryView, spec: KindSpec, tenant: str, server: str, name: str, digest: str | None, mode: str,
    ) -> dict[str, Any]:
        """The target of a use, but for ``visible``: what this session was shown decides that."""
        kind = spec.kind
        known = view.known(tenant, server, kind, name)
        latest = known.observed if known is not None else None
        # What the session was shown, unless the server has shown another definition since
        # (to any session or firewall process sharing the state): that is what a call
        # reaches now, so it is the one judged (and _on_use marks the session's copy stale).
        if latest is not None:
            digest = latest
        if digest is not None:
            status, reference = view.classify(tenant, server, kind, name, digest, mode)
        else:
            status, reference = view.classify_unseen(tenant, server, kind, name, mode)
        # Before the first list (tofu) nothing is pinned that the change could make stale:
        # the use is unverified either way (server-everything announces its tools at start).
        announced = status != UNVERIFIED and view.announced(tenant, server, kind, name)
        return {
            "name": name, "status": status, "digest": digest, "pinned_digest": reference,
            "fields": self._diff(view, reference, digest, None)[0] if status == CHANGED and digest else [],
            "shadows": view.shadows(tenant, server, kind, name, mode) if spec.shadowable else [],
            "announced": announced,
        }

    # -- protocol ------------------------------------------------------------------------

    def _on_protocol(self, ctx: MessageContext, mode: str) -> None:
        session = ctx.session
        if ctx.pending is None or not session.protocol_version:
            return
        tenant, server = _tenant(ctx), session.server.name
        record = protocol_record(session.era, session.protocol_version, session.server_capabilities)
        record["digest"] = digest_of(record)
        view = self._store.record(ProtocolObservation(tenant, server, record, may_pin=mode == TOFU))
        approved, pinned, _ = view.protocol(tenant, server)
        reference = approved or (pinned if mode == TOFU else None)
        if reference is None:
            status, fields = NEW, []
        elif reference.get("digest") == record["digest"]:
            status, fields = (APPROVED if approved else PINNED), []
        else:
            status = CHANGED
            fields = [f for f in PROTOCOL_FIELDS if reference.get(f) != record[f]]
        ctx.registry = {
            "event": "protocol", "tenant": tenant, "server": server, "mode": mode,
            "protocol": {
                "status": status, "fields": fields,
                "pinned": _protocol_view(reference), "observed": _protocol_view(record),
            },
        }

    # -- change notifications ------------------------------------------------------------

    def _on_change(self, ctx: MessageContext, spec: KindSpec, mode: str) -> None:
        tenant, server = _tenant(ctx), ctx.session.server.name
        # Recorded before the notification goes on, so a list the client makes in answer
        # to it comes later; from now until such a list, uses of this kind are unverified.
        view = self._store.record(ChangeObservation(tenant, server, spec.kind))
        pending = []
        for name, known in sorted(view.names(tenant, server, spec.kind).items()):
            if known.observed:
                status, _ = view.classify(tenant, server, spec.kind, name, known.observed, mode)
                if status not in TRUSTED:
                    pending.append({"name": name, "status": status})
        params = ctx.params if isinstance(ctx.params, dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        ctx.registry = {
            "event": "list_changed", "tenant": tenant, "server": server, "mode": mode, "kind": spec.kind,
            "pending": pending, "subscription": meta.get(SUBSCRIPTION_META),
        }


def _tenant(ctx: MessageContext) -> str:
    tenant = (ctx.identity or {}).get("tenant")
    return tenant if isinstance(tenant, str) and tenant else DEFAULT_TENANT


def _protocol_view(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: record.get(k) for k in PROTOCOL_FIELDS}


def _severely_poisoned(ctx: MessageContext) -> frozenset[str]:
    """Names of the definitions in this list that the default policy calls poisoned: a
    high-severity poisoning hit, or medium hits in two categories. They are not pinned on
    first use: a pin would let a later session that never lists call them."""
    found = ctx.findings.get("poisoning")
    items = found.get("items") if isinstance(found, dict) else None
    if not isinstance(items, list):
        return frozenset()
    names = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        hits = [h for h in item.get("hits") or () if isinstance(h, dict)]
        medium = {h.get("category") for h in hits if h.get("severity") == "medium"}
        if any(h.get("severity") == "high" for h in hits) or len(medium) >= _MEDIUM_CATEGORIES:
            names.add(item["name"])
    return frozenset(names)


_MEDIUM_CATEGORIES = 2  # the default policy's detectors.poisoning.medium_categories


def _poisoned_pointers(ctx: MessageContext) -> dict[str, list[str]]:
    """Pointer -> rule ids, from the poisoning detector's findings on this list (if it ran)."""
    found = ctx.findings.get("poisoning")
    items = found.get("items") if isinstance(found, dict) else None
    out: dict[str, list[str]] = {}
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and isinstance(item.get("pointer"), str):
            rules = sorted({h.get("rule") for h in item.get("hits", ()) if isinstance(h, dict) and h.get("rule")})
            out[item["pointer"]] = rules
    return out


__all__ = ["RegistryEnricher"]
