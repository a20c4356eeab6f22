"""The registry file: the reviewed definitions each server of each tenant may offer.

Security teams keep it in git and change it through pull requests (``mcpfw registry
approve`` writes it too). Layout, in a stable order (tenants, servers and entries sorted
by name; one entry per tool)::

    version: 1
    tenants:
      default:
        servers:
          filesystem:
            protocol: {era, version, capabilities, digest, approved_at, approved_by}
            tools:
            - name: read_text_file
              digest: sha256:...          # of the canonical definition; computed when absent
              approved_at: '2026-...'
              approved_by: alice
              rejected: [sha256:...]      # definitions refused for this name
              definition: {name, title, description, inputSchema, ...}
            prompts: [...]
            resource_templates: [...]     # keyed by uriTemplate instead of name
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .definitions import KINDS, PROTOCOL_FIELDS, SPECS, digest_of
from .files import RegistryFileError, atomic_write, dump_document, exclusive, is_json, read_document

HEADER = (
    "# mcpfw tool registry: the definitions each MCP server may offer, pinned by digest.\n"
    "# Review changes with `mcpfw registry diff`; `mcpfw registry approve` updates this file.\n"
)


@dataclass(slots=True)
class Entry:
    """One approved (and/or rejected) definition, keyed by name (or uriTemplate)."""

    key: str
    definition: dict[str, Any] | None = None
    digest: str | None = None
    approved_at: str | None = None
    approved_by: str | None = None
    rejected: list[str] = field(default_factory=list)

    @property
    def since(self) -> float:
        """When it was approved (epoch seconds; 0 when unknown, e.g. written by hand)."""
        return iso_to_epoch(self.approved_at)


@dataclass(slots=True)
class ProtocolEntry:
    """The approved protocol era, version and capabilities of a server."""

    record: dict[str, Any]
    digest: str
    approved_at: str | None = None
    approved_by: str | None = None


@dataclass(slots=True)
class ServerEntries:
    kinds: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    protocol: ProtocolEntry | None = None

    def is_empty(self) -> bool:
        return self.protocol is None and not any(self.kinds.values())


@dataclass(slots=True)
class RegistryDocument:
    """Tenants -> servers -> entries."""

    tenants: dict[str, dict[str, ServerEntries]] = field(default_factory=dict)

    def server(self, tenant: str, server: str) -> ServerEntries | None:
        return self.tenants.get(tenant, {}).get(server)

    def server_for_update(self, tenant: str, server: str) -> ServerEntries:
        return self.tenants.setdefault(tenant, {}).setdefault(server, ServerEntries())

    def prune(self) -> None:
        """Drop servers and tenants left without entries."""
        for tenant in list(self.tenants):
            servers = self.tenants[tenant]
            for name in [n for n, s in servers.items() if s.is_empty()]:
                del servers[name]
            if not servers:
                del self.tenants[tenant]

    # -- (de)serialisation ---------------------------------------------------------------

    @classmethod
    def from_data(cls, data: Any, where: str) -> RegistryDocument:
        if data is None:
            return cls()
        if not isinstance(data, dict) or data.get("version") != 1:
            raise RegistryFileError(f"{where}: expected a mapping with version: 1")
        doc = cls()
        tenants = data.get("tenants") or {}
        if not isinstance(tenants, dict):
            raise RegistryFileError(f"{where}: tenants must be a mapping")
        for tenant, body in tenants.items():
            if body is not None and not isinstance(body, dict):
                raise RegistryFileError(f"{where}: tenants.{tenant} must be a mapping")
            servers = (body or {}).get("servers") or {}
            if not isinstance(servers, dict):
                raise RegistryFileError(f"{where}: tenants.{tenant}.servers must be a mapping")
            for server, raw in servers.items():
                doc.tenants.setdefault(str(tenant), {})[str(server)] = _server_from_data(
                    raw, f"{where}: tenants.{tenant}.servers.{server}"
                )
        return doc

    def to_data(self) -> dict[str, Any]:
        tenants: dict[str, Any] = {}
        for tenant in sorted(self.tenants):
            servers: dict[str, Any] = {}
            for name in sorted(self.tenants[tenant]):
                entries = self.tenants[tenant][name]
                out: dict[str, Any] = {}
                if entries.protocol is not None:
                    out["protocol"] = _protocol_to_data(entries.protocol)
                for kind in KINDS:
                    table = entries.kinds[kind]
                    if table:
                        out[kind] = [_entry_to_data(kind, table[key]) for key in sorted(table)]
                servers[name] = out
            tenants[tenant] = {"servers": servers}
        return {"version": 1, "tenants": tenants}


def _server_from_data(raw: Any, where: str) -> ServerEntries:
    if raw is None:
        return ServerEntries()
    if not isinstance(raw, dict):
        raise RegistryFileError(f"{where}: must be a mapping")
    unknown = set(raw) - {"protocol", *KINDS}
    if unknown:
        raise RegistryFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    entries = ServerEntries()
    if raw.get("protocol") is not None:
        entries.protocol = _protocol_from_data(raw["protocol"], f"{where}.protocol")
    for kind in KINDS:
        items = raw.get(kind) or []
        if not isinstance(items, list):
            raise RegistryFileError(f"{where}.{kind}: must be a list")
        for i, item in enumerate(items):
            entry = _entry_from_data(kind, item, f"{where}.{kind}[{i}]")
            if entry.key in entries.kinds[kind]:
                raise RegistryFileError(f"{where}.{kind}: {entry.key!r} appears twice")
            entries.kinds[kind][entry.key] = entry
    return entries


def _entry_from_data(kind: str, item: Any, where: str) -> Entry:
    spec = SPECS[kind]
    if not isinstance(item, dict):
        raise RegistryFileError(f"{where}: must be a mapping")
    unknown = set(item) - {spec.key_field, "digest", "approved_at", "approved_by", "rejected", "definition"}
    if unknown:
        raise RegistryFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    key = item.get(spec.key_field)
    if not isinstance(key, str) or not key:
        raise RegistryFileError(f"{where}: needs a {spec.key_field}")
    definition = item.get("definition")
    digest = item.get("digest")
    if definition is not None:
        if not isinstance(definition, dict) or definition.get(spec.key_field) != key:
            raise RegistryFileError(f"{where}: definition must be a mapping whose {spec.key_field} is {key!r}")
        computed = digest_of(definition)
        if digest is not None and digest != computed:
            raise RegistryFileError(
                f"{where}: digest {digest} does not match the definition ({computed}); "
                "remove the digest line to accept the edited definition"
            )
        digest = computed
    elif digest is not None:
        raise RegistryFileError(f"{where}: a digest needs its definition")
    rejected = item.get("rejected") or []
    if not isinstance(rejected, list) or not all(isinstance(d, str) and d.startswith("sha256:") for d in rejected):
        raise RegistryFileError(f"{where}: rejected must be a list of sha256: digests")
    return Entry(key, definition, digest, _opt_str(item.get("approved_at")), _opt_str(item.get("approved_by")), list(rejected))


def _entry_to_data(kind: str, entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {SPECS[kind].key_field: entry.key}
    if entry.definition is not None:
        out["digest"] = entry.digest
        if entry.approved_at:
            out["approved_at"] = entry.approved_at
        if entry.approved_by:
            out["approved_by"] = entry.approved_by
    if entry.rejected:
        out["rejected"] = sorted(set(entry.rejected))
    if entry.definition is not None:
        out["definition"] = ordered_definition(kind, entry.definition)
    return out


def ordered_definition(kind: str, definition: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields in the spec's reading order, nested keys sorted."""
    fields = SPECS[kind].fields
    ordered = {k: _sorted(definition[k]) for k in fields if k in definition}
    ordered.update({k: _sorted(v) for k, v in sorted(definition.items()) if k not in ordered})
    return ordered


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _protocol_from_data(raw: Any, where: str) -> ProtocolEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("era"), str):
        raise RegistryFileError(f"{where}: needs at least an era")
    record = {k: raw.get(k) for k in PROTOCOL_FIELDS}
    if record["capabilities"] is None:
        record["capabilities"] = {}
    if not isinstance(record["capabilities"], dict):
        raise RegistryFileError(f"{where}.capabilities: must be a mapping")
    digest = digest_of(record)
    if raw.get("digest") is not None and raw["digest"] != digest:
        raise RegistryFileError(f"{where}: digest does not match era, version and capabilities; remove it to accept the edit")
    return ProtocolEntry(record, digest, _opt_str(raw.get("approved_at")), _opt_str(raw.get("approved_by")))


def _protocol_to_data(entry: ProtocolEntry) -> dict[str, Any]:
    out: dict[str, Any] = {k: _sorted(entry.record[k]) for k in PROTOCOL_FIELDS}
    out["digest"] = entry.digest
    if entry.approved_at:
        out["approved_at"] = entry.approved_at
    if entry.approved_by:
        out["approved_by"] = entry.approved_by
    return out


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):  # YAML turns unquoted timestamps into datetimes
        return value.isoformat()
    return str(value)


def iso_to_epoch(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def load_document(path: Path) -> RegistryDocument:
    """The registry file at ``path``; an empty registry if it does not exist."""
    return RegistryDocument.from_data(read_document(path), str(path))


def render_document(doc: RegistryDocument, *, as_json: bool) -> bytes:
    return dump_document(doc.to_data(), as_json=as_json, header="" if as_json else HEADER)


def update_document(path: Path, change: Any) -> RegistryDocument:
    """Apply ``change(doc)`` to the file under the writers' lock and save it atomically."""
    with exclusive(path):
        doc = load_document(path)
        change(doc)
        doc.prune()
        atomic_write(path, render_document(doc, as_json=is_json(path)))
        return doc
