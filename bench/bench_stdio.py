"""Added latency of the stdio shim: 2,000 sequential tools/call, direct and through mcpfw.

Both paths run in the same process run against the same real server
(@modelcontextprotocol/server-everything, its ``echo`` tool), with the default policy and
the audit log on. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ["node", str(ROOT / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"), "stdio"]


def _compact(message: dict) -> bytes:
    # As the MCP SDKs write messages (JSON.stringify, pydantic's model_dump_json): no spaces.
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Peer:
    """A raw JSON-RPC client over a child's pipes (no SDK, so it adds little noise)."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self.out = self.proc.stdout
        self.next_id = 0

    def call(self, method: str, params: dict) -> dict:
        self.next_id += 1
        self.proc.stdin.write(_compact({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.out.readline())
            if msg.get("id") == self.next_id:
                return msg

    def notify(self, method: str) -> None:
        self.proc.stdin.write(_compact({"jsonrpc": "2.0", "method": method}))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(command: list[str], n: int, warmup: int, vary: bool = False) -> tuple[list[float], float, float]:
    peer = Peer(command)
    init = peer.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
    assert "result" in init, init
    peer.notify("notifications/initialized")
    args = {"name": "echo", "arguments": {"message": "hello from the benchmark"}}
    # --vary: every call says something new, as real traffic does, so that nothing the
    # firewall remembers (policy decisions, classifier scores) can answer it.
    # (Plain words: text the injection classifier finds ambiguous goes through its
    # embedding model, ~3 ms a string, which would measure the model instead.)
    def call_args(i: int) -> dict:
        if not vary:
            return args
        return {"name": "echo", "arguments": {"message": f"hello from the benchmark, message {i}"}}

    for i in range(warmup):
        assert "result" in peer.call("tools/call", call_args(n + i))
    cpu0 = cpu_seconds(peer.proc.pid)
    samples = []
    start = time.perf_counter()
    for i in range(n):
        call = call_args(i)
        t0 = time.perf_counter()
        reply = peer.call("tools/call", call)
        samples.append(time.perf_counter() - t0)
        assert "result" in reply, reply
    wall = time.perf_counter() - start
    cpu = cpu_seconds(peer.proc.pid) - cpu0
    peer.close()
    return samples, wall, cpu


def summarize(samples: list[float], wall: float) -> dict:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 4),
        "throughput_rps": round(len(samples) / wall, 1),
    }


def serve_relay(command: list[str]) -> int:
    """The stdio shim's relay with an inspector that passes every frame unchanged."""
    sys.path.insert(0, str(ROOT))
    from firewall.pipeline import Outcome
    from firewall.session import ServerIdentity, Session
    from firewall.transports.stdio import StdioShim

    class PassThrough:
        def inspect(self, raw: bytes, direction: str, session: Session, identity: object = None) -> Outcome:
            return Outcome(raw, None)

    session = Session(ServerIdentity(name="relay"), transport="stdio", cwd=os.getcwd(), resolve_symlinks=False)
    command = command[1:] if command and command[0] == "--" else command
    return StdioShim(command, PassThrough(), session, max_message_bytes=4 << 20).run()  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--engine", default="regorus")
    parser.add_argument("--policy", default=None, help="bundle directory (default: the built-in bundle)")
    parser.add_argument("--config", default=None, help="mcpfw configuration file for the shim")
    parser.add_argument(
        "--vary", action="store_true",
        help="a different message on every call (defeats the decision and classifier caches)",
    )
    parser.add_argument(
        "--relay-floor", action="store_true",
        help="also time the shim's own relay with a pass-through inspector (no policy, detectors or "
        "audit): what the extra process hop costs on this machine, noise included",
    )
    parser.add_argument("--serve-relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve_relay:
        sys.exit(serve_relay(opts.command))
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit.duckdb"
        policy = (["--policy", opts.policy] if opts.policy else []) + (["--config", opts.config] if opts.config else [])
        shim = [sys.executable, "-m", "firewall.cli", "stdio", "--engine", opts.engine, *policy, "--audit", str(audit), "--", *SERVER]
        # Interleave so that machine noise hits both paths alike.
        direct_s, fw_s, direct_wall, fw_wall, fw_cpu = [], [], 0.0, 0.0, 0.0
        relay_s, relay_wall, relay_cpu = [], 0.0, 0.0
        relay = [sys.executable, str(Path(__file__).resolve()), "--serve-relay", "--", *SERVER]
        for _ in range(2):
            s, w, _c = run(SERVER, opts.n // 2, opts.warmup, opts.vary)
            direct_s += s
            direct_wall += w
            s, w, c = run(shim, opts.n // 2, opts.warmup, opts.vary)
            fw_s += s
            fw_wall += w
            fw_cpu += c
            if opts.relay_floor:
                s, w, c = run(relay, opts.n // 2, opts.warmup, opts.vary)
                relay_s += s
                relay_wall += w
                relay_cpu += c
        import duckdb

        with duckdb.connect(str(audit), read_only=True) as db:
            audited = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
    direct, firewall = summarize(direct_s, direct_wall), summarize(fw_s, fw_wall)
    result = {
        "benchmark": "stdio tools/call, server-everything echo",
        "engine": opts.engine,
        "messages": "varied" if opts.vary else "repeated",
        "calls": len(fw_s),
        "direct": direct,
        "firewall": firewall,
        "added_median_ms": round(firewall["median_ms"] - direct["median_ms"], 4),
        "added_p99_ms": round(firewall["p99_ms"] - direct["p99_ms"], 4),
        "throughput_ratio": round(firewall["throughput_rps"] / direct["throughput_rps"], 3),
        "shim_cpu_ms_per_call": round(fw_cpu / len(fw_s) * 1000, 4),
        "audit_rows": audited,
    }
    if opts.relay_floor:
        floor = summarize(relay_s, relay_wall)
        result["relay_floor"] = {
            **floor,
            "added_median_ms": round(floor["median_ms"] - direct["median_ms"], 4),
            "added_p99_ms": round(floor["p99_ms"] - direct["p99_ms"], 4),
            "cpu_ms_per_call": round(relay_cpu / len(relay_s) * 1000, 4),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
