#!/usr/bin/env python3
"""In-process latency of one bearer-token check (JwtVerifier.verify) with cached keys.

    .venv/bin/python bench/bench_auth.py [--runs 20000] [--tokens 500]

Starts a local identity provider on loopback (a JWKS with one RSA 2048 and one P-256 key,
generated with joserfc), lets the verifier fetch the JWKS once, then times
``verify(token, audiences)`` on distinct valid tokens, cycled ``--runs`` times:

  rs256            RS256, RSA 2048
  es256            ES256, P-256
  baseline         the direct path: calling a function that does nothing, in the same
                   loop (the harness's own cost, what "no auth" costs)
  rs256_sig_only   joserfc's RS256 signature check alone on the same tokens
  es256_sig_only   the same for ES256: the cryptographic floor verify() cannot go below
  refuse_alg_none  an unsigned token (refused before any key lookup)
  refuse_bad_sig   an RS256 token with a tampered payload (refused after the signature check)

Each token must verify (or be refused) as expected before timing, and the provider must
have served the JWKS exactly once at the end: a run that did I/O on the hot path aborts.

Prints one JSON document: per case the median, p99, mean and minimum in microseconds and
the throughput of one thread (verifications per second, from the mean), plus the median
added over the baseline for the two verify cases.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.util import urlsafe_b64decode

from firewall.config import JwtConfig
from firewall.identity import AuthError
from firewall.identity.jwt import JwtVerifier

AUDIENCE = "https://fw.example/mcp"


class Provider:
    """Serves one JWKS on loopback and counts the fetches."""

    def __init__(self, keys: list[Any]) -> None:
        self.body = json.dumps(KeySet(keys).as_dict(private=False)).encode()
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(provider.body)))
                self.end_headers()
                self.wfile.write(provider.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def time_calls(call: Callable[[Any], Any], items: list[Any], runs: int, warmup: int) -> dict[str, float]:
    count = len(items)
    for i in range(warmup):
        call(items[i % count])
    samples = []
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            item = items[i % count]
            start = clock()
            call(item)
            samples.append((clock() - start) / 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    samples.sort()
    mean = statistics.fmean(samples)
    return {
        "median_us": round(statistics.median(samples), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "mean_us": round(mean, 2),
        "min_us": round(samples[0], 2),
        "per_second": round(1e6 / mean),
    }


def b64json(doc: Any) -> str:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed calls first")
    parser.add_argument("--tokens", type=int, default=500, help="distinct tokens per key type (cycled)")
    args = parser.parse_args()

    rsa = RSAKey.generate_key(2048, parameters={"kid": "bench-rsa", "alg": "RS256", "use": "sig"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "bench-ec", "alg": "ES256", "use": "sig"})
    provider = Provider([rsa, ec])
    issuer = "https://idp.example/realms/bench"
    try:
        verifier = JwtVerifier(JwtConfig(issuer=issuer, jwks_url=provider.url, claims=["email"]))
        audiences = [AUDIENCE]
        now = int(time.time())

        def mint(key: Any, alg: str, n: int) -> str:
            claims = {
                "iss": issuer, "aud": [AUDIENCE, "account"], "sub": f"user-{n}", "tenant": f"tenant-{n % 7}",
                "iat": now, "exp": now + 3600, "jti": f"bench-{alg}-{n}", "email": f"user-{n}@example.com",
                "roles": ["reader", "writer"], "scope": "openid profile mcp:tools",
            }
            return jwt.encode({"alg": alg, "kid": key.kid, "typ": "at+jwt"}, claims, key)

        tokens = {
            "rs256": [mint(rsa, "RS256", n) for n in range(args.tokens)],
            "es256": [mint(ec, "ES256", n) for n in range(args.tokens)],
        }
        for label, batch in tokens.items():
            for token in batch:
                identity = verifier.verify(token, audiences)
                assert identity.subject is not None and identity.tenant is not None, label

        def sig_only(key: Any, alg: str, batch: list[str]) -> tuple[Callable[[Any], Any], list[Any]]:
            model = jws.JWSRegistry.algorithms[alg]
            public = RSAKey.import_key(key.as_dict(private=False)) if alg == "RS256" else ECKey.import_key(
                key.as_dict(private=False))
            items = []
            for token in batch:
                head, payload, signature = token.encode().split(b".")
                items.append((head + b"." + payload, signature))

            def check(item: tuple[bytes, bytes]) -> None:
                if not model.verify(item[0], urlsafe_b64decode(item[1]), public):
                    raise SystemExit("signature check failed")

            return check, items

        none_tokens = [f"{b64json({'alg': 'none'})}.{token.split('.')[1]}." for token in tokens["rs256"]]
        tampered = []
        for token in tokens["rs256"]:
            head, _, signature = token.split(".")
            tampered.append(f"{head}.{b64json({'iss': issuer, 'sub': 'admin'})}.{signature}")

        def refused(expected: str) -> Callable[[str], None]:
            def call(token: str) -> None:
                try:
                    verifier.verify(token, audiences)
                except AuthError as exc:
                    if exc.description != expected:
                        raise SystemExit(f"unexpected refusal: {exc.description}") from None
                    return
                raise SystemExit("a forged token verified")

            return call

        def nothing(token: str) -> None:
            return None

        def verify(token: str) -> Any:
            return verifier.verify(token, audiences)

        cases: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
            "baseline": (nothing, tokens["rs256"]),
            "rs256": (verify, tokens["rs256"]),
            "es256": (verify, tokens["es256"]),
            "rs256_sig_only": sig_only(rsa, "RS256", tokens["rs256"]),
            "es256_sig_only": sig_only(ec, "ES256", tokens["es256"]),
            "refuse_alg_none": (refused("token algorithm not allowed"), none_tokens),
            "refuse_bad_sig": (refused("bad signature"), tampered),
        }
        results = {label: time_calls(call, items, args.runs, args.warmup) for label, (call, items) in cases.items()}
        if provider.fetches != 1:
            raise SystemExit(f"the JWKS was fetched {provider.fetches} times: the hot path did I/O")
    finally:
        provider.close()

    base = results["baseline"]["median_us"]
    report = {
        "python": sys.version.split()[0],
        "joserfc": version("joserfc"),
        "cryptography": version("cryptography"),
        "runs": args.runs,
        "distinct_tokens": args.tokens,
        "token_bytes": {label: len(batch[0]) for label, batch in tokens.items()},
        "jwks_fetches": provider.fetches,
        "cases": results,
        "added_median_us": {label: round(results[label]["median_us"] - base, 2) for label in ("rs256", "es256")},
        "overhead_over_signature_median_us": {
            label: round(results[label]["median_us"] - results[f"{label}_sig_only"]["median_us"], 2)
            for label in ("rs256", "es256")
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
