"""A small MCP server over WebSocket (subprotocol "mcp"), for the firewall's WebSocket tests.

Usage: ws_server.py --port N [--calls FILE]
Tools: ``echo`` (returns its message) and ``ask`` (asks the client to sample ``prompt`` and
returns the answer or the error it got). Neither SDK ships a WebSocket server transport,
so this one speaks the few JSON-RPC methods it needs itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

TOOLS = [
    {"name": "echo", "description": "Returns its message",
     "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}},
    {"name": "ask", "description": "Asks the client to sample",
     "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}}}},
]


class Connection:
    def __init__(self, ws: web.WebSocketResponse, calls: Path | None) -> None:
        self.ws = ws
        self.calls = calls
        self.waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def handle(self, message: dict[str, Any]) -> None:
        if "method" not in message:
            future = self.waiting.pop(message.get("id"), None)
            if future is not None:
                future.set_result(message)
            return
        if "id" not in message:
            return
        method, params = message["method"], message.get("params") or {}
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcpfw-ws-test-server", "version": "1.0.0"},
            }
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "tools/call":
            result = await self.call(params.get("name"), params.get("arguments") or {})
        elif method == "ping":
            result = {}
        else:
            await self.send({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "Method not found"}})
            return
        await self.send({"jsonrpc": "2.0", "id": message["id"], "result": result})

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.calls is not None:
            with self.calls.open("a") as log:
                log.write(json.dumps({"name": name, "arguments": arguments}) + "\n")
        if name == "echo":
            return {"content": [{"type": "text", "text": str(arguments.get("message", ""))}]}
        request_id = f"srv-{next(self.ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": "sampling/createMessage", "params": {
            "messages": [{"role": "user", "content": {"type": "text", "text": arguments.get("prompt", "")}}],
            "maxTokens": 10,
        }})
        answer = await asyncio.wait_for(future, 10)
        if "error" in answer:
            return {"content": [{"type": "text", "text": f"sampling failed: {answer['error']['message']}"}], "isError": True}
        return {"content": [{"type": "text", "text": f"sampled: {answer['result']['content']['text']}"}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=Path, default=None)
    args = parser.parse_args()

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("mcp",))
        await ws.prepare(request)
        connection = Connection(ws, args.calls)
        tasks = set()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                task = asyncio.ensure_future(connection.handle(json.loads(message.data)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        return ws

    app = web.Application()
    app.router.add_get("/mcp", endpoint)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
