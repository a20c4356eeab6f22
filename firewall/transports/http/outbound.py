"""The firewall's own HTTP client toward upstreams (aiohttp), shared by both engines.

Besides the lean listener's forwarding, it delivers the firewall's own messages to a
server: the error that answers a server's request the policy denied.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import aiohttp

from .routes import Route

log = logging.getLogger("mcpfw.http")


def client_session(*, connect_timeout: float, verify_tls: bool = True) -> aiohttp.ClientSession:
    """A client session fit for a proxy: no cookie jar (one client's cookies must never
    reach another), no proxy settings from the environment, no body decoding."""
    ssl_ctx: ssl.SSLContext | bool = True if verify_tls else False
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, ssl=ssl_ctx, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        skip_auto_headers=("User-Agent",),
    )


class UpstreamPoster:
    """Posts JSON-RPC messages to servers in the background."""

    def __init__(self, session_factory: Callable[[], aiohttp.ClientSession], timeout: float) -> None:
        self._factory = session_factory
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, route: Route, path: str, headers: dict[str, str], body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._post(route, path, headers, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, route: Route, path: str, headers: dict[str, str], body: bytes) -> None:
        send = {
            **headers,
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        try:
            async with asyncio.timeout(self._timeout):
                async with self._factory().post(route.origin + path, data=body, headers=send) as response:
                    await response.read()
                    if response.status >= 300:
                        log.warning("mcpfw: %s refused the firewall's reply (HTTP %s)", route.name, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("mcpfw: cannot deliver a reply to %s: %s", route.name, exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._timeout)
