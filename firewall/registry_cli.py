"""``mcpfw registry``: see what servers offer, what changed, and approve or reject it."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import unicodedata
from pathlib import Path
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from .config import Config, load_config
from .registry import force_mode, registry_modes, registry_paths
from .registry.definitions import DEFAULT_TENANT, KINDS, SPECS
from .registry.document import load_document, render_document
from .registry.files import RegistryFileError, atomic_write, is_json
from .registry.review import (
    REMOVED,
    ProtocolRow,
    ReviewError,
    Row,
    approve,
    approve_protocol,
    change_details,
    effective_document,
    import_document,
    protocol_rows,
    reject,
    rows,
)
from .registry.state import StateStore
from .registry.store import RegistryStore
from .registry.textdiff import pretty_json
from .registry.view import RegistryView

EXIT_OK, EXIT_CHANGES, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mcpfw registry`` and its actions to the command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, help="YAML configuration file (its registry section)")
    common.add_argument("--registry", type=Path, default=None, metavar="FILE", help="registry file (overrides config)")
    common.add_argument("--tenant", default=DEFAULT_TENANT, help="tenant (default: %(default)s)")
    common.add_argument("--registry-mode", choices=["strict", "tofu", "off"], default=None,
                        help="judge every server in this mode, as a firewall run with it does (overrides config)")

    p = sub.add_parser("registry", help="the tool registry: pinned definitions, drift, approvals")
    actions = p.add_subparsers(metavar="ACTION")
    kind = {"choices": list(KINDS), "default": "tools", "help": "what NAME is (default: tools)"}

    a = actions.add_parser("list", parents=[common], help="every definition the registry knows, with its status")
    a.add_argument("server", nargs="?", default=None)
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=_runner(_list))

    a = actions.add_parser("diff", parents=[common], help="what changed and waits for review (exit 1 if anything does)")
    a.add_argument("server", nargs="?", default=None)
    a.add_argument("name", nargs="?", default=None)
    a.add_argument("--kind", **kind)
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=_runner(_diff))

    a = actions.add_parser("approve", parents=[common], help="approve what a server now offers; writes the registry file")
    a.add_argument("server")
    a.add_argument("names", nargs="*", metavar="NAME", help="tool (or --kind) names")
    a.add_argument("--kind", **kind)
    a.add_argument("--all", action="store_true", help="every pending change of the server (all kinds, and the protocol)")
    a.add_argument("--protocol", action="store_true", help="the server's protocol era, version and capabilities")
    a.add_argument("--by", default=None, help="approver recorded in the file (default: the user name)")
    a.add_argument("--force", action="store_true", help="approve even definitions the poisoning detector flags")
    a.set_defaults(handler=_runner(_approve))

    a = actions.add_parser("reject", parents=[common], help="refuse the definition a server now offers for NAME")
    a.add_argument("server")
    a.add_argument("name")
    a.add_argument("--kind", **kind)
    a.set_defaults(handler=_runner(_reject))

    a = actions.add_parser("export", parents=[common], help="the registry file plus what tofu pinned, as a registry file")
    a.add_argument("--server", default=None)
    a.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")
    a.add_argument("--format", choices=["yaml", "json"], default=None, help="default: from -o's extension, else yaml")
    a.set_defaults(handler=_runner(_export))

    a = actions.add_parser("import", parents=[common], help="merge a registry file into this one (its entries win)")
    a.add_argument("file", type=Path)
    a.add_argument("--replace", action="store_true", help="replace the whole registry instead of merging")
    a.set_defaults(handler=_runner(_import))

    p.set_defaults(handler=lambda args: (p.print_help(), EXIT_USAGE)[1])


# -- plumbing -------------------------------------------------------------------------------


class _Context:
    """The registry files and modes an action works with, from the configuration and flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        config: Config = load_config(args.config)
        config = serving_overrides(config, args.registry, args.registry_mode)
        self.file, state_file = registry_paths(config)
        self.state = StateStore(state_file)
        self.store = RegistryStore(self.file, state_file)
        self.modes = registry_modes(config)
        self.tenant: str = args.tenant

    @property
    def view(self) -> RegistryView:
        return self.store.view()


# Characters a terminal acts on or does not draw: C0 and C1 controls, DEL, format
# characters (bidi, zero-width, tags), line and paragraph separators, variation selectors.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_CANDIDATE = re.compile(r"[^\n\x20-\x7e]")
_SHORT = {"\t": "\\t", "\r": "\\r"}


def visible(text: str) -> str:
    """``text`` with every control or invisible character written as an escape (``\\x1b``,
    ``\\u202e``); newlines are kept."""
    return _CANDIDATE.sub(_escape_char, text)


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    if c in _SHORT:
        return _SHORT[c]
    code = ord(c)
    if unicodedata.category(c) not in _INVISIBLE_CATEGORIES and not (
        0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF
    ):
        return c
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class _Visible:
    """Standard output for people: what a server wrote cannot move the cursor, erase or
    hide lines, or reorder text on the reviewer's terminal."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        return self.raw.write(visible(text))


def _runner(action: Callable[[_Context, argparse.Namespace, TextIO], int]) -> Callable[[argparse.Namespace], int]:
    """The handler for an action: files and errors taken care of once."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(_Context(args), args, _Visible(sys.stdout))  # type: ignore[arg-type]
        except (RegistryFileError, ReviewError) as exc:
            print(f"mcpfw registry: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _short(digest: str | None) -> str:
    return digest[:15] if digest else "-"


def _json(value: Any, out: TextIO) -> None:
    # The same strings, with what orjson leaves raw (C1, bidi, separators) as \\u escapes.
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    out.write(_CANDIDATE.sub(_json_escape, text) + "\n")


def _json_escape(m: re.Match[str]) -> str:
    c = m.group()
    if visible(c) == c:
        return c
    code = ord(c)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


# -- list -----------------------------------------------------------------------------------



def _list(ctx: _Context, args: argparse.Namespace, out: TextIO) -> int:
    view = ctx.view
    found = rows(view, ctx.modes, tenant=ctx.tenant, server=args.server)
    protocols = protocol_rows(view, ctx.modes, tenant=ctx.tenant, server=args.server)
    if args.json:
        _json({"entries": [r.as_dict() for r in found], "protocols": [p.as_dict() for p in protocols]}, out)
        return EXIT_OK
    servers = sorted({(r.tenant, r.server) for r in found} | {(p.tenant, p.server) for p in protocols})
    width = max([34, *(len(SPECS[r.kind].label) + len(r.name) + 2 for r in found)])
    if not servers:
        out.write(f"the registry is empty ({ctx.file})\n")
    for tenant, server in servers:
        out.write(f"{tenant}/{server} (mode {ctx.modes.of(server)})\n")
        for p in protocols:
            if (p.tenant, p.server) == (tenant, server):
                observed = p.observed or p.reference or {}
                out.write(f"  {'protocol':{width}} {p.status:10} {observed.get('version')} (era {observed.get('era')})\n")
        for r in found:
            if (r.tenant, r.server) == (tenant, server):
                label = f"{SPECS[r.kind].label} {r.name}"
                if r.reference is None or r.observed in (None, r.reference):
                    digests = _short(r.reference or r.observed)
                else:
                    digests = f"{_short(r.reference)} -> {_short(r.observed)}"
                note = f"  shadows {', '.join(r.shadows)}" if r.shadows else ""
                out.write(f"  {label:{width}} {r.status:10} {digests}{note}\n")
    return EXIT_OK


# -- diff -----------------------------------------------------------------------------------



def _pending(ctx: _Context, server: str | None, name: str | None = None, kind: str | None = None) -> tuple[list[Row], list[ProtocolRow]]:
    found = [
        r for r in rows(ctx.view, ctx.modes, tenant=ctx.tenant, server=server)
        if r.pending and (name is None or (r.name == name and r.kind == kind))
    ]
    protocols = [] if name else [p for p in protocol_rows(ctx.view, ctx.modes, tenant=ctx.tenant, server=server) if p.pending]
    return found, protocols


def _diff(ctx: _Context, args: argparse.Namespace, out: TextIO) -> int:
    if args.server and not rows(ctx.view, ctx.modes, tenant=ctx.tenant, server=args.server) \
            and not protocol_rows(ctx.view, ctx.modes, tenant=ctx.tenant, server=args.server):
        known = sorted({r.server for r in rows(ctx.view, ctx.modes, tenant=ctx.tenant, server=None)})
        print(f"mcpfw registry diff: no server {args.server!r} in {ctx.file} (known: {', '.join(known) or 'none'}); "
              "a firewall run with --registry FILE keeps its registry there", file=sys.stderr)
        return 2
    found, protocols = _pending(ctx, args.server, args.name, args.kind)
    scanner = _poisoning_scanner()
    if args.json:
        changes = []
        for r in found:
            details = change_details(ctx.view, r)
            changes.append({**r.as_dict(), **details, "poisoning": _poisoning(scanner, details.get("observed"))})
        _json({"changes": changes, "protocols": [p.as_dict() for p in protocols]}, out)
    else:
        for p in protocols:
            _print_protocol(p, out)
        for r in found:
            _print_change(ctx, r, scanner, out)
        if not found and not protocols:
            out.write(f"no pending changes (registry {ctx.file})\n")
    return EXIT_CHANGES if found or protocols else EXIT_OK


def _print_protocol(p: ProtocolRow, out: TextIO) -> None:
    out.write(f"{p.tenant}/{p.server}: protocol {p.status}" + (f" ({', '.join(p.fields)})" if p.fields else "") + "\n")
    for side, record in (("pinned", p.reference), ("observed", p.observed)):
        if record is not None:
            caps = ", ".join(sorted(record.get("capabilities") or {})) or "none"
            out.write(f"  {side:9}era {record.get('era')}, version {record.get('version')}, capabilities: {caps}\n")
    out.write(f"  approve: mcpfw registry approve {p.server} --protocol\n\n")


def _print_change(ctx: _Context, r: Row, scanner: Any, out: TextIO) -> None:
    label = SPECS[r.kind].label
    details = change_details(ctx.view, r)
    fields = details.get("fields")
    head = f"{r.tenant}/{r.server}: {label} '{r.name}' {r.status}"
    out.write(head + (f" ({', '.join(fields)})" if fields else "") + "\n")
    if r.reference:
        out.write(f"  pinned    {r.reference} ({'approved in the registry file' if r.source == 'file' else 'first seen, tofu'})\n")
    if r.observed:
        out.write(f"  observed  {r.observed}\n")
    if r.shadows:
        out.write(f"  shadows   the {label} of the same name offered by {', '.join(r.shadows)}\n")
    if r.status == REMOVED:
        out.write("  no longer offered by the server\n")
    elif "diff" in details:
        for name, text in details["diff"].items():
            out.write(f"  {name}:\n")
            # split("\n"), not splitlines(): other separators are shown escaped, not obeyed.
            out.write("".join(f"    {line}\n" for line in text.split("\n")))
    elif details.get("observed") is not None:
        out.write("  definition:\n" + "".join(f"    {line}\n" for line in pretty_json(details["observed"]).split("\n")))
    hits = {(h["rule"], h["severity"], h["pointer"] or "/") for h in _poisoning(scanner, details.get("observed"))}
    for rule, severity, pointer in sorted(hits):
        out.write(f"  ! poisoning: {rule} ({severity}) at {pointer}\n")
    flag = " --kind " + r.kind if r.kind != "tools" else ""
    hint = f"  approve: mcpfw registry approve {r.server} {r.name}{flag}"
    if r.observed:
        hint += f"    reject: mcpfw registry reject {r.server} {r.name}{flag}"
    out.write(hint + "\n\n")


def _poisoning_scanner() -> Any:
    try:
        from detectors.poisoning import PoisoningScanner

        return PoisoningScanner()
    except Exception:  # the rules file is optional for reviewing; never block a diff on it
        return None


def _poisoning(scanner: Any, definition: dict[str, Any] | None) -> list[dict[str, Any]]:
    if scanner is None or definition is None:
        return []
    return [hit.as_dict() for hit in scanner.scan_item(definition).hits]


# -- approve / reject -----------------------------------------------------------------------



def _approve(ctx: _Context, args: argparse.Namespace, out: TextIO) -> int:
    if not args.names and not args.all and not args.protocol:
        print("mcpfw registry approve: name what to approve (NAME..., --all or --protocol)", file=sys.stderr)
        return EXIT_USAGE
    by = args.by or getpass.getuser()
    view = ctx.view
    everything = args.all and not args.names
    plan: list[tuple[str, list[str] | None]] = (
        [(kind, None) for kind in KINDS] if everything else [(args.kind, args.names)] if args.names else []
    )
    if not args.force:
        scanner = _poisoning_scanner()
        flagged = [
            r.name for kind, names in plan for r in rows(view, ctx.modes, tenant=ctx.tenant, server=args.server)
            if r.kind == kind and (r.pending if names is None else r.name in names)
            and any(h["severity"] == "high" for h in _poisoning(scanner, view.definition(r.observed)))
        ]
        if flagged:
            print(
                f"mcpfw registry: not approved: the poisoning detector flags {', '.join(flagged)} "
                "(see `mcpfw registry diff`); use --force to approve anyway", file=sys.stderr,
            )
            return EXIT_REFUSED
    done: list[Row] = []
    for kind, names in plan:
        done += approve(ctx.file, ctx.state, view, ctx.modes, tenant=ctx.tenant, server=args.server, kind=kind, names=names, by=by)
    for r in done:
        verb = "removed from" if r.status == REMOVED else "approved in"
        out.write(f"{SPECS[r.kind].label} {args.server}/{r.name}: {verb} {ctx.file}\n")
    protocol = None
    if args.protocol or (everything and any(p.pending for p in protocol_rows(view, ctx.modes, tenant=ctx.tenant, server=args.server))):
        protocol = approve_protocol(ctx.file, view, ctx.modes, tenant=ctx.tenant, server=args.server, by=by)
        era = protocol.observed.get("era") if protocol.observed else None
        out.write(f"protocol {args.server}: era {era} approved in {ctx.file}\n")
    if not done and protocol is None:
        out.write(f"nothing to approve for {args.server}\n")
    return EXIT_OK



def _reject(ctx: _Context, args: argparse.Namespace, out: TextIO) -> int:
    row = reject(ctx.file, ctx.view, ctx.modes, tenant=ctx.tenant, server=args.server, kind=args.kind, name=args.name)
    out.write(f"{SPECS[args.kind].label} {args.server}/{args.name}: definition {_short(row.observed)} rejected in {ctx.file}\n")
    return EXIT_OK


# -- export / import ------------------------------------------------------------------------



def _export(ctx: _Context, args: argparse.Namespace, out: TextIO) -> int:
    doc = effective_document(ctx.view, server=args.server)
    as_json = args.format == "json" if args.format else bool(args.output and is_json(args.output))
    data = render_document(doc, as_json=as_json)
    if args.output is None:
        getattr(out, "raw", out).write(data.decode("utf-8"))  # a registry file, kept exact
    else:
        atomic_write(args.output, data)
    return EXIT_OK



def _import(ctx: _Context, args: argparse.Namespace, out: TextIO) -> int:
    if not args.file.exists():
        raise RegistryFileError(f"{args.file}: no such file")
    incoming = load_document(args.file)
    taken = import_document(ctx.file, incoming, replace=args.replace)
    out.write(f"{taken} entries from {args.file} {'replace' if args.replace else 'merged into'} {ctx.file}\n")
    return EXIT_OK


def serving_overrides(config: Config, registry: Path | None, mode: str | None) -> Config:
    """Apply the serving commands' ``--registry`` and ``--registry-mode`` flags."""
    if registry is not None:
        config = config.with_overrides(registry={"file": registry})
    if mode is not None:
        config = force_mode(config, mode)
    return config
