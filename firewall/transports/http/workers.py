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

import array
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

import orjson

from ...config import Config
from .exchange import HttpInspection
from .replies import Reply, plain
from .routes import Route
from .server import IncomingRequest, ServerConnection
from .sessions import Channel, session_key
from .upstream import Origin, UpstreamError, UpstreamPool
from .wire import CRLF, HOP_BY_HOP, encode, header_block

if TYPE_CHECKING:
    from .lean import LeanListener
    from .runner import Listen

log = logging.getLogger("mcpfw.http")

ADOPT_PATH = "/.mcpfw/adopt"
_NOT_RELAYED = HOP_BY_HOP | {b"content-length"}
_SESSION_FIELDS = ("protocol_version", "era", "client_info", "client_capabilities", "server_info", "server_capabilities")
_RELAY_SLACK = 10.0  # seconds the owner may take beyond its own upstream timeout
_HANDOFF_MAX = 60 * 1024  # a request larger than this is relayed instead (one datagram carries it)
# Dropped from a request passed on with its connection: the body is sent whole with its
# length, and a 100-continue was already answered.
_NOT_HANDED = frozenset({b"content-length", b"transfer-encoding", b"expect"})


def socket_path(socket_dir: str, index: int) -> str:
    return os.path.join(socket_dir, f"w{index}.sock")


def handoff_path(socket_dir: str, index: int) -> str:
    """Where a worker receives client connections handed over by the others."""
    return os.path.join(socket_dir, f"h{index}.sock")


def ready_file(socket_dir: str, index: int) -> str:
    """Written by a worker, with its port, once it accepts connections."""
    return os.path.join(socket_dir, f"w{index}.ready")


class SessionAffinity:
    """Keeps every request of an MCP session in the worker that owns the session."""

    def __init__(self, index: int, count: int, socket_dir: str, core: HttpInspection, *, timeout: float = 120.0) -> None:
        self.index = index
        self.count = count
        self._dir = socket_dir
        self._core = core
        self._timeout = timeout + _RELAY_SLACK
        self._pool: UpstreamPool | None = None
        self._routes: dict[str, Route] = {}
        self._listener: LeanListener | None = None
        self._inbox: socket.socket | None = None  # connections handed over to this worker
        self._outbox: socket.socket | None = None
        self.handed_off = 0
        self.relayed = 0

    async def start(self, listener: LeanListener) -> None:
        self._routes = {route.name: route for route in listener.router.routes}
        self._pool = UpstreamPool(connect_timeout=5.0, keepalive=60.0)
        self._listener = listener
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(handoff_path(self._dir, self.index))
        inbox.setblocking(False)
        self._inbox = inbox
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)
        asyncio.get_running_loop().add_reader(inbox.fileno(), self._receive)
        await listener.listen_unix(socket_path(self._dir, self.index))

    async def wait_for_peers(self, timeout: float = 30.0) -> None:
        """Wait until every worker serves its Unix socket, so no relay or hand-over fails."""
        deadline = time.monotonic() + timeout
        paths = [socket_path(self._dir, i) for i in range(self.count)] + [handoff_path(self._dir, i) for i in range(self.count)]
        while not all(os.path.exists(p) for p in paths):
            if time.monotonic() > deadline:
                raise TimeoutError("the other workers did not start")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._inbox is not None:
            asyncio.get_running_loop().remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
        if self._pool is not None:
            self._pool.close()

    def _origin(self, owner: int) -> Origin:
        return Origin("worker", 0, unix=socket_path(self._dir, owner))

    def owner(self, request: IncomingRequest, upstream_path: str) -> int | None:
        """The worker that must serve this request, or None when it is this one."""
        if request.internal:
            return None  # already relayed
        headers = request.headers
        sid = headers.get("mcp-session-id")
        if sid:
            owner = zlib.crc32(encode(sid)) % self.count
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
            return "text/event-stream" in (headers.get("accept") or "")
        return method == "POST" and "?" in upstream_path

    async def relay(self, request: IncomingRequest, owner: int, conn: ServerConnection) -> None:
        """Hand the client's connection to the owner; failing that, pass the request to the
        owner and its answer back, byte for byte."""
        from .lean import relay_response

        assert self._pool is not None
        await asyncio.sleep(0)  # the read that brought the request is parsed to its end first
        if conn.movable() and self._hand_off(request, owner, conn):
            return
        self.relayed += 1
        head = [b"%s %s HTTP/1.1\r\n" % (encode(request.method), encode(request.target))]
        head += header_block(request.headers.raw, _NOT_RELAYED)
        if request.has_body:
            head.append(b"content-length: %d\r\n" % len(request.body))
        head.append(CRLF)
        try:
            answer = await self._pool.request(
                self._origin(owner), b"".join(head), request.body, method=request.method, timeout=self._timeout
            )
        except UpstreamError as exc:
            log.warning("mcpfw: cannot relay a request to worker %d: %s", owner, exc.why)
            conn.reply(plain(502, f"mcpfw: worker {owner} is unavailable\n"))
            return
        try:
            await relay_response(conn, answer)
        finally:
            answer.release()

    # -- handing a client connection to the owner -------------------------------------

    def _hand_off(self, request: IncomingRequest, owner: int, conn: ServerConnection) -> bool:
        """Send the connection's socket and its request to the owner, which serves both from
        here on: a client that keeps its connection for its session costs no relays after
        the first request. False (nothing changed) when the socket cannot be sent."""
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or self._outbox is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        head = [b"%s %s HTTP/%s\r\n" % (encode(request.method), encode(request.target), b"1.1" if request.http11 else b"1.0")]
        head += header_block(request.headers.raw, _NOT_HANDED)
        if request.has_body:
            head.append(b"content-length: %d\r\n" % len(request.body))
        head += (CRLF, request.body)
        preface = b"".join(head)
        if len(preface) > _HANDOFF_MAX:
            return False
        assert transport is not None
        transport.pause_reading()  # what the client sends next stays in the socket for the owner
        try:
            # (socket.send_fds ignores its address argument, hence sendmsg)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
            self._outbox.sendmsg([preface], rights, 0, handoff_path(self._dir, owner))
        except OSError:
            transport.resume_reading()
            return False
        conn.release()
        self.handed_off += 1
        return True

    def _receive(self) -> None:
        """Connections handed over by the other workers (SCM_RIGHTS datagrams)."""
        inbox = self._inbox
        listener = self._listener
        while inbox is not None and listener is not None:
            try:
                preface, fds, _flags, _addr = socket.recv_fds(inbox, _HANDOFF_MAX + 1, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("mcpfw: cannot receive a connection from another worker: %s", exc)
                return
            socks = [socket.socket(fileno=fd) for fd in fds]
            if len(socks) != 1 or not preface:
                for sock in socks:
                    sock.close()
                continue
            asyncio.ensure_future(listener.adopt_connection(socks[0], preface))

    # -- handing a new session to its owner ------------------------------------------

    async def adopt(self, route: Route, sid: str, channel: Channel) -> None:
        owner = zlib.crc32(encode(sid)) % self.count
        if owner == self.index:
            return
        assert self._pool is not None
        session = channel.session
        state = orjson.dumps({
            "route": route.name, "sid": sid, "id": session.id, "transport": session.transport,
            "post_path": channel.post_path, "headers": channel.headers,
            **{name: getattr(session, name) for name in _SESSION_FIELDS},
        })
        head = b"POST %s HTTP/1.1\r\nhost: worker\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
            ADOPT_PATH.encode(), len(state))
        try:
            answer = await self._pool.request(self._origin(owner), head, state, method="POST", timeout=self._timeout)
            try:
                await answer.read(1 << 16, self._timeout)
            finally:
                answer.release()
        except UpstreamError as exc:
            # The owner learns the session from its next request, with less context.
            log.warning("mcpfw: cannot hand session state to worker %d: %s", owner, exc.why)

    def intercepts(self, request: IncomingRequest) -> bool:
        """The workers' own requests (only ever taken on the Unix socket)."""
        return request.internal and request.target == ADOPT_PATH

    def take_over(self, request: IncomingRequest) -> Reply:
        state = orjson.loads(request.body)
        route = self._routes.get(state["route"])
        if route is None:
            return Reply(404)
        session = self._core.sessions.new_session(route, state["transport"])
        session.id = state["id"]
        for name in _SESSION_FIELDS:
            setattr(session, name, state[name])
        channel = Channel(session, route, state["post_path"], dict(state["headers"]))
        self._core.sessions.add(session_key(state["sid"]), channel)
        return Reply(204)


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
    auth = config.auth
    keys = auth.api_keys
    if keys.store is not None:
        auth = auth.model_copy(update={"api_keys": keys.model_copy(update={"store": keys.store.absolute()})})
    if auth.jwt is not None and auth.jwt.jwks_file is not None:
        auth = auth.model_copy(update={"jwt": auth.jwt.model_copy(update={"jwks_file": auth.jwt.jwks_file.absolute()})})
    config = config.model_copy(update={"auth": auth})
    return config.with_overrides(
        policy={"bundle": config.policy.bundle.absolute()},
        audit={"path": audit.path.absolute(), "spill_path": audit.spill_path.absolute() if audit.spill_path else None},
        registry={name: path.absolute() for name, path in (("file", config.registry.file), ("state", config.registry.state)) if path},
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
