"""API keys on stdio: the shim identifies its caller from MCPFW_API_KEY, the policy sees the
identity (RBAC), the audit log records it, and the server never sees the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from firewall import errors
from firewall.identity.apikeys import KeyStore
from support import audit_rows, everything_server, shim_command


def config_file(tmp_path: Path, mode: str = "required") -> Path:
    path = tmp_path / "mcpfw.yaml"
    path.write_text(f"auth:\n  mode: {mode}\n  api_keys:\n    store: {tmp_path / 'keys.sqlite'}\n")
    return path


def params(command: list[str], key: str | None) -> StdioServerParameters:
    env = {"MCPFW_API_KEY": key} if key else {}
    return StdioServerParameters(command=command[0], args=command[1:], env={"PATH": "/usr/bin:/bin", **env})


def test_a_key_identifies_the_stdio_caller_and_rbac_applies(tmp_path):
    audit = tmp_path / "audit.duckdb"
    keys = KeyStore(tmp_path / "keys.sqlite")
    reader, reader_key = keys.create("acme", "desktop", roles=["reader"])
    _, admin_key = keys.create("acme", "ops", roles=["admin"])
    command = shim_command(audit, "--config", str(config_file(tmp_path)), "--server-name", "everything",
                           server=everything_server())

    async def as_reader() -> tuple[set[str], str, int]:
        async with Client(params(command, reader_key)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            echoed = (await client.call_tool("echo", {"message": "keyed"})).content[0].text
            with pytest.raises(MCPError) as denied:
                await client.call_tool("get-env", {})
            return names, echoed, denied.value.error.code

    names, echoed, code = anyio.run(as_reader)
    assert "echo" in names and "get-env" not in names and "keyed" in echoed
    assert code == errors.POLICY_DENIED

    async def as_admin() -> str:
        async with Client(params(command, admin_key)) as client:
            return (await client.call_tool("get-env", {})).content[0].text

    environment = anyio.run(as_admin)
    assert "PATH" in environment and "MCPFW_API_KEY" not in environment and admin_key not in environment

    rows = audit_rows(audit, f"key_id = '{reader.key_id}' AND tool = 'get-env'")
    # Hidden from its list by RBAC, the registry also notes that the client could not have seen it.
    assert rows and rows[0]["decision"] == "deny" and "rbac_denied" in rows[0]["reason_codes"]
    assert rows[0]["tenant"] == "acme" and rows[0]["auth_method"] == "api_key" and rows[0]["subject"] == "key:desktop"


@pytest.mark.parametrize("key", [None, "mcpfw_000000000000_not-a-real-secret"])
def test_without_a_valid_key_the_server_is_not_started(tmp_path, key):
    audit = tmp_path / "audit.duckdb"
    marker = tmp_path / "started"
    command = shim_command(audit, "--config", str(config_file(tmp_path)), server=["touch", str(marker)])
    env = {"PATH": "/usr/bin:/bin", **({"MCPFW_API_KEY": key} if key else {})}
    done = subprocess.run(command, input=b"", capture_output=True, env=env, timeout=60)
    assert done.returncode == 2 and not marker.exists()
    assert b"the server was not started" in done.stderr
    if key:
        assert key.encode() not in done.stderr
    (row,) = audit_rows(audit)
    assert row["decision"] == "deny" and row["error_code"] == errors.AUTH_FAILED
    assert row["reason_codes"] == ["unauthenticated"]
