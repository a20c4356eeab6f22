"""What the tool registry costs per message: tools/list comparison and tools/call check.

Usage: python bench/bench_registry.py [--rounds N]
Uses server-everything's real tools/list result. Prints microseconds per operation for the
enricher alone and for the whole pipeline (policy included), with and without the registry.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from mcp_peers import fetch_lists, server_commands  # noqa: E402

from firewall.config import LimitsConfig  # noqa: E402
from firewall.jsonrpc import parse_frame  # noqa: E402
from firewall.paths import DEFAULT_POLICY_DIR  # noqa: E402
from firewall.pipeline import Inspector, MessageContext  # noqa: E402
from firewall.policy.bundle import load_bundle  # noqa: E402
from firewall.policy.engine import create_engine  # noqa: E402
from firewall.registry.enricher import RegistryEnricher  # noqa: E402
from firewall.registry.store import RegistryStore  # noqa: E402
from firewall.registry.view import Modes  # noqa: E402
from firewall.session import PendingRequest, ServerIdentity, Session  # noqa: E402


class NullAudit:
    accepting = True

    def record(self, row: dict[str, Any]) -> None:
        return None


def per_op(fn: Any, rounds: int) -> float:
    """CPU microseconds per call: the best of 5 batches (CPU time, so other load matters less)."""
    samples = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(rounds):
            fn()
        samples.append((time.process_time() - start) / rounds * 1e6)
    return min(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp())
    tools = fetch_lists(server_commands(work)["server-everything"])["tools/list"]["result"]["tools"]
    store = RegistryStore(work / "registry.yaml", work / "registry.state.json")
    enricher = RegistryEnricher(store, Modes())
    session = Session(ServerIdentity("everything"), transport="stdio", cwd="/", resolve_symlinks=False)
    list_frame = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}})
    call_frame = orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}})
    list_msg = parse_frame(list_frame, max_bytes=1 << 24, max_depth=64, max_batch=10).items[0]
    call_msg = parse_frame(call_frame, max_bytes=1 << 24, max_depth=64, max_batch=10).items[0]
    pending = PendingRequest("tools/list", {}, None, 0.0)

    def list_ctx() -> MessageContext:
        return MessageContext(list_msg, "server_to_client", session, "tools/list", None, None, pending)  # type: ignore[arg-type]

    def call_ctx() -> MessageContext:
        return MessageContext(call_msg, "client_to_server", session, "tools/call", call_msg.body["params"],  # type: ignore[union-attr]
                              {"name": "echo", "arguments": {"message": "hi"}}, None)

    enricher.enrich(list_ctx())  # first use: pins
    print(f"server-everything: {len(tools)} tools, {len(list_frame)} bytes")

    def uncached_list() -> None:
        enricher._lists.clear()
        enricher.enrich(list_ctx())

    print(f"enricher, tools/list, digests computed  {per_op(uncached_list, max(rounds // 10, 50)):8.1f} us")
    print(f"enricher, tools/list, clean (cached)    {per_op(lambda: enricher.enrich(list_ctx()), rounds):8.1f} us")
    print(f"enricher, tools/call check              {per_op(lambda: enricher.enrich(call_ctx()), rounds * 10):8.2f} us")
    other = MessageContext(call_msg, "server_to_client", session, "notifications/progress", None, None, None)  # type: ignore[arg-type]
    other.message = parse_frame(b'{"jsonrpc":"2.0","method":"notifications/progress","params":{}}', max_bytes=1 << 20, max_depth=64, max_batch=10).items[0]  # type: ignore[assignment]
    print(f"enricher, any other message             {per_op(lambda: enricher.enrich(other), rounds * 10):8.2f} us")

    bundle = load_bundle(DEFAULT_POLICY_DIR)
    for label, enrichers in (("without registry", ()), ("with registry   ", (enricher,))):
        inspector = Inspector(create_engine("regorus", bundle), NullAudit(), bundle_digest=bundle.digest,
                              limits=LimitsConfig(), enrichers=enrichers)
        pipeline_session = Session(ServerIdentity("everything"), transport="stdio", cwd="/", resolve_symlinks=False)

        def call_through() -> None:
            inspector.inspect(call_frame, "client_to_server", pipeline_session)

        def list_through() -> None:
            inspector.inspect(b'{"jsonrpc":"2.0","id":9,"method":"tools/list","params":{}}', "client_to_server", pipeline_session)
            inspector.inspect(list_frame.replace(b'"id":1', b'"id":9'), "server_to_client", pipeline_session)

        print(f"pipeline {label}: tools/call {per_op(call_through, rounds):7.1f} us, "
              f"tools/list request+response {per_op(list_through, max(rounds // 10, 50)):7.1f} us")


if __name__ == "__main__":
    main()
