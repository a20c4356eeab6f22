"""Rate limits over HTTP: 429 with Retry-After, and one limit shared by two firewall
processes through a real Redis (as two instances behind a load balancer)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
import yaml

from firewall import errors
from peers.http_harness import conformance_server, firewall_cli, free_port, http
from support import audit_rows

REDIS_URL = "redis://127.0.0.1:6379/15"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "rate-test", "version": "1"}}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}


def call(url: str, n: int):
    body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": f"call {n}"}, "_meta": META}}
    return http("POST", url, json_body=body, headers=HEADERS)


@pytest.fixture
def prefix():
    value = f"mcpfw:test:{uuid.uuid4().hex}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=value + "*"):
        client.delete(key)


def write_config(path: Path, upstream: str, prefix: str, backend: str) -> Path:
    config = {
        "proxy": {"upstreams": [{"url": upstream, "name": "conformance"}]},
        "rate_limits": {"backend": backend, "redis_url": REDIS_URL, "key_prefix": prefix, "rules": [
            {"name": "echo-per-server", "per": ["server", "tool"], "methods": ["tools/call"], "requests": 5,
             "window_seconds": 120},
        ]},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_limited_call_gets_429_and_retry_after(tmp_path, prefix, backend):
    port, fw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{port}/mcp"
    config = write_config(tmp_path / "mcpfw.yaml", upstream, prefix, backend)
    with conformance_server(port), firewall_cli("", fw_port, tmp_path / "audit.duckdb", "--config", str(config)):
        answers = [call(f"http://127.0.0.1:{fw_port}/mcp", n) for n in range(1, 8)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    limited = answers[-1]
    error = limited.json()["error"]
    assert error["code"] == errors.RATE_LIMITED and error["data"]["retry_after_seconds"] > 100
    assert 100 < int(limited.headers["retry-after"]) <= 120
    assert "echo-per-server" in error["message"]
    (row,) = audit_rows(tmp_path / "audit.duckdb", f"decision_id = '{error['data']['decision_id']}'")
    rate = json.loads(row["rate"])
    assert rate["backend"] == backend and rate["limits"][0]["count"] == 7 and rate["exceeded"] == ["echo-per-server"]


def test_two_firewall_processes_share_one_redis_limit(tmp_path, prefix):
    port, first, second = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{port}/mcp"
    config = write_config(tmp_path / "mcpfw.yaml", upstream, prefix, "redis")
    with conformance_server(port), \
            firewall_cli("", first, tmp_path / "a.duckdb", "--config", str(config)), \
            firewall_cli("", second, tmp_path / "b.duckdb", "--config", str(config)):
        # A load balancer alternating between the two instances.
        statuses = [call(f"http://127.0.0.1:{(first, second)[n % 2]}/mcp", n).status_code for n in range(12)]
    assert statuses.count(200) == 5 and statuses.count(429) == 7
    assert statuses[:5] == [200] * 5  # both instances served, until the shared limit ran out
    assert {200, 429} <= set(statuses[0::2]) and {200, 429} <= set(statuses[1::2])


def test_redis_down_fails_closed_and_says_so(tmp_path, prefix):
    port, fw_port = free_port(), free_port()
    config_path = write_config(tmp_path / "mcpfw.yaml", f"http://127.0.0.1:{port}/mcp", prefix, "redis")
    config = yaml.safe_load(config_path.read_text())
    with __import__("socket").socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config["rate_limits"]["redis_url"] = f"redis://127.0.0.1:{dead}/0"
    config_path.write_text(yaml.safe_dump(config))
    with conformance_server(port), firewall_cli("", fw_port, tmp_path / "audit.duckdb", "--config", str(config_path)):
        answer = call(f"http://127.0.0.1:{fw_port}/mcp", 1)
    error = answer.json()["error"]
    assert error["code"] == errors.POLICY_DENIED and error["data"]["reasons"][0]["code"] == "rate_store_unavailable"
    (row,) = audit_rows(tmp_path / "audit.duckdb", f"decision_id = '{error['data']['decision_id']}'")
    assert json.loads(row["rate"])["error"]


def test_memory_counters_with_several_workers_are_refused_at_start(tmp_path, prefix):
    """Each worker would count alone: a limit of 4 let 8 of 12 through with two workers."""
    import subprocess
    import sys

    config_path = write_config(tmp_path / "mcpfw.yaml", f"http://127.0.0.1:{free_port()}/mcp", prefix, "memory")
    done = subprocess.run([sys.executable, "-m", "firewall.cli", "proxy", "--config", str(config_path), "--workers", "2",
                           "--listen", f"127.0.0.1:{free_port()}", "--audit", str(tmp_path / "a.duckdb")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "backend memory counts in each process" in done.stderr and "Traceback" not in done.stderr
