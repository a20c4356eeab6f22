"""Several lean worker processes on one port (SO_REUSEPORT), one per core.

The kernel spreads connections over the workers, but an MCP session spans many
connections (each POST, the GET stream, DELETE), and its state (the era, the requests in
flight, the legacy event stream that answers POSTs) lives in one process. So each session
has an owner, the worker numbered crc32(Mcp-Session-Id) mod N; any other worker relays the
session's requests to the owner over a Unix socket, unchanged. A worker that sees a server
open a session it does not own hands the session's state to the owner before the client
learns the id. Legacy HTTP+SSE sessions, whose id only appears inside the event stream,
all live in worker 0; sessionless (2026-07-28) requests stay wherever they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from ...config import Config
from .exchange import HttpInspection
from .routes import Route
from .sessions import Channel, session_key

if TYPE_CHECKING:
    from .lean import LeanListener
    from .runner import Listen

log = logging.getLogger("mcpfw.http")

ADOPT_PATH = "/.mcpfw/adopt"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
_SESSION_FIELDS = ("protocol_version", "era", "client_info", "client_capabilities", "server_info", "server_capabilities")


def socket_path(socket_dir: str, index: int) -> str:
    return os.path.join(socket_dir, f"w{index}.sock")


def ready_file(socket_dir: str, index: int) -> str:
    """Written by a worker, with its port, once it accepts connections."""
    return os.path.join(socket_dir, f"w{index}.ready")


class SessionAffinity:
    """Keeps every request of an MCP session in the worker that owns the session."""

    def __init__(self, index: int, count: int, socket_dir: str, core: HttpInspection) -> None:
        self.index = index
        self.count = count
        self._dir = socket_dir
        self._core = core
        self._clients: dict[int, aiohttp.ClientSession] = {}
        self._routes: dict[str, Route] = {}

    async def start(self, listener: LeanListener) -> None:
        self._routes = {route.name: route for route in listener.router.routes}
        await listener.listen_unix(socket_path(self._dir, self.index))

    async def wait_for_peers(self, timeout: float = 30.0) -> None:
        """Wait until every worker serves its Unix socket, so no relay or hand-over fails."""
        deadline = time.monotonic() + timeout
        paths = [socket_path(self._dir, i) for i in range(self.count)]
        while not all(os.path.exists(p) for p in paths):
            if time.monotonic() > deadline:
                raise TimeoutError("the other workers did not start")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    def _client(self, owner: int) -> aiohttp.ClientSession:
        client = self._clients.get(owner)
        if client is None:
            client = self._clients[owner] = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=socket_path(self._dir, owner), limit=0),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        return client

    @staticmethod
    def internal(request: web.BaseRequest) -> bool:
        """True for requests that came over a worker's Unix socket (already relayed)."""
        transport = request.transport
        return transport is not None and isinstance(transport.get_extra_info("sockname"), str)

    def owner(self, request: web.BaseRequest, upstream_path: str) -> int | None:
        """The worker that must serve this request, or None when it is this one."""
        if self.internal(request):
            return None
        headers = request.headers
        sid = headers.get("mcp-session-id")
        if sid:
            owner = zlib.crc32(sid.encode("utf-8", "surrogateescape")) % self.count
        elif self._maybe_legacy(request.method, headers, upstream_path):
            owner = 0
        else:
            return None
        return None if owner == self.index else owner

    @staticmethod
    def _maybe_legacy(method: str, headers: Any, upstream_path: str) -> bool:
        if headers.get("upgrade"):
            return False
        if method == "GET":
            return "text/event-stream" in headers.get("accept", "")
        return method == "POST" and "?" in upstream_path

    async def relay(self, request: web.BaseRequest, owner: int, body: bytes) -> web.StreamResponse:
        """Pass the request to its owner and its answer back, byte for byte."""
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"})
        async with self._client(owner).request(
            request.method, f"http://worker{request.raw_path}", headers=headers, data=body if request.body_exists else None,
            allow_redirects=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=CIMultiDict(
                (k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}))
            if answer.content_length is not None and "transfer-encoding" not in answer.headers:
                response.content_length = answer.content_length
            try:
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                answer.close()
        return response

    # -- handing a new session to its owner ------------------------------------------

    async def adopt(self, route: Route, sid: str, channel: Channel) -> None:
        owner = zlib.crc32(sid.encode("utf-8", "surrogateescape")) % self.count
        if owner == self.index:
            return
        session = channel.session
        state = {
            "route": route.name, "sid": sid, "id": session.id, "transport": session.transport,
            "post_path": channel.post_path, "headers": channel.headers,
            **{name: getattr(session, name) for name in _SESSION_FIELDS},
        }
        try:
            async with self._client(owner).post(f"http://worker{ADOPT_PATH}", data=orjson.dumps(state)) as answer:
                await answer.read()
        except aiohttp.ClientError as exc:
            # The owner learns the session from its next request, with less context.
            log.warning("mcpfw: cannot hand session state to worker %d: %s", owner, exc)

    async def intercept(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """Serve the workers' own requests (only on the Unix socket)."""
        if request.raw_path != ADOPT_PATH or not self.internal(request):
            return None
        state = orjson.loads(await request.read())
        route = self._routes.get(state["route"])
        if route is None:
            return web.Response(status=404)
        session = self._core.sessions.new_session(route, state["transport"])
        session.id = state["id"]
        for name in _SESSION_FIELDS:
            setattr(session, name, state[name])
        channel = Channel(session, route, state["post_path"], dict(state["headers"]))
        self._core.sessions.add(session_key(state["sid"]), channel)
        return web.Response(status=204)


# -- the supervising process -------------------------------------------------------


def _die_with_parent() -> None:
    """Child side: get SIGTERM when the supervisor dies, so no worker is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _absolute(config: Config) -> Config:
    audit = config.audit
    return config.with_overrides(
        policy={"bundle": config.policy.bundle.absolute()},
        audit={"path": audit.path.absolute(), "spill_path": audit.spill_path.absolute() if audit.spill_path else None},
    )


def run_workers(config: Config, listen: Listen, count: int) -> int:
    """Start ``count`` workers on one port and supervise them until a signal or a crash."""
    from .runner import announce

    socket_dir = tempfile.mkdtemp(prefix="mcpfw-workers-")
    config_file = Path(socket_dir) / "config.json"
    config_file.write_bytes(orjson.dumps(_absolute(config).model_dump(mode="json")))
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    ready = [ready_file(socket_dir, i) for i in range(count)]

    port = listen.port or _free_port(listen.host)

    def start(index: int) -> None:
        children.append(subprocess.Popen(
            [sys.executable, "-m", "firewall.cli", "proxy", "--config", str(config_file),
             "--listen", f"{listen.host}:{port}", "--workers", str(count),
             "--worker-index", str(index), "--socket-dir", socket_dir],
            preexec_fn=_die_with_parent,
        ))

    try:
        for index in range(count):
            start(index)
        # Each worker opens the public port only once every worker serves its Unix socket.
        while not stopping and not all(os.path.exists(p) for p in ready):
            if any(child.poll() is not None for child in children):
                stop(signal.SIGTERM, None)
                break
            time.sleep(0.05)
        if not stopping:
            announce(listen, port, "reverse", "lean", count)
        status = 0
        while children:
            for child in list(children):
                code = child.poll()
                if code is None:
                    continue
                children.remove(child)
                if not stopping:
                    status = code or 1
                    stop(signal.SIGTERM, None)
            time.sleep(0.1)
        return status
    finally:
        for child in children:
            with contextlib.suppress(Exception):
                child.kill()
                child.wait(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(socket_dir, ignore_errors=True)
