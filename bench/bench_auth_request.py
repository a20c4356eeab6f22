#!/usr/bin/env python3
"""What authentication adds to one HTTP request inside the firewall, auth off vs on, same run.

    .venv/bin/python bench/bench_auth_request.py [--runs 5000]

Builds the real reverse-mode inspection (default policy bundle, audit on, detectors on)
three times: auth off, auth required with JWTs (a JWKS file with an RSA 2048 key made
here), and auth required with an API key. Then times ``HttpInspection.request()`` (the
whole per-request path before anything goes upstream: classification, authentication,
tenant check, session, the policy decision and the audit record) for a small
``tools/call``, interleaving the three variants in rounds so that the machine's noise
falls on all of them. Each JWT request carries a distinct token (no result is cached).
Prints JSON: median and p99 per variant in microseconds, and the median added by each
kind of credential over auth off. Target (issue 5): at most 200 µs added median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from joserfc import jwt  # noqa: E402
from joserfc.jwk import KeySet, RSAKey  # noqa: E402

from firewall.config import Config  # noqa: E402
from firewall.identity.apikeys import KeyStore  # noqa: E402
from firewall.runtime import build_firewall  # noqa: E402
from firewall.transports.http.exchange import Exchange, Request  # noqa: E402
from firewall.transports.http.service import build_inspection, build_router  # noqa: E402

ISSUER = "https://idp.bench.example"
UPSTREAM = "http://127.0.0.1:9/mcp"  # never contacted: request() decides before any I/O
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}'


class Headers:
    def __init__(self, items: dict[str, str]) -> None:
        self._items = items

    def get(self, name: str) -> str | None:
        return self._items.get(name)

    def getall(self, name: str) -> list[str]:
        value = self._items.get(name)
        return [value] if value is not None else []

    def names(self):
        return self._items.keys()


def build(tmp: Path, name: str, auth: dict | None) -> tuple:
    raw = {
        "audit": {"path": str(tmp / f"{name}.duckdb")},
        "registry": {"file": str(tmp / f"{name}.registry.yaml")},
        "proxy": {"upstreams": [{"url": UPSTREAM, "name": "bench"}], "public_url": "http://fw.bench"},
    }
    if auth:
        raw["auth"] = auth
    config = Config.model_validate(raw)
    fw = build_firewall(config)
    core = build_inspection(fw, reverse=True, poster=None)
    route = build_router(config).routes[0]
    return fw, core, route


def time_requests(core, route, headers_for, runs: int) -> list[float]:
    samples = []
    for i in range(runs):
        headers = Headers(headers_for(i))
        request = Request("POST", "/mcp", "/mcp", "fw.bench", headers, BODY)
        started = time.perf_counter()
        result = core.request(route, request)
        samples.append((time.perf_counter() - started) * 1e6)
        if not isinstance(result, Exchange):
            raise SystemExit(f"request {i} was refused: {getattr(result, 'status', result)} {getattr(result, 'body', b'')[:200]!r}")
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": round(statistics.median(ordered), 1), "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
            "n": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000, help="requests per variant (spread over 10 rounds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        key = RSAKey.generate_key(2048, parameters={"kid": "bench-1", "alg": "RS256"})
        (tmp / "jwks.json").write_text(json.dumps(KeySet([key]).as_dict(private=False)))
        store = tmp / "keys.sqlite"
        _, api_key = KeyStore(store).create("acme", "bench", roles=["admin"])
        jwt_auth = {"mode": "required", "jwt": {"issuer": ISSUER, "jwks_file": str(tmp / "jwks.json")},
                    "api_keys": {"store": str(store)}}
        variants = {
            "auth_off": (build(tmp, "off", None), lambda i: {}),
            "jwt": (build(tmp, "jwt", jwt_auth), None),
            "api_key": (build(tmp, "key", {"mode": "required", "api_keys": {"store": str(store)}}),
                        lambda i: {"authorization": f"Bearer {api_key}"}),
        }
        now = int(time.time())
        tokens = [
            jwt.encode({"alg": "RS256", "kid": "bench-1"}, {
                "iss": ISSUER, "sub": f"user-{i}", "tenant": "acme", "roles": ["admin"],
                "aud": "http://fw.bench/mcp", "iat": now, "exp": now + 3600,
            }, key)
            for i in range(args.runs)
        ]
        variants["jwt"] = (variants["jwt"][0], lambda i: {"authorization": f"Bearer {tokens[i]}"})
        rounds = 10
        per_round = max(1, args.runs // rounds)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for name, ((_, core, route), headers_for) in variants.items():  # warm-up (policy, detectors, keys)
            time_requests(core, route, headers_for, 50)
        for r in range(rounds):
            for name, ((_, core, route), headers_for) in variants.items():
                offset = r * per_round
                samples[name] += time_requests(core, route, lambda i, h=headers_for, o=offset: h(i + o), per_round)
        for (fw, _, _), _ in variants.values():
            fw.close()
    report = {name: summary(values) for name, values in samples.items()}
    base = report["auth_off"]["median_us"]
    report["added_median_us"] = {name: round(report[name]["median_us"] - base, 1) for name in ("jwt", "api_key")}
    report["target_added_median_us"] = 200
    report["target_met"] = all(v <= 200 for v in report["added_median_us"].values())
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
