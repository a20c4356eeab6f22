"""The official MCP conformance suite passes through the firewall exactly as it passes directly.

Its server scenarios run against a Python SDK server with the suite's fixtures
(tests/peers/conformance_server.py), directly and through ``mcpfw proxy`` in reverse mode:
the lean listener (one worker and two), and mitmproxy.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from peers.http_harness import CONFORMANCE_CLI, conformance_server, firewall_cli, free_port, node22

LINE = re.compile(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed", re.MULTILINE)


def run_suite(url: str) -> dict[str, tuple[int, int]]:
    node = node22()
    assert node, "Node.js 22 missing: run scripts/dev setup"
    done = subprocess.run([node, str(CONFORMANCE_CLI), "server", "--url", url, "--suite", "active"],
                          capture_output=True, text=True, timeout=120)
    results = {name: (int(ok), int(bad)) for name, ok, bad in LINE.findall(done.stdout)}
    assert results, done.stdout + done.stderr
    return results


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with conformance_server(port):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def direct(server):
    results = run_suite(server)
    assert all(bad == 0 for _, bad in results.values()), results  # the fixture server is complete
    assert len(results) >= 30
    return results


@pytest.mark.parametrize("flags", [[], ["--workers", "2"], ["--listener", "mitmproxy"]], ids=["lean", "lean-2-workers", "mitmproxy"])
def test_suite_through_the_firewall(server, direct, tmp_path, flags):
    port = free_port()
    with firewall_cli(server, port, tmp_path / "audit.duckdb", *flags, log=tmp_path / "firewall.log"):
        through = run_suite(f"http://127.0.0.1:{port}/mcp")
    assert through == direct
