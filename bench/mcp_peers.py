"""Raw JSON-RPC clients for the real MCP servers used in tests and benchmarks (no SDK)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules" / "@modelcontextprotocol"
VENV_BIN = Path(sys.executable).parent
LIST_METHODS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")


def server_commands(workdir: Path) -> dict[str, list[str]]:
    """The four real servers; ``workdir`` becomes the filesystem root and a git repository."""
    if not (workdir / ".git").exists():
        subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    return {
        "server-everything": ["node", str(NODE_MODULES / "server-everything/dist/index.js"), "stdio"],
        "server-filesystem": ["node", str(NODE_MODULES / "server-filesystem/dist/index.js"), str(workdir)],
        "mcp-server-time": [str(VENV_BIN / "mcp-server-time"), "--local-timezone", "UTC"],
        "mcp-server-git": [str(VENV_BIN / "mcp-server-git"), "--repository", str(workdir)],
    }


class Peer:
    """One child process spoken to over its pipes, one request at a time."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self.next_id = 0

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise ConnectionError(f"{method}: the peer closed its output")
            msg = json.loads(line)
            if msg.get("id") == self.next_id and ("result" in msg or "error" in msg):
                return msg

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    def initialize(self) -> dict[str, Any]:
        reply = self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "mcpfw-bench", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fetch_lists(command: list[str]) -> dict[str, dict[str, Any]]:
    """The initialize result and the answer to every list method (result or error), by method."""
    peer = Peer(command)
    try:
        out = {"initialize": peer.initialize()}
        for method in LIST_METHODS:
            out[method] = peer.call(method, {})
        return out
    finally:
        peer.close()
