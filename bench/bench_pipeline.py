#!/usr/bin/env python3
"""The inspection pipeline alone, in one process: CPU per tools/call request + result pair.

    .venv/bin/python bench/bench_pipeline.py [--chunk 100] [--rounds 40] [--traffic repeated,varied]
                                             [--ablate injection,pii,secrets,intent,poisoning]

What a transport hands the pipeline for one call: the client's tools/call request and the
server's result, as bytes, through ``Inspector.inspect`` of a firewall built from the default
configuration (default policy bundle on regorus, every default detector, a real DuckDB audit
log in a temporary directory). No network, no event loop: the HTTP and stdio benchmarks
include their transports and move with the machine's load by 0.1-0.3 of their ratio from
round to round; this one measures the CPU time of the calling thread (and, apart, of the
audit writer thread), which a busy host disturbs far less, so a change to the pipeline can be
compared within a few percent.

Traffic:

* ``repeated``: the same echo call and result every time (the decision cache and the
  detectors' memos answer, as in the issue's benchmarks);
* ``varied``: a sentence-long argument different on every call, echoed back (nothing can be
  cached; every message is evaluated by the policy and read by the detectors).

Firewalls: ``all`` (the defaults), ``none`` (every detector off: the floor the detectors add
to), and one per ``--ablate`` entry with that detector off. All are built first; then, round
after round, each gets a chunk of pairs in turn (100 by default), so the host's noise, which
comes in phases of seconds, hits them alike. With varied traffic each chunk's texts have the
same shape but are new to every firewall (the classifier and its cache are shared by the
process). Prints one JSON document: per traffic kind and firewall, CPU us per pair (the
calling thread: mean over the chunks, and the median chunk; apart, the audit writer thread,
which writes every pair's two rows in the background at its usual interval),
wall-time median and p99 per pair, pairs per second of one thread, and the cost of each
detector (its firewall against ``all``), with the throughput ratio of each firewall to
``none``.

On a shared 2-core host the CPU time of the same code still moves by 10-25 % from chunk to
chunk, so the cost of a detector that takes under a tenth of the total (secrets, intent and
poisoning on these short texts) is within the noise of one run: read the large differences,
or repeat the run. The audit writers run at their usual interval, several of them at once
here, so their batches are smaller and their CPU per pair higher than in a serving process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_audit import thread_cpu  # noqa: E402
from firewall.config import load_config  # noqa: E402  (MCPFW_HOME is read when used, not here)
from firewall.runtime import build_firewall, settle_heap  # noqa: E402
from firewall.session import ServerIdentity, Session  # noqa: E402

DETECTORS = ("injection", "pii", "secrets", "intent", "poisoning")
INIT = (b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}')
INIT_RESULT = (b'{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},'
               b'"serverInfo":{"name":"everything","version":"1"}}}')


def pair(n: int, varied: bool) -> tuple[bytes, bytes]:
    """The n-th request (id n + 1) and its result."""
    text = b"hello from the load generator, connection 3, request %d" % n if varied else b"hello"
    request = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"message":"%s"}}}'
               % (n + 1, text))
    result = b'{"result":{"content":[{"type":"text","text":"Echo: %s"}]},"jsonrpc":"2.0","id":%d}' % (text, n + 1)
    return request, result


class Subject:
    """One firewall (the defaults with some detectors off) and its session."""

    def __init__(self, name: str, off: tuple[str, ...], home: Path) -> None:
        cfg = load_config(None)
        detectors = cfg.detectors.model_copy(
            update={d: getattr(cfg.detectors, d).model_copy(update={"enabled": False}) for d in off})
        audit = cfg.audit.model_copy(update={"path": str(home / f"audit-{name}.duckdb")})
        self.name = name
        self.firewall = build_firewall(cfg.model_copy(update={"detectors": detectors, "audit": audit}))
        self.inspector = self.firewall.inspector
        self.session = Session(ServerIdentity(name="everything"), transport="http", cwd=str(home), resolve_symlinks=False)
        for raw, direction in ((INIT, "client_to_server"), (INIT_RESULT, "server_to_client")):
            self.inspector.inspect(raw, direction, self.session)

    def writer_cpu(self) -> float:
        """CPU seconds of this firewall's audit writer thread so far."""
        return thread_cpu(self.firewall.audit._thread.native_id)

    def feed(self, pairs: list[tuple[bytes, bytes]], walls: list[float] | None = None) -> float:
        """Inspect the pairs; the CPU seconds of this thread. Wall times per pair are
        appended to ``walls``."""
        inspect, session = self.inspector.inspect, self.session
        cpu = time.thread_time()
        for request, result in pairs:
            started = time.perf_counter()
            out = inspect(request, "client_to_server", session)
            if out.forward is None:
                raise RuntimeError(f"{self.name}: the echo call was denied: {out.reply!r}")
            inspect(result, "server_to_client", session)
            if walls is not None:
                walls.append(time.perf_counter() - started)
        return time.thread_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=100, help="pairs a firewall gets in one turn")
    ap.add_argument("--rounds", type=int, default=40, help="turns of every firewall")
    ap.add_argument("--traffic", default="repeated,varied")
    ap.add_argument("--ablate", default=",".join(DETECTORS), help="detectors to switch off one at a time ('' for none)")
    args = ap.parse_args()
    traffic = [t for t in args.traffic.split(",") if t]
    ablate = [d for d in args.ablate.split(",") if d]
    unknown = set(ablate) - set(DETECTORS) or set(traffic) - {"repeated", "varied"}
    if unknown:
        ap.error(f"unknown: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="mcpfw-bench-pipeline-") as tmp:
        home = Path(tmp)
        os.environ["MCPFW_HOME"] = str(home / "home")  # learned registry state stays in here
        setups = {"all": (), "none": DETECTORS, **{f"no_{d}": (d,) for d in ablate}}
        subjects = [Subject(name, off, home) for name, off in setups.items()]
        settle_heap()  # as a serving process does once it is ready (the collector's settings too)
        report: dict[str, Any] = {"chunk": args.chunk, "rounds": args.rounds, "python": sys.version.split()[0],
                                  "load_average_at_start": os.getloadavg()[0], "traffic": {}}
        offset = 0
        for kind in traffic:
            varied = kind == "varied"
            for s in subjects:
                s.feed([pair(offset + n, varied) for n in range(200)])
                offset += 200
            cpu: dict[str, list[float]] = {s.name: [] for s in subjects}
            for s in subjects:
                s.firewall.audit.flush()
            writer = {s.name: s.writer_cpu() for s in subjects}
            walls: dict[str, list[float]] = {s.name: [] for s in subjects}
            # Small chunks, firewall after firewall: the host's noise comes in phases of
            # seconds, and must hit every firewall alike.
            for _ in range(args.rounds):
                for s in subjects:
                    # Texts of the same shape but new to each firewall: the classifier and
                    # its cache are shared by all of them and must not answer for a later one.
                    chunk = [pair(offset + n, varied) for n in range(args.chunk)]
                    offset += args.chunk
                    cpu[s.name].append(s.feed(chunk, walls[s.name]) * 1e6 / args.chunk)
            for s in subjects:  # what the writers still hold is part of these pairs
                s.firewall.audit.flush()
                writer[s.name] = s.writer_cpu() - writer[s.name]
            summary: dict[str, dict[str, Any]] = {}
            n = args.rounds * args.chunk
            for s in subjects:
                w = sorted(walls[s.name])
                summary[s.name] = {
                    "cpu_us_per_pair": round(statistics.mean(cpu[s.name]), 1),
                    "cpu_us_per_pair_chunk_median": round(statistics.median(cpu[s.name]), 1),
                    "writer_cpu_us_per_pair": round(writer[s.name] * 1e6 / n, 1),
                    "wall_median_us": round(w[n // 2] * 1e6, 1),
                    "wall_p99_us": round(w[int(n * 0.99)] * 1e6, 1),
                    "pairs_per_second": round(n / sum(w), 1),
                }
            for name in summary:  # one thread's throughput against the detector-free floor
                summary[name]["throughput_ratio_to_none"] = round(
                    summary[name]["pairs_per_second"] / summary["none"]["pairs_per_second"], 3)
            full = summary["all"]["cpu_us_per_pair"]
            report["traffic"][kind] = {
                "firewalls": summary,
                "detectors_cpu_us_per_pair": round(full - summary["none"]["cpu_us_per_pair"], 1),
                "cost_of_each_detector_us_per_pair": {
                    d: round(full - summary[f"no_{d}"]["cpu_us_per_pair"], 1) for d in ablate},
            }
        for s in subjects:
            s.firewall.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
