"""SSE passes unbuffered, event by event, and untouched events keep their bytes; OAuth
metadata names the firewall; the Host header reaches the upstream as the client sent it."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import aiohttp
import anyio
import pytest
from aiohttp import web

from peers.http_harness import InProcessFirewall, conformance_server, free_port, http, make_config

ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "timer", "version": "1"}}}
SLOW = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_slow_stream", "arguments": {}}}


async def first_event_times(url: str, rounds: int) -> tuple[list[float], list[float], bytes]:
    """Seconds to the first event (a log sent at once) and to the end (a second later)."""
    firsts, totals = [], []
    sample = b""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=INIT, headers=ACCEPT) as r:
            sid = r.headers["mcp-session-id"]
            await r.read()
        headers = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        async with session.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers) as r:
            await r.read()
        for _ in range(rounds):
            started = time.perf_counter()
            async with session.post(url, json=SLOW, headers=headers) as r:
                body = b""
                first = None
                async for chunk in r.content.iter_any():
                    body += chunk
                    if first is None and b"notifications/message" in body:
                        first = time.perf_counter() - started
                totals.append(time.perf_counter() - started)
                firsts.append(first if first is not None else float("inf"))
                sample = body
    return firsts, totals, sample


def test_sse_is_streamed_not_buffered(tmp_path):
    port = free_port()
    with conformance_server(port):
        upstream = f"http://127.0.0.1:{port}/mcp"
        with InProcessFirewall(make_config(tmp_path, [{"url": upstream}])) as fw:
            direct_first, direct_total, direct_body = anyio.run(first_event_times, upstream, 2)
            fw_first, fw_total, fw_body = anyio.run(first_event_times, f"{fw.url}/mcp", 2)
    # The first event arrives long before the answer (a second later), as directly...
    assert max(fw_first) < 0.5 < min(fw_total)
    # ...and within a few milliseconds of the direct time.
    assert statistics.median(fw_first) - statistics.median(direct_first) < 0.015, (fw_first, direct_first)
    # The Python SDK server ends lines with CRLF; allowed events pass byte for byte.
    assert b"\r\n\r\n" in direct_body and fw_body.count(b"\r\n") == direct_body.count(b"\r\n")


class AppServer:
    """An aiohttp application on a thread of its own."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> AppServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def protected_upstream() -> tuple[web.Application, list[str], dict[str, str]]:
    """A resource server that wants a token, as the MCP authorization spec describes."""
    hosts: list[str] = []
    served: dict[str, str] = {}  # "origin": host:port, known once the server listens
    app = web.Application()

    async def metadata(request: web.Request) -> web.Response:
        origin = f"http://{served['origin']}"
        return web.json_response({"resource": f"{origin}/mcp", "authorization_servers": ["https://auth.example"]})

    async def mcp(request: web.Request) -> web.Response:
        hosts.append(request.headers.get("host", ""))
        origin = f"http://{served['origin']}"
        return web.json_response(
            {"error": "invalid_token"}, status=401,
            headers={"WWW-Authenticate": f'Bearer resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp"'},
        )

    app.router.add_get("/.well-known/oauth-protected-resource/mcp", metadata)
    app.router.add_post("/mcp", mcp)
    return app, hosts, served


@pytest.mark.parametrize("prefix", ["", "/team"])
def test_oauth_metadata_and_host(tmp_path, prefix):
    app, hosts, served = protected_upstream()
    with AppServer(app) as upstream:
        served["origin"] = f"127.0.0.1:{upstream.port}"
        config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{upstream.port}/mcp", "path_prefix": prefix}])
        with InProcessFirewall(config) as fw:
            public = f"http://localhost:{fw.port}"
            challenge = http("POST", f"{fw.url}{prefix}/mcp", json_body={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                             headers={**ACCEPT, "host": f"localhost:{fw.port}"})
            metadata = http("GET", f"{fw.url}/.well-known/oauth-protected-resource{prefix}/mcp",
                            headers={"host": f"localhost:{fw.port}"})
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{public}/.well-known/oauth-protected-resource{prefix}/mcp"')
    assert metadata.json() == {"resource": f"{public}{prefix}/mcp", "authorization_servers": ["https://auth.example"]}
    assert hosts == [f"localhost:{fw.port}"]  # the client's Host, not the upstream's
