"""Prometheus metrics: counted from the decisions, summed over real firewall processes."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from firewall.metrics import MetricsRecorder, exposition, merged_snapshot
from support import audit_rows, shim_command, time_server
from peers.http_harness import everything_server, firewall_cli, free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels (parsing it checks the format)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls))


def show(directory: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "firewall.cli", "metrics", "show", "--dir", str(directory)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return samples(done.stdout)


def test_stdio_shims_are_summed_and_ended_processes_keep_counting(tmp_path):
    audit = tmp_path / "audit.duckdb"
    server = time_server()

    async def session(timezone: str) -> None:
        command = shim_command(audit, server=server)
        params = StdioServerParameters(command=command[0], args=command[1:])
        async with Client(params) as client:
            await client.call_tool("get_current_time", {"timezone": timezone})

    for timezone in ("Europe/Paris", "Asia/Tokyo"):  # two shim processes, one after the other
        anyio.run(session, timezone)
    calls = audit_rows(audit, "method = 'tools/call' AND direction = 'client_to_server'", at_least=2)
    directory = tmp_path / "metrics"  # next to the audit file, as the shims were not told otherwise
    found = show(directory)
    assert value(found, "mcpfw_tool_calls_total", tool="get_current_time", decision="allow") == len(calls) == 2
    assert value(found, "mcpfw_messages_total", method="tools/call", direction="server_to_client", transport="stdio") == 2
    assert value(found, "mcpfw_audit_rows_written_total") == len(audit_rows(audit))
    assert value(found, "mcpfw_processes") == 0  # both ended
    # the ended processes' files are folded into one, and their counts stay
    assert sorted(p.name for p in directory.glob("*.json")) == ["labels.json", "retired.json"]
    assert show(directory) == found


def test_proxy_workers_serve_one_sum_that_matches_the_audit_log(tmp_path):
    upstream, port, metrics_port = free_port(), free_port(), free_port()
    audit = tmp_path / "audit.duckdb"
    config = tmp_path / "mcpfw.yaml"
    config.write_text(f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n  interval_seconds: 0.2\n")

    async def calls(url: str) -> None:
        async with Client(url) as client:
            for i in range(5):
                await client.call_tool("echo", {"message": f"m{i}"})
            with pytest.raises(MCPError):  # the default policy denies it (secret_file)
                await client.call_tool("echo", {"path": "/home/u/.ssh/id_rsa"})
            try:  # a name too long for a label; the server refuses the unknown tool as it likes
                await client.call_tool("nonexistent-tool-" + "x" * 300, {})
            except MCPError:
                pass

    with everything_server(upstream, "streamableHttp"):
        # (registry off: server-everything announces list changes, which ask clients to list again)
        with firewall_cli(f"http://127.0.0.1:{upstream}/mcp", port, audit, "--workers", "2", "--config", str(config),
                          "--registry-mode", "off"):
            for _ in range(2):
                anyio.run(calls, f"http://127.0.0.1:{port}/mcp")
            time.sleep(0.6)  # a worker writes its counts every 0.2 s
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    found = samples(text)
    rows = audit_rows(audit, "method = 'tools/call' AND direction = 'client_to_server' AND kind = 'request'", at_least=14)
    assert value(found, "mcpfw_tool_calls_total") == len(rows) == 14
    assert value(found, "mcpfw_tool_calls_total", tool="echo", decision="allow") == 10
    denied = value(found, "mcpfw_tool_calls_total", decision="deny")
    assert denied == sum(r["decision"] == "deny" for r in rows) == 2
    assert not any("nonexistent" in str(labels) for _, labels in found)  # too long for a label: "other"
    assert value(found, "mcpfw_processes") == 2  # the two workers, alive while scraped
    assert value(found, "mcpfw_policy_eval_seconds_count") >= 24


def test_labels_are_bounded_and_methods_outside_the_spec_are_other():
    recorder = MetricsRecorder()
    base = {"server": "s", "transport": "http", "direction": "client_to_server", "kind": "request", "decision": "deny"}
    for i in range(2000):
        recorder.record({**base, "method": "tools/call", "tool": f"tool-{i}", "reason_codes": [f"code-{i}"], "tags": [f"t{i}"]})
        recorder.record({**base, "method": f"x/{i}"})
    snapshot = recorder.snapshot()
    series = {name: len(rows) for name, rows in snapshot["counters"].items()}
    assert series["mcpfw_tool_calls_total"] == 513 and series["mcpfw_denials_total"] == 257
    assert series["mcpfw_tags_total"] == 257
    methods = {row[4] for row in snapshot["counters"]["mcpfw_messages_total"]}
    assert methods == {"tools/call", "other"}


def test_an_empty_directory_exposes_zeroes(tmp_path):
    found = samples(exposition(merged_snapshot(tmp_path / "none")).decode())
    assert value(found, "mcpfw_processes") == 0 and value(found, "mcpfw_audit_rows_pending") == 0


def test_labels_stay_bounded_over_many_processes_and_hold_no_credentials(tmp_path):
    """Each process admits its own few hundred names: the sum over processes is capped again,
    and a token sent as a tool name never becomes a label."""
    import orjson

    from firewall.metrics import SnapshotWriter

    base = {"server": "s", "transport": "stdio", "direction": "client_to_server", "kind": "request",
            "method": "tools/call", "decision": "allow"}
    for process in range(4):
        recorder = MetricsRecorder()
        for i in range(400):
            recorder.record({**base, "tool": f"p{process}-tool-{i}"})
        recorder.record({**base, "tool": "lookup " + "ghp_" + "Q7x9" * 9})
        writer = SnapshotWriter(recorder, tmp_path)
        writer.write(closed=True)
    text = exposition(merged_snapshot(tmp_path)).decode()
    found = samples(text)
    tools = {dict(labels)["tool"] for name, labels in found if name == "mcpfw_tool_calls_total"}
    assert len(tools) == 512 and "other" in tools
    assert value(found, "mcpfw_tool_calls_total") == 4 * 401  # nothing lost to the cap
    assert "ghp_" not in text
    assert orjson.loads((tmp_path / "retired.json").read_bytes())  # the ended processes folded into one


def test_no_series_shrinks_when_rare_names_become_frequent(tmp_path):
    """Re-ranking names at each scrape moved a name out of 'other' once it became frequent,
    and 'other' went down: Prometheus reads that as a counter reset."""
    from firewall.metrics import SnapshotWriter

    recorder = MetricsRecorder()
    writer = SnapshotWriter(recorder, tmp_path)
    base = {"transport": "http", "direction": "client_to_server", "kind": "request", "method": "tools/call",
            "decision": "allow"}

    def call(server: str, tool: str, times: int = 1) -> None:
        for _ in range(times):
            recorder.record({**base, "server": server, "tool": tool})

    def scrape() -> dict:
        writer.write()
        return samples(exposition(merged_snapshot(tmp_path)).decode())

    call("a", "x")
    call("a", "y")
    for i in range(511):
        call("b", f"t{i}", 2)
    call("a", "z")
    call("a", "w")
    first = scrape()
    call("a", "x", 2)
    call("a", "y", 2)
    for i in range(600):
        call("c", f"n{i}")
    second = scrape()
    assert all(second.get(key, 0) >= count for key, count in first.items() if key[0].endswith("_total"))
    assert value(second, "mcpfw_tool_calls_total") == 2 + 1022 + 2 + 4 + 600
    tools = {dict(labels)["tool"] for name, labels in second if name == "mcpfw_tool_calls_total"}
    assert len(tools) <= 512
