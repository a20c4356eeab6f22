"""Starting real peers and the firewall for the HTTP tests, and stopping every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent
CONFORMANCE_SERVER = PEERS / "conformance_server.py"
EVERYTHING = ROOT / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
CONFORMANCE_CLI = ROOT / "node_modules/@modelcontextprotocol/conformance/dist/index.js"
TRIVIAL_POLICY = "package mcpfw\n\ndecision := {\"allow\": true}\n"


def node22() -> str | None:
    for path in sorted((ROOT / "node_modules").glob("node22-linux-*/bin/node")):
        if os.access(path, os.X_OK):
            return str(path)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def process(cmd: list[str], port: int, *, env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (its own process group) until the block ends, once it listens on ``port``."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes], grace: float = 8.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def conformance_server(port: int, *flags: str, log: Path | None = None) -> contextlib.AbstractContextManager[Any]:
    return process([sys.executable, str(CONFORMANCE_SERVER), "--port", str(port), *flags], port, log=log)


def everything_server(port: int, transport: str) -> contextlib.AbstractContextManager[Any]:
    return process(["node", str(EVERYTHING), transport], port, env={"PORT": str(port)})


def firewall_cli(upstream: str, port: int, audit: Path, *flags: str, log: Path | None = None) -> contextlib.AbstractContextManager[Any]:
    """``mcpfw proxy`` as a user runs it."""
    cmd = [sys.executable, "-m", "firewall.cli", "proxy", "--listen", f"127.0.0.1:{port}", "--audit", str(audit),
           "--registry", str(audit.with_suffix(".registry.yaml"))]  # the tool registry stays with the test too
    if upstream:
        cmd += ["--upstream", upstream]
    return process([*cmd, *flags], port, log=log)


class InProcessFirewall:
    """The lean (or mitmproxy) engine on a thread of the test process: quick to start."""

    def __init__(self, config: Any, *, engine: str = "lean") -> None:
        self.config = config
        self.engine = engine
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mcpfw-test-firewall", daemon=True)

    def _run(self) -> None:
        from firewall.transports.http.runner import Listen, serve_lean

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            listen = Listen("127.0.0.1", 0)

            def ready(port: int) -> None:
                self.port = port
                self._ready.set()

            if self.engine == "lean":
                await serve_lean(self.config, listen, on_ready=ready, stop=self._stop)
            else:
                from firewall.transports.http.mitm import serve_mitmproxy

                await serve_mitmproxy(self.config, Listen("127.0.0.1", free_port()), on_ready=ready, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()
        finally:
            # The policy engine may only be dropped on the thread that used it.
            gc.collect()

    def __enter__(self) -> InProcessFirewall:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_config(
    tmp: Path, upstreams: list[dict[str, Any]], *, policy: str | None = None, limits: dict[str, Any] | None = None, **proxy: Any
) -> Any:
    """A configuration with its own audit file (and policy bundle, given its Rego text)."""
    from firewall.config import Config

    raw: dict[str, Any] = {
        "limits": limits or {},
        "audit": {"path": str(tmp / "audit.duckdb"), "flush_interval_ms": 50},
        "registry": {"file": str(tmp / "registry.yaml")},
        "proxy": {"upstreams": upstreams, "client_timeout_seconds": 3, "upstream_timeout_seconds": 5, **proxy},
    }
    if policy is not None:
        bundle = tmp / "policy"
        (bundle / "mcpfw").mkdir(parents=True, exist_ok=True)
        (bundle / "mcpfw" / "decision.rego").write_text(policy)
        raw["policy"] = {"bundle": str(bundle)}
    return Config.model_validate(raw)


class Answer:
    """A response read whole with the standard library's HTTP client."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def http(method: str, url: str, *, json_body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10) -> Answer:
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        body = json.dumps(json_body).encode() if json_body is not None else None
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()
