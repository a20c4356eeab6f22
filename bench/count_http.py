#!/usr/bin/env python3
"""Instructions the HTTP firewall executes a request, counted by valgrind's callgrind.

    .venv/bin/python bench/count_http.py [--upstream instant|everything] [--seconds 20]
                                         [--concurrency 4] [--repeat 2] [--src DIR] [--keep DIR]

Throughput and CPU time move with whatever else the host runs (docs/http.md, Performance):
a change worth 3 % of the firewall's CPU is lost in one benchmark round's spread. An
instruction count does not move with the host: the same tree, inputs and environment give
the same count to within a few tenths of a percent, whatever the other core is doing. So
this runs one lean worker (default policy bundle, audit on, as ``bench_http.py`` does) under
``valgrind --tool=callgrind``, lets the benchmark's load generator warm it up, zeroes the
counters, runs the load for ``--seconds`` (valgrind slows the firewall about 50 times: 700-1,200
requests in 20 s), dumps the counters and divides by the requests the load generator
had answered. It prints one JSON document: instructions a request for the worker's event
loop thread, its audit writer thread (its busiest other thread) and all its threads, per round and their median.

``--src DIR`` counts another source tree's firewall (``bench_http.py --make-baseline`` makes
one), so a change is compared against the tree before it. The audit writer's share depends
on how many rows a batch holds, which valgrind's slowness changes; the event loop's count is
the figure to compare. Low concurrency keeps the count steady: at c=32 the number of
requests an event-loop turn serves, and with it the loop's overhead a request, depends on
timing. ``--keep DIR`` keeps the callgrind files for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_http import EVERYTHING, children, free_port, start, stop, wait_port  # noqa: E402


def _totals(outdir: Path, pid: int, dump: int) -> dict[int, int]:
    """Instructions of each thread (1-based callgrind thread number) in dump ``dump``."""
    totals = {}
    for f in outdir.glob(f"callgrind.out.{pid}.{dump}-*"):
        thread = int(f.name.rsplit("-", 1)[1])
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                totals[thread] = int(line.split()[1])
                break
    return totals


def _load(url: str, concurrency: int, seconds: float, session: bool) -> int:
    done = subprocess.run([sys.executable, str(ROOT / "bench/bench_http.py"), "--load", url, str(concurrency),
                           str(seconds), str(int(session))], capture_output=True, text=True, timeout=seconds * 4 + 120)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return int(json.loads(done.stdout)["all_requests"])


def count(upstream: str, session: bool, src: Path, seconds: float, concurrency: int, outdir: Path) -> dict[str, float]:
    port = free_port()
    audit = outdir / f"audit-{port}.duckdb"
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=yes", "--compress-strings=no", "--compress-pos=no",
           f"--callgrind-out-file={outdir}/callgrind.out.%p",
           sys.executable, "-m", "firewall.cli", "proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
           "--workers", "1", "--audit", str(audit), "--listener", "lean"]
    env = {"MCPFW_HOME": str(outdir / f"home-{port}"), "PYTHONPATH": str(src)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=src,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        wait_port(port, timeout=300)
        time.sleep(5)
        worker = next(iter(children(proc.pid)), proc.pid)  # one worker: served in-process
        url = f"http://127.0.0.1:{port}/mcp"
        _load(url, concurrency, max(seconds / 4, 3.0), session)  # warm up: the decision cache, the detectors' memos
        subprocess.run(["callgrind_control", "-z", str(worker)], check=True, capture_output=True)
        requests = _load(url, concurrency, seconds, session)
        subprocess.run(["callgrind_control", "-d", str(worker)], check=True, capture_output=True)
    finally:
        stop(proc)
    totals = _totals(outdir, worker, 1)
    if not totals:
        raise RuntimeError(f"no callgrind dump for worker {worker} in {outdir}")
    # callgrind numbers threads in the order they started: 1 is the main thread (the event
    # loop); the busiest of the others is the audit writer (the rest: executor threads).
    per = {t: n / requests for t, n in totals.items()}
    others = sorted((n for t, n in per.items() if t != 1), reverse=True)
    return {
        "requests": requests,
        "event_loop": round(per.get(1, 0.0)),
        "audit_writer": round(others[0]) if others else 0,
        "all_threads": round(sum(per.values())),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", choices=("instant", "everything"), default="instant")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--src", type=Path, default=ROOT, help="source tree whose firewall is counted")
    ap.add_argument("--keep", type=Path, default=None, help="keep the callgrind files here")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (Debian: apt-get install valgrind)")
    outdir = args.keep or Path(tempfile.mkdtemp(prefix="mcpfw-count-http-"))
    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if args.upstream == "instant":
        upstream = start([sys.executable, str(ROOT / "bench/bench_http.py"), "--instant", str(port)], port)
    else:
        upstream = start(["node", str(EVERYTHING), "streamableHttp"], port, env={"PORT": str(port)})
    try:
        rounds = [count(f"http://127.0.0.1:{port}/mcp", args.upstream == "everything", args.src.resolve(),
                        args.seconds, args.concurrency, outdir) for _ in range(args.repeat)]
    finally:
        stop(upstream)
        if args.keep is None:
            shutil.rmtree(outdir, ignore_errors=True)
    keys = ("event_loop", "audit_writer", "all_threads")
    print(json.dumps({
        "upstream": args.upstream, "concurrency": args.concurrency, "seconds": args.seconds,
        "src": str(args.src.resolve()), "python": sys.version.split()[0],
        "instructions_per_request": {k: round(statistics.median(r[k] for r in rounds)) for k in keys},
        "rounds": rounds,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
