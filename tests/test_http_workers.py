"""Two lean worker processes on one port: every session's state stays in one process."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from firewall import errors
from support import audit_rows
from peers.http_harness import everything_server, firewall_cli, free_port
from test_http_reverse import TEST_POLICY


@pytest.mark.parametrize("transport", ["streamableHttp", "sse"])
def test_sessions_across_workers(tmp_path, transport):
    bundle = tmp_path / "policy" / "mcpfw"
    bundle.mkdir(parents=True)
    (bundle / "decision.rego").write_text(TEST_POLICY)
    upstream, port = free_port(), free_port()
    audit = tmp_path / "audit.duckdb"

    async def one_client(url: str, n: int) -> list[str]:
        target = sse_client(url) if transport == "sse" else url
        out = []
        async with Client(target, mode="legacy") as client:
            for i in range(n):
                out.append((await client.call_tool("echo", {"message": f"m{i}"})).content[0].text)
            with anyio.fail_after(10), pytest.raises(MCPError) as denied:
                await client.call_tool("echo", {"message": "forbidden"})
            assert denied.value.error.code == errors.POLICY_DENIED
        return out

    async def many(url: str) -> list[list[str]]:
        results: list[list[str]] = []

        async def run(i: int) -> None:
            results.append(await one_client(url, 5))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(run, i)
        return results

    with everything_server(upstream, transport):
        path = "/sse" if transport == "sse" else "/mcp"
        with firewall_cli(f"http://127.0.0.1:{upstream}/mcp", port, audit, "--workers", "2", "--policy", str(bundle.parent)):
            results = anyio.run(many, f"http://127.0.0.1:{port}{path}")
    assert len(results) == 6 and all(len(r) == 5 and "m4" in r[-1] for r in results)
    calls = audit_rows(audit, "method = 'tools/call' AND direction = 'client_to_server'")
    assert len(calls) == 6 * 6
    # Every call was judged with its session's state, wherever its connection landed.
    assert {row["protocol_era"] for row in calls} == {"2025-11-25"}
    assert {row["client_name"] for row in calls} == {"mcp"} or all(row["client_name"] for row in calls)
    assert len({row["session_id"] for row in calls}) == 6
