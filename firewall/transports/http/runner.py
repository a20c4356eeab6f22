"""Running ``mcpfw proxy``: the engines' event loops, signals and an orderly shutdown.

SIGINT and SIGTERM stop accepting, finish what is in flight (briefly) and flush the audit
log through :meth:`~firewall.runtime.Firewall.close`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...config import Config
from ...runtime import build_firewall, settle_heap


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


def parse_listen(value: str) -> Listen:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen wants HOST:PORT with a port from 0 to 65535, not {value!r}")
    return Listen(host.strip("[]") or "127.0.0.1", int(port))


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop`` (only possible on the main thread; embedders stop it themselves)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve_lean(
    config: Config,
    listen: Listen,
    *,
    worker_index: int = 0,
    worker_count: int = 1,
    socket_dir: str | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve reverse mode with the lean listener until ``stop`` is set (or a signal arrives)."""
    from .lean import LeanListener
    from .outbound import UpstreamPoster
    from .service import build_inspection, build_router

    stop = stop or asyncio.Event()
    install_stop_signals(stop)
    firewall = build_firewall(config)
    listener: LeanListener | None = None
    affinity = None
    try:
        core = build_inspection(firewall, reverse=True, poster=None)
        core.inspector.prepare()  # this thread (the event loop) inspects every message
        if worker_count > 1:
            from .workers import SessionAffinity

            assert socket_dir is not None
            # Tasks created through one worker may be asked about at another (sessionless
            # requests, another connection): the workers share their task records.
            core.inspector.share_tasks(Path(socket_dir) / "tasks")
            affinity = SessionAffinity(
                worker_index, worker_count, socket_dir, core, timeout=config.proxy.upstream_timeout_seconds
            )
        listener = LeanListener(core, build_router(config), config.proxy, affinity=affinity)
        client = listener
        core.poster = UpstreamPoster(lambda: client.client, config.proxy.upstream_timeout_seconds)
        if affinity is not None:
            await affinity.start(listener)
            await affinity.wait_for_peers()
        settle_heap()
        port = await listener.listen(listen.host, listen.port, reuse_port=worker_count > 1)
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        if affinity is not None:
            await affinity.close()  # its connections to the other workers would hold their shutdown
        if listener is not None:
            await listener.close()
        firewall.close()


def announce(listen: Listen, port: int, mode: str, engine: str, workers: int) -> None:
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    print(f"mcpfw proxy: listening on http://{host}:{port} ({mode} mode, {engine} engine, {workers} worker{'s' * (workers != 1)})",
          file=sys.stderr, flush=True)
