"""``mcpfw approvals``: review the calls the policy holds for approval, approve or deny them."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .config import ConfigError, load_config
from .keys_cli import _DURATION, _UNIT_SECONDS, _when

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mcpfw approvals`` and its actions to the command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None, metavar="FILE", help="approval database (overrides config)")
    common.add_argument("--config", type=Path, default=None, help="YAML configuration file (its approvals.store)")

    p = sub.add_parser("approvals", help="calls held for a person's approval: list, show, approve, deny")
    actions = p.add_subparsers(metavar="ACTION")
    a = actions.add_parser("list", parents=[common], help="approval requests, newest first")
    a.add_argument("--status", choices=["pending", "approved", "denied", "used", "expired"], default=None)
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=_runner(_list))
    a = actions.add_parser("show", parents=[common], help="one request: the call (secrets redacted) and why")
    a.add_argument("approval_id")
    a.set_defaults(handler=_runner(_show))
    for name, approve in (("approve", True), ("deny", False)):
        a = actions.add_parser(name, parents=[common], help=f"{name} a pending request")
        a.add_argument("approval_id")
        a.add_argument("--by", default=None, help="who decides (default: the login name)")
        if approve:
            a.add_argument("--for", dest="grant", default="1h", metavar="DURATION",
                           help="how long the client has to retry the call (default 1h; 30m, 2h, 1d)")
        a.set_defaults(handler=_runner(_decide), approve=approve)
    p.set_defaults(handler=lambda args: (p.print_help(), EXIT_USAGE)[1])


def _runner(action: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .approvals import ApprovalStore, ApprovalStoreError, default_approval_store

        try:
            path = args.store or load_config(args.config).approvals.store or default_approval_store()
            store = ApprovalStore(path)
            try:
                return action(store, args)
            finally:
                store.close()
        except (ConfigError, ValueError) as exc:
            print(f"mcpfw approvals: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ApprovalStoreError as exc:
            print(f"mcpfw approvals: {exc}", file=sys.stderr)
            return EXIT_NOT_FOUND

    return run


def _list(store: Any, args: argparse.Namespace) -> int:
    rows = store.list(args.status)
    if args.json:
        sys.stdout.write(orjson.dumps([r.as_dict() for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    header = ("ID", "STATUS", "CREATED", "SERVER", "TOOL", "TENANT", "SUBJECT", "WHY")
    table = [header] + [
        (r.approval_id, r.effective_status(), _when(r.created_at) or "", r.server or "", r.tool or r.method or "",
         r.tenant or "", r.subject or "", "; ".join(orjson.loads(r.reasons or "[]"))[:80])
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return EXIT_OK


def _show(store: Any, args: argparse.Namespace) -> int:
    found = store.get(args.approval_id)
    if found is None:
        print(f"mcpfw approvals: no approval request {args.approval_id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    sys.stdout.write(orjson.dumps(found.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _decide(store: Any, args: argparse.Namespace) -> int:
    grant = 3600.0
    if args.approve:
        match = _DURATION.fullmatch(args.grant.strip())
        if not match or int(match.group(1)) == 0:
            raise ValueError(f"--for {args.grant!r}: expected a duration such as 30m, 1h or 1d")
        grant = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    decided = store.decide(args.approval_id, approve=args.approve, by=args.by or getpass.getuser(), grant_seconds=grant)
    if args.approve:
        print(f"approved {decided.approval_id}: {decided.tool or decided.method} on {decided.server} may run once "
              f"until {_when(decided.expires_at)} (the client retries the same call)")
    else:
        print(f"denied {decided.approval_id}")
    return EXIT_OK
