"""The ``mcpfw proxy`` subcommand. Import-light: the engines load only when it runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any


def register(sub: argparse._SubParsersAction, serving_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``mcpfw proxy`` to the command line."""
    p = sub.add_parser(
        "proxy",
        help="inspect MCP over HTTP, SSE and WebSocket in front of remote servers",
        description="Reverse mode (default): clients use the firewall's URL instead of the server's. "
        "Regular and transparent modes (mitmproxy): clients use the firewall as their proxy. "
        "Example: mcpfw proxy --upstream http://127.0.0.1:3001/mcp --listen 127.0.0.1:8080",
    )
    serving_options(p)
    p.add_argument("--upstream", action="append", default=None, metavar="URL",
                   help="reverse mode: the server's MCP endpoint (repeat for several, then set path prefixes or hosts in the config file)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT", help="where to listen (default 127.0.0.1:8080)")
    p.add_argument("--mode", choices=["reverse", "regular", "transparent"], default=None)
    p.add_argument("--listener", choices=["auto", "lean", "mitmproxy"], default=None,
                   help="engine: auto = lean in reverse mode, mitmproxy otherwise")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="lean engine processes (0 = one per core)")
    p.add_argument("--public-url", default=None, metavar="URL", help="the firewall's URL as clients see it (OAuth metadata)")
    p.add_argument("--rewrite-host", action="store_true", default=None,
                   help="send the upstream's own Host header instead of the client's")
    p.add_argument("--non-mcp", choices=["pass", "deny"], default=None, help="regular/transparent: traffic that is not MCP")
    p.add_argument("--confdir", default=None, metavar="DIR", help="mitmproxy's directory, holding its CA")
    p.add_argument("--ssl-insecure", action="store_true", default=None, help="mitmproxy: do not verify upstream certificates")
    auth = p.add_argument_group("identity (OAuth 2.1 resource server and API keys; see docs/identity.md)")
    auth.add_argument("--auth", choices=["off", "optional", "required"], default=None, dest="auth_mode",
                      help="who must authenticate (default off; any of the flags below turns it to required)")
    auth.add_argument("--auth-issuer", default=None, metavar="URL", help="the token issuer (`iss`); its JWKS is found by discovery")
    auth.add_argument("--auth-audience", action="append", default=None, metavar="URL",
                      help="accepted `aud` (default: the firewall's resource URL for the route); repeatable")
    auth.add_argument("--auth-jwks-url", default=None, metavar="URL", help="the issuer's JWKS URL (skips discovery)")
    auth.add_argument("--auth-jwks-file", default=None, metavar="FILE", help="a JWKS file instead of fetching one")
    auth.add_argument("--auth-scope", action="append", default=None, metavar="SCOPE",
                      help="a scope every request needs (403 insufficient_scope otherwise); repeatable")
    auth.add_argument("--keys-store", default=None, metavar="FILE", help="API key database (default MCPFW_HOME/keys.sqlite)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--socket-dir", default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_proxy)


def _proxy_overrides(args: argparse.Namespace, current: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "listen": args.listen,
        "mode": args.mode,
        "listener": args.listener,
        "workers": args.workers,
        "public_url": args.public_url,
        "non_mcp": args.non_mcp,
        "confdir": args.confdir,
        "ssl_insecure": args.ssl_insecure,
        "preserve_host": False if args.rewrite_host else None,
    }
    if args.upstream:
        from ...config import UpstreamConfig

        fields["upstreams"] = [UpstreamConfig(url=url) for url in args.upstream]
    return fields


def _auth_overrides(args: argparse.Namespace, current: Any) -> Any:
    """The auth section with the command line's flags applied (flags win over the file)."""
    from pathlib import Path

    from pydantic import ValidationError

    from ...config import AuthConfig, ConfigError, describe_errors

    data = current.model_dump()
    jwt_flags = {
        "issuer": args.auth_issuer,
        "audience": args.auth_audience,
        "jwks_url": args.auth_jwks_url,
        "jwks_file": Path(args.auth_jwks_file).absolute() if args.auth_jwks_file else None,
    }
    jwt_flags = {k: v for k, v in jwt_flags.items() if v is not None}
    if jwt_flags:
        if data.get("jwt") is None and "issuer" not in jwt_flags:
            raise ConfigError("proxy: --auth-jwks-url/--auth-jwks-file/--auth-audience need --auth-issuer (or auth.jwt in the config)")
        data["jwt"] = {**(data.get("jwt") or {}), **jwt_flags}
    if args.auth_scope:
        data["required_scopes"] = args.auth_scope
    if args.keys_store:
        data["api_keys"] = {**data["api_keys"], "store": Path(args.keys_store).absolute()}
    if args.auth_mode is not None:
        data["mode"] = args.auth_mode
    elif jwt_flags and data["mode"] == "off":
        data["mode"] = "required"
    try:
        return AuthConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("proxy: " + describe_errors(exc, "auth")) from None


def _cmd_proxy(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ...cli import _serving_config
    from ...config import ConfigError, ProxyConfig, describe_errors

    config = _serving_config(args)
    try:
        proxy = ProxyConfig.model_validate({**config.proxy.model_dump(), **{
            k: v for k, v in _proxy_overrides(args, config.proxy).items() if v is not None
        }})
    except ValidationError as exc:
        raise ConfigError("proxy: " + describe_errors(exc)) from None
    config = config.model_copy(update={"proxy": proxy, "auth": _auth_overrides(args, config.auth)})
    listener = proxy.listener if proxy.listener != "auto" else ("lean" if proxy.mode == "reverse" else "mitmproxy")
    if proxy.mode == "reverse" and not proxy.upstreams:
        print("mcpfw proxy: reverse mode needs an upstream (--upstream URL or proxy.upstreams)", file=sys.stderr)
        return 2
    if listener == "lean" and proxy.mode != "reverse":
        print("mcpfw proxy: the lean listener serves reverse mode only; use --listener mitmproxy", file=sys.stderr)
        return 2
    auth = config.auth
    if auth.mode != "off" and auth.jwt is not None and not (auth.jwt.audience or auth.resource or proxy.public_url):
        # Otherwise the accepted audience would be built from the client's Host header, and a
        # token the issuer minted for another service would pass with that service's Host.
        print("mcpfw proxy: bearer tokens need the firewall's public URL (--public-url / proxy.public_url), "
              "auth.resource or an audience (--auth-audience / auth.jwt.audience)", file=sys.stderr)
        return 2
    from ...identity.authenticator import check_auth

    check_auth(config)  # here, before workers or mitmproxy start: they would report it less plainly
    from .runner import parse_listen

    try:
        listen = parse_listen(proxy.listen)
    except ValueError as exc:
        print(f"mcpfw proxy: {exc}", file=sys.stderr)
        return 2
    from ...policy.bundle import PolicyLoadError

    if config.metrics.enabled and config.metrics.listen and args.worker_index is None:
        from ...metrics import metrics_dir, serve_metrics

        try:  # the supervisor (or the only process) serves the sum over every worker's counts
            serve_metrics(config.metrics.listen, metrics_dir(config))
        except (OSError, ValueError) as exc:
            print(f"mcpfw proxy: cannot serve metrics on {config.metrics.listen}: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return 2
    try:
        if listener == "mitmproxy":
            from .mitm import run_mitmproxy

            return run_mitmproxy(config, listen)
        workers = proxy.workers or os.cpu_count() or 1
        limits = config.rate_limits
        if workers > 1 and limits.rules and limits.backend == "memory":
            print(f"mcpfw proxy: rate_limits.backend memory counts in each process: with {workers} workers every "
                  "limit would let through that many times as much; use backend: redis, or workers: 1", file=sys.stderr)
            return 2
        if workers > 1 and args.worker_index is None:
            from .workers import run_workers

            return run_workers(config, listen, workers)
        return _run_lean(config, listen, args, workers)
    except PolicyLoadError as exc:
        print(f"mcpfw: policy error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mcpfw proxy: cannot listen on {proxy.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _run_lean(config: Any, listen: Any, args: argparse.Namespace, workers: int) -> int:
    import asyncio

    from .runner import announce, serve_lean

    index = args.worker_index or 0

    def ready(port: int) -> None:
        if args.worker_index is None:
            announce(listen, port, "reverse", "lean", 1)
        else:
            from .workers import ready_file

            with open(ready_file(args.socket_dir, index), "w") as f:
                f.write(str(port))

    main = serve_lean(
        config, listen, worker_index=index, worker_count=workers if args.worker_index is not None else 1,
        socket_dir=args.socket_dir, on_ready=ready,
    )
    try:
        import uvloop  # about a third less CPU per request than asyncio's own loop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
    return 0
