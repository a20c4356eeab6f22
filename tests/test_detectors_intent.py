"""Intent versus action: task from _meta or configured purposes, history, and the policy."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from firewall.config import DetectorsConfig  # noqa: E402
from firewall.detection_enrichers import INTENT_META_KEY, Detectors, IntentEnricher, Purpose  # noqa: E402

from detector_support import Harness  # noqa: E402

TASK = "Summarise the meeting notes in my project folder"
NOTES = {"path": "/home/dev/project/notes/meeting-2024-05-02.md"}
KEY = {"path": "/home/dev/.ssh/id_rsa"}  # the policy denies this one anyway (secret_file)
FAR = ("transfer_funds", {"to_account": "DE89370400440532013000", "amount": 9500})
READ_DESCRIPTION = "Read the complete contents of a file from the file system as text."


@pytest.fixture(scope="module")
def detectors() -> Detectors:
    return Detectors(DetectorsConfig())


def _harness(detectors: Detectors, data: dict | None = None, **options) -> tuple[Harness, IntentEnricher]:
    enricher = IntentEnricher(detectors.intent_scorer, **options)
    harness = Harness((enricher,), data)
    tools = {"tools": [{"name": "read_text_file", "description": READ_DESCRIPTION, "inputSchema": {"type": "object"}}]}
    harness.exchange("tools/list", {}, tools)
    return harness, enricher


def _call(harness: Harness, arguments: dict, meta: dict | None = None, name: str = "read_text_file"):
    params = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    outcome, _ = harness.request("tools/call", params)
    return outcome, harness.findings.get("intent")


def test_scorer_separates_fitting_and_unrelated_calls(detectors):
    scorer = detectors.intent_scorer()
    far = scorer.score(name="read_text_file", arguments=KEY, description=READ_DESCRIPTION, task=TASK)
    near = scorer.score(name="read_text_file", arguments=NOTES, description=READ_DESCRIPTION, task=TASK)
    assert far is not None and near is not None
    assert far.label == "mismatch" and near.label == "fits" and far.score > near.score + 0.5
    assert far.nearest == {"source": "purpose", "text": TASK, "similarity": far.nearest["similarity"]}
    assert scorer.score(name="x", arguments={}) is None  # nothing to compare with


def test_meta_intent_on_the_call(detectors):
    harness, _ = _harness(detectors)
    outcome, finding = _call(harness, FAR[1], {INTENT_META_KEY: TASK}, FAR[0])
    assert finding["source"] == "meta" and finding["label"] == "mismatch" and finding["tool"] == "transfer_funds"
    assert outcome.forward is not None and "intent_mismatch" in outcome.verdicts[0].decision.tags  # tag only by default
    outcome, finding = _call(harness, NOTES, {INTENT_META_KEY: TASK})
    assert finding["label"] == "fits" and "intent_mismatch" not in outcome.verdicts[0].decision.tags


def test_meta_intent_on_initialize_covers_the_session(detectors):
    harness, _ = _harness(detectors)
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "agent", "version": "1"}, "_meta": {INTENT_META_KEY: TASK}}
    harness.exchange("initialize", init, {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})
    _, finding = _call(harness, KEY)
    assert finding["source"] == "meta" and finding["nearest"]["text"] == TASK


def test_configured_purpose_matches_client_and_server(detectors):
    purposes = (Purpose("Plan a trip: look up times in other cities", client="other-client"), Purpose(TASK, server="srv"))
    harness, _ = _harness(detectors, purposes=purposes)
    _, finding = _call(harness, KEY)
    assert finding["source"] == "purpose" and finding["nearest"]["text"] == TASK


def test_a_configured_purpose_is_not_overridden_by_the_clients_own_intent(detectors):
    """The client cannot whitewash a call by declaring a task that fits it."""
    harness, _ = _harness(detectors, purposes=(Purpose(TASK, server="srv"),))
    _, finding = _call(harness, FAR[1], {INTENT_META_KEY: "Send money with transfer funds"}, FAR[0])
    assert finding["source"] == "purpose" and finding["label"] == "mismatch"


def test_a_purpose_bound_to_a_client_name_holds_for_the_session(detectors):
    """The name is matched without case, and a later _meta clientInfo does not rename the client."""
    harness, _ = _harness(detectors, purposes=(Purpose(TASK, client="support-agent"),))
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": " Support-Agent", "version": "1"}}
    harness.exchange("initialize", init, {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})
    _, finding = _call(harness, FAR[1], None, FAR[0])
    assert finding["source"] == "purpose" and finding["label"] == "mismatch"
    rename = {"io.modelcontextprotocol/protocolVersion": "2025-11-25",
              "io.modelcontextprotocol/clientInfo": {"name": "someone-else", "version": "1"}}
    _, finding = _call(harness, FAR[1], rename, FAR[0])
    assert finding is not None and finding["source"] == "purpose" and finding["label"] == "mismatch"
    assert harness.audit.rows[-1]["client_name"] == " Support-Agent"
    _, finding = _call(harness, KEY)
    assert finding is not None and finding["source"] == "purpose"


def test_no_task_means_no_embedding():
    def refuse():
        raise AssertionError("the model must not be needed")

    enricher = IntentEnricher(refuse)
    harness = Harness((enricher,))
    outcome, _ = harness.request("tools/call", {"name": FAR[0], "arguments": FAR[1]})
    assert outcome.forward is not None and "intent" not in harness.findings


def test_action_deny_from_data(detectors):
    data = {"mcpfw": {"config": {"detectors": {"intent": {"action": "deny"}}}}}
    harness, _ = _harness(detectors, data)
    outcome, _ = _call(harness, FAR[1], {INTENT_META_KEY: TASK}, FAR[0])
    assert outcome.forward is None and outcome.verdicts[0].decision.reason_codes == ["intent_mismatch"]


def test_history_learns_allowed_calls_and_flags_novel_ones(detectors):
    harness, enricher = _harness(detectors, history=True, min_history=3)
    usual = [{"path": f"/home/dev/project/notes/{name}.md"} for name in ("standup", "retro", "planning", "meeting")]
    for arguments in usual[:3]:
        _, finding = _call(harness, arguments)
        assert finding is None  # still learning
    _, finding = _call(harness, usual[3])
    assert finding["source"] == "history" and finding["label"] == "fits" and finding["history_size"] == 3
    assert finding["nearest"]["pattern"] == "read_text_file(path)"
    outcome, _ = harness.request("tools/call", {"name": "get-env", "arguments": {}})
    novel = harness.findings["intent"]
    assert novel["source"] == "history" and novel["score"] > finding["score"]
