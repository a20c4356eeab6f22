#!/usr/bin/env python3
"""In-process latency of one policy evaluation, per message type and engine.

    .venv/bin/python bench/bench_policy.py [--runs 3000] [--engines regorus,opa] [--bundle policies]

Times ``PolicyEngine.evaluate(input_json)`` (the call the pipeline makes for
every message: load the input into the engine, evaluate data.mcpfw.decision,
decode the decision) for four typical messages:

  tools_call_request    a client tools/call of read_file with one path
                        argument, on a server with a configured root
  tools_call_response   the server's answer: one short text content block
  tools_list_request    a client tools/list request
  tools_list_response   the server's tools/list result (four tools with
                        descriptions and input schemas, about 1.5 kB)

Each input has the shape the pipeline builds (firewall/schemas/policy-input.v1.json,
checked before timing), with the secrets detector having run and found
nothing. Every message must be allowed without redaction: a benchmark of a
broken policy would be meaningless, so a different decision aborts the run.

Prints one JSON document: for each engine and message type the median, p99,
mean and minimum in microseconds, plus the input size in bytes. With --floor
it also times a one-line policy (decision := {"allow": true}) on the same
inputs: the engine's fixed cost (loading the input, one evaluation, decoding
the result), which no policy can go below.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firewall.policy import create_engine, load_bundle  # noqa: E402

SERVER = {
    "name": "files",
    "command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/data"],
    "url": None,
    "info": {"name": "secure-filesystem-server", "version": "0.2.0"},
    "capabilities": {"tools": {}},
    "roots": ["/data"],
}

CALL_PARAMS = {"name": "read_file", "arguments": {"path": "/data/notes/todo.txt"}}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TOOLS = [
    {
        "name": "read_file",
        "description": "Read the complete contents of a file from the file system. Only works within allowed directories.",
        "inputSchema": _schema({"path": {"type": "string"}}, ["path"]),
    },
    {
        "name": "write_file",
        "description": "Create a new file or completely overwrite an existing file with new content. Use with caution.",
        "inputSchema": _schema({"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"]),
    },
    {
        "name": "list_directory",
        "description": "Get a detailed listing of all files and directories in a specified path, marked [FILE] or [DIR].",
        "inputSchema": _schema({"path": {"type": "string"}}, ["path"]),
    },
    {
        "name": "search_files",
        "description": "Recursively search for files and directories matching a pattern, starting from a path.",
        "inputSchema": _schema(
            {
                "path": {"type": "string"},
                "pattern": {"type": "string"},
                "excludePatterns": {"type": "array", "items": {"type": "string"}, "default": []},
            },
            ["path", "pattern"],
        ),
    },
]


def base_input(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "direction": "client_to_server",
        "kind": "request",
        "method": "tools/list",
        "id": 12,
        "params": {},
        "tool": None,
        "result": None,
        "error": None,
        "request": None,
        "resources": {"paths": [], "urls": []},
        "protocol": {"era": "2025-11-25", "version": "2025-11-25"},
        "transport": "stdio",
        "server": SERVER,
        "client": {"info": {"name": "claude-code", "version": "1.0.0"}, "capabilities": {"roots": {}}},
        "session": {"id": "0193c2a4f1e07b6d9a8c2e4f"},
        "findings": {"secrets": []},
        "identity": None,
        "rate": None,
        "registry": None,
    }
    doc.update(fields)
    return doc


MESSAGES: dict[str, dict[str, Any]] = {
    "tools_call_request": base_input(
        method="tools/call",
        params=CALL_PARAMS,
        tool=CALL_PARAMS,
        resources={
            "paths": [
                {
                    "pointer": "/params/arguments/path",
                    "raw": "/data/notes/todo.txt",
                    "canonical": "/data/notes/todo.txt",
                }
            ],
            "urls": [],
        },
    ),
    "tools_call_response": base_input(
        direction="server_to_client",
        kind="response",
        method="tools/call",
        params=None,
        tool=CALL_PARAMS,
        result={"content": [{"type": "text", "text": "- buy milk\n- review the firewall benchmark\n"}]},
        request={"method": "tools/call", "params": CALL_PARAMS},
    ),
    "tools_list_request": base_input(),
    "tools_list_response": base_input(
        direction="server_to_client",
        kind="response",
        params=None,
        result={"tools": TOOLS},
        request={"method": "tools/list", "params": {}},
    ),
}


def check_inputs() -> None:
    """Every benchmark input must be a valid policy input (skipped without jsonschema)."""
    try:
        import jsonschema
    except ImportError:
        return
    schema = json.loads((ROOT / "firewall" / "schemas" / "policy-input.v1.json").read_text())
    for doc in MESSAGES.values():
        jsonschema.validate(doc, schema)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def time_engine(engine: Any, payload: str, runs: int, warmup: int) -> dict[str, float]:
    evaluate = engine.evaluate
    for _ in range(warmup):
        evaluate(payload)
    samples = []
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            start = clock()
            evaluate(payload)
            samples.append((clock() - start) / 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 1),
        "p99_us": round(percentile(samples, 0.99), 1),
        "mean_us": round(statistics.fmean(samples), 1),
        "min_us": round(samples[0], 1),
    }


def floor(engines: list[str], runs: int, warmup: int) -> dict[str, Any]:
    """Timings of a policy that allows everything without looking at the input."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "floor.rego").write_text('package mcpfw\n\ndecision := {"allow": true}\n')
        bundle = load_bundle(tmp)
        for name in engines:
            engine = create_engine(name, bundle)
            try:
                out[name] = {
                    label: time_engine(engine, json.dumps(doc, separators=(",", ":")), runs, warmup)
                    for label, doc in MESSAGES.items()
                }
            finally:
                engine.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="timed evaluations per message type and engine")
    parser.add_argument("--warmup", type=int, default=200, help="untimed evaluations first")
    parser.add_argument("--engines", default="regorus,opa", help="comma-separated engine names")
    parser.add_argument("--bundle", default=str(ROOT / "policies"), help="policy bundle directory")
    parser.add_argument("--floor", action="store_true", help="also time a one-line policy (the engine's fixed cost)")
    args = parser.parse_args()

    check_inputs()
    bundle = load_bundle(args.bundle)
    report: dict[str, Any] = {
        "bundle": str(args.bundle),
        "bundle_digest": bundle.digest,
        "python": sys.version.split()[0],
        "runs": args.runs,
        "input_bytes": {},
        "engines": {},
    }
    for label, doc in MESSAGES.items():
        report["input_bytes"][label] = len(json.dumps(doc, separators=(",", ":")).encode())
    engines = [n.strip() for n in args.engines.split(",") if n.strip()]
    for name in engines:
        engine = create_engine(name, bundle)
        results: dict[str, Any] = {}
        try:
            for label, doc in MESSAGES.items():
                payload = json.dumps(doc, separators=(",", ":"))
                decision = engine.evaluate(payload)
                if decision.get("allow") is not True or decision.get("reasons") or decision.get("redact"):
                    raise SystemExit(f"{name}: unexpected decision for {label}: {json.dumps(decision)}")
                results[label] = time_engine(engine, payload, args.runs, args.warmup)
        finally:
            engine.close()
        report["engines"][name] = results
    if args.floor:
        report["floor"] = floor(engines, args.runs, args.warmup)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
