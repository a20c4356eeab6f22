"""Require approval: the store, the gate the pipeline uses, and `mcpfw approvals`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from firewall.approvals import ApprovalGate, ApprovalStore
from firewall.policy.decision import Decision

ALICE = {"tenant": "acme", "subject": "alice", "key_id": None}


def asking(*messages: str) -> Decision:
    return Decision(allow=True, obligations=[{"type": "require_approval", "message": m} for m in messages],
                    tags=["intent_mismatch"], approvals=list(messages))


def settle(gate: ApprovalGate, decision: Decision, arguments: dict, identity: dict | None = ALICE):
    return gate.settle(decision, is_request=True, server="fs", method="tools/call", tool="write_file",
                       arguments=arguments, identity=identity, session_id="s1")


def cli(store: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firewall.cli", "approvals", *argv, "--store", str(store)],
                          capture_output=True, text=True, timeout=60)


def test_held_until_approved_then_used_once(tmp_path):
    store_path = tmp_path / "approvals.sqlite"
    gate = ApprovalGate(ApprovalStore(store_path))
    args = {"path": "/srv/report.txt", "content": "token=ghp_" + "a" * 36}
    held, approval_id = settle(gate, asking("does not fit the task"), args)
    assert held.action == "deny" and held.reason_codes == ["approval_required"]
    assert approval_id in held.reasons[0]["message"] and "mcpfw approvals approve" in held.reasons[0]["message"]
    # Asking again files nothing new: the same call has the same request.
    again, same_id = settle(gate, asking("does not fit the task"), args)
    assert same_id == approval_id and again.action == "deny"
    listed = cli(store_path, "list", "--json")
    (row,) = json.loads(listed.stdout)
    assert row["status"] == "pending" and row["tool"] == "write_file" and row["subject"] == "alice"
    assert "ghp_" not in listed.stdout  # the reviewer sees the call with secrets redacted
    assert row["reasons"] == ["does not fit the task"]

    decided = cli(store_path, "approve", approval_id, "--for", "10m", "--by", "sec-team")
    assert decided.returncode == 0 and "may run once" in decided.stdout
    # Another call (other arguments, or another subject) is not covered by the grant.
    other, other_id = settle(gate, asking("does not fit the task"), {**args, "path": "/srv/other.txt"})
    assert other.action == "deny" and other_id != approval_id
    bob, _ = settle(gate, asking("does not fit the task"), args, {"tenant": "acme", "subject": "bob"})
    assert bob.action == "deny"
    allowed, used_id = settle(gate, asking("does not fit the task"), args)
    assert allowed.action == "allow" and used_id == approval_id
    assert "approved" in allowed.tags and f"approval:{approval_id}" in allowed.tags and not allowed.approvals
    # Single use: the next identical call asks again.
    next_time, next_id = settle(gate, asking("does not fit the task"), args)
    assert next_time.action == "deny" and next_id != approval_id
    assert json.loads(cli(store_path, "show", approval_id).stdout)["status"] == "used"


def test_denied_requests_and_cli_errors(tmp_path):
    store_path = tmp_path / "approvals.sqlite"
    gate = ApprovalGate(ApprovalStore(store_path))
    _, approval_id = settle(gate, asking("suspected injection"), {"body": "x"})
    assert cli(store_path, "deny", approval_id).returncode == 0
    held, new_id = settle(gate, asking("suspected injection"), {"body": "x"})
    assert held.action == "deny" and new_id != approval_id  # a denial is final; asking again files anew
    twice = cli(store_path, "approve", approval_id)
    assert twice.returncode == 1 and "denied, not pending" in twice.stderr
    assert cli(store_path, "approve", "nope").returncode == 1
    bad = cli(store_path, "approve", new_id, "--for", "soon")
    assert bad.returncode == 2 and "--for" in bad.stderr
    assert oct(os.stat(store_path).st_mode & 0o777) == "0o600"


def test_what_the_gate_leaves_alone_and_what_cannot_wait(tmp_path):
    gate = ApprovalGate(ApprovalStore(tmp_path / "approvals.sqlite"))
    assert settle(gate, Decision(allow=True), {}) is None
    assert settle(gate, Decision(allow=False, approvals=["x"]), {}) is None  # denied anyway
    response, approval_id = gate.settle(asking("x"), is_request=False, server="fs", method="tools/call",
                                        tool="t", arguments=None, identity=None, session_id="s")
    assert response.action == "deny" and approval_id is None


def test_a_grant_is_used_once_across_threads(tmp_path):
    store_path = tmp_path / "approvals.sqlite"
    _, approval_id = settle(ApprovalGate(ApprovalStore(store_path)), asking("x"), {"n": 1})
    ApprovalStore(store_path).decide(approval_id, approve=True, by="t")
    results: list[str] = []

    def race() -> None:
        decision, _ = settle(ApprovalGate(ApprovalStore(store_path)), asking("x"), {"n": 1})
        results.append(decision.action)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["allow"] + ["deny"] * 7


def test_unusable_store_fails_closed(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    decision, _ = settle(ApprovalGate(ApprovalStore(blocker / "approvals.sqlite")), asking("x"), {})
    assert decision.action == "deny" and decision.reason_codes == ["approval_store_unavailable"]


@pytest.mark.parametrize("obligation", [{"type": "require_approval"}, {"type": "require_approval", "message": ""}])
def test_malformed_approval_obligation_fails_closed(obligation):
    from firewall.policy.decision import normalize_decision

    decision = normalize_decision({"allow": True, "obligations": [obligation]})
    assert decision.action == "deny" and decision.reason_codes == ["policy_error"]
