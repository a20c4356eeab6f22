#!/usr/bin/env python3
"""Per-message cost of rate limiting: no limits, counters in memory, counters in Redis.

    .venv/bin/python bench/bench_ratelimit.py [--messages 3000] [--rounds 5] [--redis-url redis://127.0.0.1:6379/0]

Two rules apply to every tools/call: 1,000,000 requests and 1 GB per tenant per minute,
and 64 calls in flight per subject (so each request takes a slot and each response gives
it back; nothing is ever exceeded). Redis runs the counting as one Lua script call per
request and one ZREM per response.

Part ``enricher``: the rate enricher alone (enrich + after), for a request and for its
response. Part ``inspector``: the whole in-process pipeline (parse, enrichers, regorus
evaluation of the default bundle, decision; the audit sink discards rows), every other
detector off, for a request and its response, against the same pipeline without rate
limits. Configurations take turns within each round so that machine noise hits them
alike; the figures are over all rounds. Prints one JSON document: median and p99 in
microseconds, throughput in messages per second on one thread, and the added cost over
no limits.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson

from firewall.config import Config
from firewall.jsonrpc import classify
from firewall.pipeline import C2S, S2C, Inspector, MessageContext
from firewall.policy.decision import Decision
from firewall.ratelimit import RateEnricher
from firewall.runtime import build_firewall
from firewall.session import PendingRequest, ServerIdentity, Session

IDENTITY = {"subject": "alice", "tenant": "acme", "roles": ["admin"], "scopes": [], "key_id": "k-1",
            "auth_method": "api_key", "claims": {}}
RULES = [
    {"name": "tenant-minute", "per": ["tenant"], "requests": 1_000_000, "bytes": 1_000_000_000, "window_seconds": 60},
    {"name": "in-flight", "per": ["subject"], "concurrent": 64},
]
ALLOW = Decision(allow=True)


class NullAudit:
    accepting = True

    def record(self, row: dict[str, Any]) -> None:
        return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stats(us: list[float]) -> dict[str, float]:
    return {
        "median_us": round(statistics.median(us), 1),
        "p99_us": round(pct(us, 0.99), 1),
        "throughput_per_s": round(1e6 / statistics.fmean(us)),
        "n": len(us),
    }


def rate_limits(backend: str, url: str, prefix: str) -> dict[str, Any]:
    return {"backend": backend, "redis_url": url, "key_prefix": prefix, "rules": RULES}


# -- the enricher alone ------------------------------------------------------------------------


def enricher_round(enricher: RateEnricher, sess: Session, n: int, start_id: int) -> tuple[list[float], list[float]]:
    clock = time.perf_counter_ns
    req_us, resp_us = [], []
    pending = PendingRequest("tools/call", {}, None, 0.0)
    for i in range(start_id, start_id + n):
        body = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "rate"}}}
        msg = classify(body)
        ctx = MessageContext(msg, C2S, sess, "tools/call", body["params"], body["params"], None, 96, identity=IDENTITY)
        resp = classify({"jsonrpc": "2.0", "id": i, "result": {"content": []}})
        rctx = MessageContext(resp, S2C, sess, "tools/call", None, None, pending, 60)
        t0 = clock()
        enricher.enrich(ctx)
        enricher.after(ctx, ALLOW, body)
        t1 = clock()
        enricher.enrich(rctx)
        enricher.after(rctx, ALLOW, {})
        t2 = clock()
        assert ctx.rate is not None and ctx.rate["error"] is None and not ctx.rate["exceeded"], ctx.rate
        req_us.append((t1 - t0) / 1000.0)
        resp_us.append((t2 - t1) / 1000.0)
    return req_us, resp_us


# -- the whole pipeline ------------------------------------------------------------------------


def inspector_for(tmp: Path, name: str, limits: dict[str, Any] | None) -> tuple[Inspector, Any]:
    cfg: dict[str, Any] = {
        "audit": {"path": str(tmp / f"{name}.duckdb")},
        "detectors": {k: {"enabled": False} for k in ("secrets", "pii", "poisoning", "injection", "intent")},
        "registry": {"mode": "off"},
    }
    if limits is not None:
        cfg["rate_limits"] = limits
    fw = build_firewall(Config.model_validate(cfg))
    inspector = Inspector(
        fw.engine, NullAudit(), bundle_digest=fw.bundle.digest, limits=fw.config.limits,
        enrichers=fw.inspector._enrichers,
    )
    return inspector, fw


def inspector_round(inspector: Inspector, sess: Session, n: int, start_id: int) -> tuple[list[float], list[float]]:
    clock = time.perf_counter_ns
    req_us, resp_us = [], []
    inspect = inspector.inspect
    for i in range(start_id, start_id + n):
        req = orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "rate"}}})
        resp = orjson.dumps({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": "ok"}]}})
        t0 = clock()
        out = inspect(req, "client_to_server", sess, identity=IDENTITY)
        t1 = clock()
        inspect(resp, "server_to_client", sess)
        t2 = clock()
        assert out.forward is not None, out.reply
        req_us.append((t1 - t0) / 1000.0)
        resp_us.append((t2 - t1) / 1000.0)
    return req_us, resp_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="request/response pairs per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    prefix = f"mcpfw:bench:{uuid.uuid4().hex[:8]}:"
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "messages_per_round": args.messages,
        "rounds": args.rounds,
        "rules": RULES,
    }
    import redis

    client = redis.Redis.from_url(args.redis_url)
    report["redis_version"] = client.info("server")["redis_version"]
    tmp = Path(tempfile.mkdtemp(prefix="mcpfw-bench-rate-"))
    firewalls = []
    try:
        # Part 1: the enricher alone.
        enrichers = {
            backend: RateEnricher(Config.model_validate({"rate_limits": rate_limits(backend, args.redis_url, prefix + backend + ":")}).rate_limits)
            for backend in ("memory", "redis")
        }
        # Part 2: the pipeline, without and with limits.
        inspectors: dict[str, Inspector] = {}
        for name, limits in (("none", None), ("memory", rate_limits("memory", args.redis_url, prefix + "im:")),
                             ("redis", rate_limits("redis", args.redis_url, prefix + "ir:"))):
            inspectors[name], fw = inspector_for(tmp, name, limits)
            firewalls.append(fw)
        sess = Session(ServerIdentity("bench"), transport="stdio", cwd="/", resolve_symlinks=False)
        for backend, enricher in enrichers.items():
            enricher_round(enricher, sess, args.warmup, 10_000_000)
        for inspector in inspectors.values():
            inspector_round(inspector, sess, args.warmup, 20_000_000)

        samples: dict[str, dict[str, tuple[list[float], list[float]]]] = {
            "enricher": {k: ([], []) for k in enrichers},
            "inspector": {k: ([], []) for k in inspectors},
        }
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            next_id = 0
            for _ in range(args.rounds):
                for backend, enricher in enrichers.items():
                    req, resp = enricher_round(enricher, sess, args.messages, next_id)
                    samples["enricher"][backend][0].extend(req)
                    samples["enricher"][backend][1].extend(resp)
                    next_id += args.messages
                for name, inspector in inspectors.items():
                    req, resp = inspector_round(inspector, sess, args.messages, next_id)
                    samples["inspector"][name][0].extend(req)
                    samples["inspector"][name][1].extend(resp)
                    next_id += args.messages
                gc.collect()
        finally:
            if gc_was_enabled:
                gc.enable()

        for part, by_config in samples.items():
            out: dict[str, Any] = {}
            for name, (req, resp) in by_config.items():
                out[name] = {"request": stats(req), "response": stats(resp)}
            if part == "inspector":
                base = out["none"]
                for name in ("memory", "redis"):
                    out[name]["added_median_us"] = {
                        kind: round(out[name][kind]["median_us"] - base[kind]["median_us"], 1) for kind in ("request", "response")
                    }
            report[part] = out
    finally:
        for fw in firewalls:
            fw.close()
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
