"""``mcpfw keys``: create, list and revoke API keys for programmatic MCP clients."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from .config import ConfigError, load_config

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class _UsageError(Exception):
    """A bad flag value: one line on stderr, exit 2."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mcpfw keys`` and its actions to the command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None, metavar="FILE", help="key database (overrides config)")
    common.add_argument("--config", type=Path, default=None, help="YAML configuration file (its auth.api_keys.store)")

    p = sub.add_parser("keys", help="API keys for programmatic MCP clients: create, list, revoke")
    actions = p.add_subparsers(metavar="ACTION")

    a = actions.add_parser("create", parents=[common], help="create a key; the key is printed once")
    a.add_argument("--tenant", required=True)
    a.add_argument("--name", required=True, help="unique within the tenant")
    a.add_argument("--scopes", action="append", default=[], metavar="A,B", help="comma-separated scopes")
    a.add_argument("--scope", action="append", dest="scopes", metavar="SCOPE", help="one scope (repeatable)")
    a.add_argument("--roles", action="append", default=[], metavar="A,B", help="comma-separated roles")
    a.add_argument("--role", action="append", dest="roles", metavar="ROLE", help="one role (repeatable)")
    a.add_argument("--subject", default=None, help="subject the key authenticates as (default: key:NAME)")
    a.add_argument("--expires", default=None, metavar="WHEN", help="30d, 12h, 90m, 2w, or a UTC time such as 2027-01-31T00:00Z")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=_runner(_create))

    a = actions.add_parser("list", parents=[common], help="every key and its status (never secrets)")
    a.add_argument("--tenant", default=None)
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=_runner(_list))

    a = actions.add_parser("revoke", parents=[common], help="revoke a key; a running firewall refuses it from the next request")
    a.add_argument("key_id", metavar="KEY_ID")
    a.set_defaults(handler=_runner(_revoke))

    p.set_defaults(handler=lambda args: (p.print_help(), EXIT_USAGE)[1])


# -- plumbing -------------------------------------------------------------------------------


def _runner(action: Callable[[Any, argparse.Namespace, TextIO], int]) -> Callable[[argparse.Namespace], int]:
    """The handler for an action: the store opened and errors reported once."""

    def run(args: argparse.Namespace) -> int:
        from .identity.apikeys import KeyStore, KeyStoreError, default_key_store

        try:
            path = args.store if args.store is not None else default_key_store(load_config(args.config).auth.api_keys)
            store = KeyStore(path)
            try:
                return action(store, args, sys.stdout)
            finally:
                store.close()
        except (ConfigError, KeyStoreError, _UsageError) as exc:
            print(f"mcpfw keys: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _json(value: Any, out: TextIO) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _when(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_expires(text: str, now: float | None = None) -> float:
    """Epoch seconds for ``30d``/``12h``/``90m``/``2w``/``45s`` from now, or an ISO 8601 time.

    A time without a zone is taken as UTC. Raises ValueError for anything else or a past time.
    """
    now = time.time() if now is None else now
    text = text.strip()
    m = _DURATION.fullmatch(text)
    if m:
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds <= 0:
            raise ValueError(f"--expires {text}: the duration must be positive")
        return _representable(now + seconds, text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--expires {text!r}: expected a duration (30d, 12h, 90m, 2w, 45s) or a time such as 2027-01-31T00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    epoch = when.timestamp()
    if epoch <= now:
        raise ValueError(f"--expires {text}: that time has passed")
    return _representable(epoch, text)


def _representable(epoch: float, text: str) -> float:
    try:
        datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"--expires {text}: too far in the future") from None
    return epoch


# -- actions --------------------------------------------------------------------------------


def _create(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    try:
        expires_at = parse_expires(args.expires) if args.expires is not None else None
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    record, key = store.create(
        args.tenant, args.name, scopes=_split(args.scopes), roles=_split(args.roles),
        expires_at=expires_at, subject=args.subject,
    )
    if args.json:
        _json({"key": key, **_record_json(record)}, out)
        return EXIT_OK
    out.write(
        f"created API key {record.key_id} for tenant {record.tenant} (name {record.name}, "
        f"subject {record.effective_subject}, expires {_when(record.expires_at) or 'never'})\n\n"
        f"    {key}\n\n"
        "Copy it now: it will not be shown again (only a salted hash is stored).\n"
    )
    return EXIT_OK


def _record_json(record: Any) -> dict[str, Any]:
    d = record.as_dict()
    d.update(
        effective_subject=record.effective_subject, status=record.status(),
        created=_when(record.created_at), expires=_when(record.expires_at), revoked=_when(record.revoked_at),
    )
    return d


_COLUMNS = ("ID", "TENANT", "NAME", "SUBJECT", "SCOPES", "ROLES", "CREATED", "EXPIRES", "STATUS")


def _list(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    records = store.list(args.tenant)
    if args.json:
        _json({"store": str(store.path), "keys": [_record_json(r) for r in records]}, out)
        return EXIT_OK
    if not records:
        out.write(f"no API keys{f' for tenant {args.tenant}' if args.tenant else ''} ({store.path})\n")
        return EXIT_OK
    now = time.time()
    table = [_COLUMNS] + [
        (
            r.key_id, r.tenant, r.name, r.effective_subject, ",".join(r.scopes) or "-", ",".join(r.roles) or "-",
            _short(r.created_at), _short(r.expires_at) if r.expires_at is not None else "never", r.status(now),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    out.writelines("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in table)
    return EXIT_OK


def _short(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%MZ")


def _revoke(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    before = store.get(args.key_id)
    if before is None or not store.revoke(args.key_id):
        print(f"mcpfw keys: no key with id {args.key_id!r} in {store.path}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if before.revoked_at is not None:
        out.write(f"API key {args.key_id} was already revoked ({_when(before.revoked_at)})\n")
    else:
        out.write(f"revoked API key {args.key_id} (tenant {before.tenant}, name {before.name})\n")
    return EXIT_OK
