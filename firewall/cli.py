"""The ``mcpfw`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from . import __version__
from . import errors
from .config import Config, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand whose options these are not, with its own usage
        _owning_parser(parser, getattr(args, "handler", None)).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from .audit.log import AuditUnavailableError

    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"mcpfw: config error: {exc}", file=sys.stderr)
        return 2
    except AuditUnavailableError as exc:
        print(f"mcpfw: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mcpfw audit sql ... | head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _owning_parser(parser: argparse.ArgumentParser, handler: object) -> argparse.ArgumentParser:
    """The (sub)parser whose default handler is ``handler`` (``parser`` itself if none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if child.get_default("handler") is handler and handler is not None:
                    return child
                found = _owning_parser(child, handler)
                if found is not child:
                    return found
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcpfw", description="Policy-as-code security firewall for MCP.")
    parser.add_argument("--version", action="version", version=f"mcpfw {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    stdio = sub.add_parser(
        "stdio",
        help="run an MCP server over stdio behind the firewall",
        description="Start the real server as a child and inspect every message. "
        "Usage: mcpfw stdio [options] -- COMMAND [ARGS...]",
    )
    _serving_options(stdio)
    stdio.add_argument("--server-name", help="stable name of this server in policy input and audit (default: derived from the command)")
    stdio.add_argument("--root", action="append", default=None, metavar="DIR", help="a filesystem root the server's tools may touch (repeatable)")
    stdio.add_argument("command", nargs=argparse.REMAINDER, help="the server command, after --")
    stdio.set_defaults(handler=_cmd_stdio)

    policy = sub.add_parser("policy", help="work with Rego policy bundles")
    psub = policy.add_subparsers(metavar="ACTION")
    ptest = psub.add_parser("test", help="run the test_ rules of a bundle, as `opa test` does")
    ptest.add_argument("dir", nargs="?", default=None, help="bundle directory (default: the built-in bundle)")
    ptest.add_argument("--engines", default=None,
                       help="comma-separated engines that must all agree: regorus,opa (default: every engine installed)")
    ptest.add_argument("--config", default=None, help="configuration file whose policy.data the tests see, as the firewall merges it")
    ptest.add_argument("--run", default=None, metavar="REGEX", help="only tests whose full name matches")
    ptest.add_argument("-v", "--verbose", action="store_true")
    ptest.set_defaults(handler=_cmd_policy_test)
    preplay = psub.add_parser(
        "replay", help="judge recorded traffic (audit.record_inputs) with a bundle and show what would change",
        description="Evaluate a bundle on the policy inputs recorded in the audit log and compare with the "
        "recorded decisions. Read-only: no counter, pin, approval or audit row is touched.")
    preplay.add_argument("--policy", type=Path, default=None, help="the bundle to try (default: the configured one)")
    preplay.add_argument("--db", type=Path, default=None, help="the DuckDB audit file (default: the configured one)")
    preplay.add_argument("--config", default=None, help="configuration file (its policy.data and engine apply)")
    preplay.add_argument("--engine", choices=["regorus", "opa"], default=None)
    preplay.add_argument("--where", default=None, metavar="SQL", help="which decisions, e.g. \"server = 'fs' AND ts > now() - INTERVAL 1 DAY\"")
    preplay.add_argument("--limit", type=int, default=None, help="at most this many decisions (oldest first)")
    preplay.add_argument("--show", type=int, default=20, help="changed decisions to list (default 20)")
    preplay.add_argument("--format", choices=["text", "json"], default="text")
    preplay.add_argument("--fail-on-change", action="store_true", help="exit 1 when any decision changes (for CI)")
    preplay.set_defaults(handler=_cmd_policy_replay)
    peval = psub.add_parser("eval", help="evaluate data.mcpfw.decision for one policy input (JSON file or -)")
    peval.add_argument("input", help="policy input JSON file, or - for stdin")
    peval.add_argument("--policy", type=Path, default=None, help="bundle directory")
    peval.add_argument("--engine", choices=["regorus", "opa"], default="regorus")
    peval.add_argument("--config", default=None, help="configuration file whose policy.data is merged, as the firewall does")
    peval.set_defaults(handler=_cmd_policy_eval)
    policy.set_defaults(handler=lambda a: (policy.print_help(), 2)[1])

    audit = sub.add_parser("audit", help="query the audit log")
    asub = audit.add_subparsers(metavar="ACTION")
    asql = asub.add_parser("sql", help="run a SQL query against the audit log (DuckDB)")
    asql.add_argument("sql", help='e.g. "SELECT * FROM recent_denials"')
    asql.add_argument("--db", type=Path, default=None, help="the DuckDB audit file")
    asql.add_argument("--config", type=Path, default=None)
    asql.add_argument("--format", choices=["table", "json", "csv"], default="table")
    asql.set_defaults(handler=_cmd_audit_sql)
    anom = asub.add_parser(
        "anomalies", help="principals that suddenly send much more, are denied much more, or call a new tool",
        description="Score every principal (tenant + subject, API key or client) against its own past, bucket "
        "by bucket: request volume, denial share and first use of a tool. Read-only.")
    anom.add_argument("--db", type=Path, default=None, help="the DuckDB audit file (default: the configured one)")
    anom.add_argument("--config", type=Path, default=None)
    anom.add_argument("--since", default="24h", help="report buckets from this long ago (1h, 7d) or this ISO time (default: 24h)")
    anom.add_argument("--bucket", default="1h", help="bucket length (default: 1h)")
    anom.add_argument("--lookback", default="7d", help="baseline window before each bucket (default: 7d)")
    anom.add_argument("--min-score", type=float, default=3.0, help="flag from this score (default: 3, about 1 in 700)")
    anom.add_argument("--min-history", type=int, default=24, help="buckets of history before rates are judged (default: 24)")
    anom.add_argument("--format", choices=["table", "json", "csv"], default="table")
    anom.add_argument("--fail-on-anomaly", action="store_true", help="exit 1 when anything is flagged (for cron and CI)")
    anom.set_defaults(handler=_cmd_audit_anomalies)
    aviews = asub.add_parser("views", help="list the ready-made views")
    aviews.set_defaults(handler=_cmd_audit_views)
    audit.set_defaults(handler=lambda a: (audit.print_help(), 2)[1])

    metrics = sub.add_parser("metrics", help="Prometheus metrics of every firewall process sharing the metrics directory")
    msub = metrics.add_subparsers(metavar="ACTION")
    mserve = msub.add_parser("serve", help="serve /metrics (the sum over stdio shims, proxy workers and past processes)")
    mserve.add_argument("--listen", default=None, help="HOST:PORT (default: metrics.listen, else 127.0.0.1:9464)")
    mserve.add_argument("--dir", type=Path, default=None, help="the metrics directory (default: metrics.directory, else metrics/ next to the audit file)")
    mserve.add_argument("--config", type=Path, default=None)
    mserve.set_defaults(handler=_cmd_metrics_serve)
    mshow = msub.add_parser("show", help="print the metrics once, in the Prometheus text format")
    mshow.add_argument("--dir", type=Path, default=None, help="the metrics directory (default: metrics.directory, else metrics/ next to the audit file)")
    mshow.add_argument("--config", type=Path, default=None)
    mshow.set_defaults(handler=_cmd_metrics_show)
    metrics.set_defaults(handler=lambda a: (metrics.print_help(), 2)[1])

    config = sub.add_parser("config", help="check or show the configuration")
    csub = config.add_subparsers(metavar="ACTION")
    ccheck = csub.add_parser("check", help="validate a configuration file")
    ccheck.add_argument("file", type=Path)
    ccheck.set_defaults(handler=_cmd_config_check)
    cshow = csub.add_parser("show", help="print the effective configuration")
    cshow.add_argument("file", type=Path, nargs="?", default=None)
    cshow.set_defaults(handler=_cmd_config_show)
    config.set_defaults(handler=lambda a: (config.print_help(), 2)[1])

    detect = sub.add_parser(
        "detect", help="score texts with the detectors (JSON lines on stdin, one JSON line out per input)",
        description="Input lines: {\"text\": ..., \"kind\": \"prompt\"|\"tool_output\"|\"tool_description\"} or "
        "{\"kind\": \"intent\", \"task\": ..., \"tool_call\": {\"name\": ..., \"arguments\": {...}}}.",
    )
    detect.add_argument("--config", type=Path, default=None, help="YAML configuration file (its detectors section)")
    detect.set_defaults(handler=_cmd_detect)

    demo = sub.add_parser("demo", help="the firewall in front of a real MCP server, driven by a real client")
    demo.add_argument("--audit", type=Path, default=None, help="DuckDB file for the demo (default: a temporary one)")
    demo.set_defaults(handler=_cmd_demo)

    # Each transport family declares its own subcommand next to its code; registering must
    # stay import-light (no mitmproxy import until the command runs).
    from .transports.http.cli import register as register_proxy

    register_proxy(sub, _serving_options)
    from .registry_cli import register as register_registry

    register_registry(sub)
    from .keys_cli import register as register_keys
    register_keys(sub)
    from .approvals_cli import register as register_approvals

    register_approvals(sub)
    return parser


def _serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML configuration file")
    p.add_argument("--policy", type=Path, default=None, metavar="DIR", help="Rego bundle directory (overrides config)")
    p.add_argument("--audit", type=Path, default=None, metavar="FILE", help="DuckDB audit file (overrides config)")
    p.add_argument("--engine", choices=["regorus", "opa"], default=None, help="policy engine (overrides config)")
    p.add_argument("--registry", type=Path, default=None, metavar="FILE", help="tool registry file (overrides config)")
    p.add_argument("--registry-mode", choices=["strict", "tofu", "off"], default=None,
                   help="tool registry mode for every server (overrides config)")


def _serving_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    config = config.with_overrides(
        policy={"bundle": args.policy, "engine": args.engine},
        audit={"path": args.audit},
    )
    from .registry_cli import serving_overrides

    return serving_overrides(config, args.registry, args.registry_mode)


def _cmd_stdio(args: argparse.Namespace) -> int:
    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("mcpfw stdio: no server command given (usage: mcpfw stdio [options] -- COMMAND [ARGS...])", file=sys.stderr)
        return 2
    config = _serving_config(args)
    from .identity.authenticator import check_auth

    check_auth(config)
    from .policy.bundle import PolicyLoadError
    from .runtime import build_firewall
    from .session import ServerIdentity, Session
    from .transports.stdio import StdioShim

    name = args.server_name or config.stdio.server_name or derive_server_name(command)
    roots = list(config.server(name).roots) + list(args.root or [])
    try:
        firewall = build_firewall(config)
    except PolicyLoadError as exc:
        print(f"mcpfw: policy error: {exc}", file=sys.stderr)
        return 2
    real_roots = [os.path.realpath(os.path.expanduser(r)) for r in roots]
    served = server_directories(command)
    if served and not real_roots:
        print(f"mcpfw: WARNING: the server is given {', '.join(served)} but the firewall no root: file "
              f"arguments are not confined (credential files are still refused); add --root DIR or "
              f"servers.{name}.roots", file=sys.stderr)
    session = Session(
        ServerIdentity(name=name, command=command, roots=real_roots),
        transport="stdio",
        cwd=os.getcwd(),
        resolve_symlinks=True,
        path_bases=(*served, *real_roots),
    )
    from .identity import AuthError
    from .identity.authenticator import stdio_identity

    try:
        identity = stdio_identity(config)
    except AuthError as exc:
        firewall.inspector.record_transport_error(
            session, "client_to_server", code=errors.AUTH_FAILED,
            reason_code="unauthenticated" if exc.status == 401 else "forbidden", message=exc.description,
        )
        firewall.close()
        print(f"mcpfw: {exc.description}; the server was not started", file=sys.stderr)
        return 2
    # The key is the firewall's business: the server never sees it.
    os.environ.pop(config.auth.api_keys.stdio_env, None)
    session.identity = identity.as_input() if identity is not None else None
    shim = StdioShim(
        command, firewall.inspector, session,
        max_message_bytes=config.limits.max_message_bytes,
        shutdown_grace=config.stdio.shutdown_grace_seconds,
    )
    try:
        return shim.run()
    finally:
        firewall.close()


_LAUNCHERS = {"npx", "uvx", "pipx", "node", "nodejs", "bun", "deno", "python", "python3", "uv", "run", "exec", "docker", "bunx", "pnpm", "dlx", "yarn"}


def derive_server_name(command: list[str]) -> str:
    """A readable, stable server name from its command (``npx -y @scope/server-x`` -> ``server-x``)."""
    for part in command:
        base = os.path.basename(part.rstrip("/"))
        if part.startswith("-") or base in _LAUNCHERS or base.startswith("python3"):
            continue
        if "node_modules/" in part:
            tail = part.split("node_modules/", 1)[1].split("/")
            return tail[1] if tail[0].startswith("@") and len(tail) > 1 else tail[0]
        name = part.split("@", 2)[-1] if part.startswith("@") else part.split("@")[0]
        return os.path.basename(name) or "server"
    return "server"


def server_directories(command: list[str]) -> list[str]:
    """Directories named in a server's command line (``server-filesystem /data``,
    ``mcp-server-git --repository=/repo``): bases the server may resolve relative paths from."""
    found: list[str] = []
    for part in command[1:]:
        value = part.split("=", 1)[1] if part.startswith("-") and "=" in part else part
        value = os.path.expanduser(value)
        if os.path.isabs(value) and os.path.isdir(value):
            found.append(os.path.realpath(value))
    return found


def _cmd_policy_test(args: argparse.Namespace) -> int:
    from .paths import DEFAULT_POLICY_DIR
    from .policy.testing import run_policy_tests

    from .policy.engine import installed_engines

    # Every installed engine by default: a policy that passes on regorus alone may decide
    # otherwise on OPA (regex classes, CIDR forms, builtins regorus lacks).
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else installed_engines()
    data = load_config(args.config).policy.data if args.config else None
    return run_policy_tests(args.dir or DEFAULT_POLICY_DIR, engines, verbose=args.verbose, run=args.run, data=data or None)


def _cmd_policy_eval(args: argparse.Namespace) -> int:
    import orjson

    from .paths import DEFAULT_POLICY_DIR
    from .policy.bundle import PolicyLoadError, load_bundle
    from .policy.decision import normalize_decision
    from .policy.engine import PolicyEvaluationError, create_engine

    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
        orjson.loads(text)
    except OSError as exc:
        print(f"mcpfw: cannot read the policy input {args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"mcpfw: the policy input {args.input} is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        data = load_config(args.config).policy.data if args.config else None
        engine = create_engine(args.engine, load_bundle(args.policy or DEFAULT_POLICY_DIR), data or None)
        raw = engine.evaluate(text)
    except (PolicyLoadError, PolicyEvaluationError) as exc:
        print(f"mcpfw: {exc}", file=sys.stderr)
        return 1
    decision = normalize_decision(raw)
    out = {"action": decision.action, "decision": raw}
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if decision.action != "deny" else 3


def _cmd_policy_replay(args: argparse.Namespace) -> int:
    import orjson

    from .audit.query import QueryError
    from .policy.bundle import load_bundle
    from .policy.engine import create_engine
    from .policy.errors import PolicyError
    from .policy.replay import replay
    from .runtime import serving_modules

    config = load_config(args.config)
    db = args.db or config.audit.path
    try:
        bundle = load_bundle(args.policy or config.policy.bundle)
        serving = dataclasses.replace(bundle, modules=serving_modules(bundle))
        engine = create_engine(args.engine or config.policy.engine, serving, config.policy.data or None)
    except PolicyError as exc:
        print(f"mcpfw: policy error: {exc}", file=sys.stderr)
        return 2
    try:
        report = replay(db, engine, where=args.where, limit=args.limit, keep=max(args.show, 0))
    except QueryError as exc:
        print(f"mcpfw: {exc}", file=sys.stderr)
        return exc.exit_code or 2
    finally:
        engine.close()
    if args.format == "json":
        sys.stdout.write(orjson.dumps({"db": str(db), "bundle": str(bundle.root), **report.as_dict()},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"replayed {report.replayed} decisions of {db} with {bundle.root}: "
              f"{report.replayed - report.changed} unchanged, {report.changed} changed"
              + (f" ({report.not_recorded} more have no recorded input)" if report.not_recorded else ""))
        if report.changed_redacted:
            print(f"  {report.changed_redacted} of the changed had part of their input redacted or cut in the log "
                  "(marked *): the policy saw more when it decided")
        for transition, count in report.transitions.most_common():
            print(f"  {transition:<18} {count}")
        if report.changes:
            print(f"changed (first {len(report.changes)}):")
        for c in report.changes:
            what = " ".join(x for x in (c.method, c.tool) if x)
            codes = ",".join(c.replayed_codes) or "-"
            print(f"  {'*' if c.input_redacted else ' '}{c.ts:%Y-%m-%d %H:%M:%S} {c.direction} {c.kind} {what}: "
                  f"{c.recorded} -> {c.replayed} [{codes}] {c.decision_id}" + (f" error: {c.error}" if c.error else ""))
    return 1 if args.fail_on_change and report.changed else 0


def _audit_db(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return args.db
    return load_config(args.config).audit.path


def _cmd_audit_sql(args: argparse.Namespace) -> int:
    from .audit.query import run_sql

    return run_sql(_audit_db(args), args.sql, fmt=args.format, out=sys.stdout)


def _cmd_audit_anomalies(args: argparse.Namespace) -> int:
    import datetime as dt

    from .audit.anomaly import AnomalySettings, find_anomalies, parse_duration
    from .audit.query import QueryError, write_csv, write_json, write_table

    now = dt.datetime.now(dt.UTC)
    try:
        try:
            since = now - parse_duration(args.since)
        except ValueError:
            try:
                since = dt.datetime.fromisoformat(args.since)
            except ValueError:
                raise ValueError(f"--since: expected a duration (24h, 7d) or an ISO time, not {args.since!r}") from None
            since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
        settings = AnomalySettings(bucket=parse_duration(args.bucket), lookback=parse_duration(args.lookback),
                                   since=since, min_score=args.min_score, min_history=args.min_history)
    except ValueError as exc:
        print(f"mcpfw: error: {exc}", file=sys.stderr)
        return 2
    db = _audit_db(args)
    try:
        found = find_anomalies(db, settings, now=now)
    except QueryError as exc:
        print(f"mcpfw: error: {exc}", file=sys.stderr)
        return exc.exit_code
    columns = [("bucket", "TIMESTAMP WITH TIME ZONE"), ("tenant", "VARCHAR"), ("principal", "VARCHAR"),
               ("signal", "VARCHAR"), ("tool", "VARCHAR"), ("observed", "DOUBLE"), ("expected", "DOUBLE"),
               ("score", "DOUBLE"), ("why", "VARCHAR")]
    rows = [tuple(a.as_dict().values()) for a in found]
    if args.format == "json":
        write_json(columns, rows, sys.stdout)
    elif args.format == "csv":
        write_csv(columns, rows, sys.stdout)
    else:
        write_table(columns, rows, sys.stdout, max_width=90)
    return 1 if args.fail_on_anomaly and found else 0


def _metrics_dir(args: argparse.Namespace) -> Path:
    from .metrics import metrics_dir

    return args.dir or metrics_dir(load_config(args.config))


def _cmd_metrics_show(args: argparse.Namespace) -> int:
    from .metrics import exposition, merged_snapshot

    sys.stdout.write(exposition(merged_snapshot(_metrics_dir(args))).decode())
    return 0


def _cmd_metrics_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .metrics import serve_metrics

    listen = args.listen or load_config(args.config).metrics.listen or "127.0.0.1:9464"
    directory = _metrics_dir(args)
    try:
        server = serve_metrics(listen, directory)
    except (OSError, ValueError) as exc:
        print(f"mcpfw metrics serve: cannot listen on {listen}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    print(f"mcpfw: serving metrics of {directory} on http://{listen}/metrics", file=sys.stderr)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.shutdown()
    return 0


def _cmd_audit_views(args: argparse.Namespace) -> int:
    from .audit.schema import VIEWS

    for name, (description, _sql) in VIEWS.items():
        print(f"{name:24} {description}")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    from .policy.bundle import load_bundle
    from .policy.engine import create_engine
    from .policy.errors import PolicyError
    from .policy.rules import check_defines_decision
    from .runtime import serving_modules

    try:
        bundle = load_bundle(config.policy.bundle)
        # Compiled as the firewall compiles it, with the configuration's data merged in.
        serving = dataclasses.replace(bundle, modules=serving_modules(bundle))
        check_defines_decision(serving.modules)
        create_engine(config.policy.engine, serving, config.policy.data or None).close()
        from .transports.http.routes import route_from_config

        for upstream in config.proxy.upstreams:  # header values from the environment, ...
            route_from_config(upstream)
        from .identity.authenticator import check_auth

        check_auth(config, create_store=False)  # the JWKS file, the key store if it exists
    except PolicyError as exc:
        print(f"{args.file}: policy: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK (policy bundle {config.policy.bundle}, {len(bundle.modules)} modules, engine {config.policy.engine}; audit {config.audit.path})")
    from .registry import registry_modes
    from .runtime import unread_detectors

    skipped = unread_detectors(serving_modules(bundle), config, registry_on=registry_modes(config).any_active())
    if skipped:
        print(f"{args.file}: detectors not run, no rule of the bundle reads their findings: {', '.join(sorted(skipped))} "
              "(detectors.run_unread: true runs them for the audit log)")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    config = load_config(args.file)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from .detect_cli import main_detect

    return main_detect(load_config(args.config))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.audit)


if __name__ == "__main__":
    sys.exit(main())
