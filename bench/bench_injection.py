#!/usr/bin/env python3
"""Latency benchmark for detectors.injection.InjectionClassifier on ONE core.

    .venv/bin/python bench/bench_injection.py [--runs 60] [--cpu 0]

Prints one JSON document: load time (import + model load in this process), and
median / p99 latency in ms for ~1,000- and ~20,000-character tool outputs, for
  * benign texts (the common case; most are settled by the stage-1 screen),
  * texts carrying a planted injection (always reach the MiniLM stage),
  * the same texts with mode="full" (every window embedded), for reference.
Every scored text is distinct, so the LRU cache never answers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def make_texts(n: int, size: int, inject: bool, seed: int) -> list[str]:
    import synth_data as sd  # neutral carriers (stdlib docstrings + templates), no external data

    rng = random.Random(seed)
    names = sorted(sd.CARRIERS)
    out = []
    fams = sorted(sd.FAMILY_TEMPLATES)
    while len(out) < n:
        c = names[len(out) % len(names)]
        t = sd.CARRIERS[c](rng, size, inject)
        if inject:
            t, _ = sd._json_escape_payload(t, sd.make_payload(rng, rng.choice(fams), c))
        if len(t) < size * 0.8:
            continue
        out.append(t[:size] if not inject else t)
    return out


def bench(clf, texts, kind="tool_output"):
    """Wall-clock and thread-CPU latency.  With intra_op_num_threads=1 onnxruntime runs on
    the calling thread, so CPU time is what a dedicated core would take even when the
    machine is shared (wall time then includes waiting for the core)."""
    lat, cpu, emb = [], [], 0
    for t in texts:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        r = clf.score(t, kind)
        lat.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
        emb += r.stage == "embed"
    return {"median_ms": round(statistics.median(lat), 2), "p99_ms": round(pct(lat, 0.99), 2),
            "cpu_median_ms": round(statistics.median(cpu), 2), "cpu_p99_ms": round(pct(cpu, 0.99), 2),
            "embedded_fraction": round(emb / len(texts), 3),
            "mean_chars": round(statistics.mean(len(t) for t in texts)), "n": len(texts)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed one)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else cpus[0]
    os.sched_setaffinity(0, {cpu})  # one core, as in serving

    t0 = time.perf_counter()
    from detectors.injection import InjectionClassifier
    t_import = time.perf_counter() - t0
    clf = InjectionClassifier(cache_size=0)
    t_load = time.perf_counter() - t0
    full = InjectionClassifier(mode="full", cache_size=0)

    # warm-up
    for t in make_texts(4, 2000, True, 99):
        clf.score(t, "tool_output")
        full.score(t, "tool_output")

    res = {"cpu": cpu, "load_s": round(t_load, 3), "import_s": round(t_import, 3),
           "loadavg_at_start": os.getloadavg(), "sizes": {}}
    for size in (1000, 20000):
        n = args.runs if size == 1000 else max(20, args.runs // 2)
        benign = make_texts(n, size, False, size)
        injected = make_texts(n, size, True, size + 1)
        res["sizes"][str(size)] = {
            "benign_cascade": bench(clf, benign),
            "injected_cascade": bench(clf, injected),
            "benign_full": bench(full, benign[: max(10, n // 3)]),
        }
    res["loadavg_at_end"] = os.getloadavg()
    res["targets_ms"] = {"1000": 10, "20000": 60}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
