"""detectors.pii and the PII enricher: rules from rules/pii.yaml, validators, spans, shape."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detectors.pii import PiiRulesError, PiiScanner, load_pii_rules
from firewall.detection_enrichers import PiiEnricher
from firewall.jsonrpc import Kind, Message
from firewall.pipeline import C2S, S2C, MessageContext
from firewall.session import ServerIdentity, Session

from detector_support import Harness


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner()


def found(scanner: PiiScanner, text: str) -> list[tuple[str, str]]:
    return [(text[s:e], rule) for s, e, rule in scanner.scan_text(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ann.lee+work@mail.example.co.uk today", [("ann.lee+work@mail.example.co.uk", "email")]),
        ("visa 4111 1111 1111 1111, amex 3782-822463-10005", [("4111 1111 1111 1111", "credit_card"), ("3782-822463-10005", "credit_card")]),
        ("IBAN GB82 WEST 1234 5698 7654 32 or DE89370400440532013000", [("GB82 WEST 1234 5698 7654 32", "iban"), ("DE89370400440532013000", "iban")]),
        ("SSN 536-90-4399 on file", [("536-90-4399", "us_ssn")]),
        ("call +1 415-555-2671 or (415) 555-2671 or +44 20 7946 0958", [("+1 415-555-2671", "phone"), ("(415) 555-2671", "phone"), ("+44 20 7946 0958", "phone")]),
        ("from 10.0.0.12 and 2001:db8::8a2e:370:7334.", [("10.0.0.12", "ipv4"), ("2001:db8::8a2e:370:7334", "ipv6")]),
    ],
)
def test_each_rule_finds_valid_values(scanner, text, expected):
    assert found(scanner, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN GB82 WEST 1234 5698 7654 33 fails mod 97",
        "SSN 078-05-1120 was never valid, nor 000-12-3456 or 666-12-3456",
        "on 2024-05-06 12:30:45 build 1.2.3.4.5 took 1732456789 ms",
        "std::vector, a::b and 12:30:45 are not addresses",
        "uuid 123e4567-e89b-12d3-a456-426614174000, order 12345678, zip 94103",
        "user@localhost and a@b are not routable addresses",
    ],
)
def test_lookalikes_are_not_reported(scanner, text):
    assert found(scanner, text) == []


def test_obfuscated_values_are_found_with_original_spans(scanner):
    text = "mail j\u200bane@exam\u200bple.com, card ４１１１１１１１１１１１１１１１"
    assert found(scanner, text) == [("j\u200bane@exam\u200bple.com", "email"), ("４１１１１１１１１１１１１１１１", "credit_card")]


def test_scan_reports_pointers_and_parts(scanner):
    value = {"content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "x ann@example.com"}], "meta/x": {"ip": "8.8.8.8"}}
    result = [f.as_dict() for f in scanner.scan(value, pointer="/result", part="result")]
    assert result == [
        {"pointer": "/result/content/1/text", "rule": "email", "start": 2, "end": 17, "part": "result"},
        {"pointer": "/result/meta~1x/ip", "rule": "ipv4", "start": 0, "end": 7, "part": "result"},
    ]


def test_rule_subset(scanner):
    only_email = PiiScanner(enabled={"email"})
    assert only_email.rule_ids == ["email"]
    assert found(only_email, "ann@example.com 10.0.0.1") == [("ann@example.com", "email")]


def test_bad_rules_file_names_the_rule(tmp_path: Path):
    bad = tmp_path / "pii.yaml"
    bad.write_text("version: 1\nrules:\n  - {id: broken, regex: '(unclosed'}\n")
    with pytest.raises(PiiRulesError, match="broken"):
        load_pii_rules(bad)
    bad.write_text("version: 1\nrules:\n  - {id: odd, regex: 'x', validator: nope}\n")
    with pytest.raises(PiiRulesError, match="odd"):
        load_pii_rules(bad)


def _ctx(body: dict, direction: str, kind: Kind, tool: dict | None = None) -> MessageContext:
    session = Session(ServerIdentity("s"), transport="stdio", cwd="/", resolve_symlinks=False)
    return MessageContext(Message(body, kind), direction, session, "tools/call", body.get("params"), tool, None)


def test_enricher_scans_arguments_and_results_like_secrets():
    enricher = PiiEnricher()
    call = _ctx({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "send", "arguments": {"to": "ann@example.com"}}},
                C2S, Kind.REQUEST, {"name": "send", "arguments": {"to": "ann@example.com"}})
    enricher.enrich(call)
    assert call.findings["pii"] == [{"pointer": "/params/arguments/to", "rule": "email", "start": 0, "end": 15, "part": "arguments"}]
    reply = _ctx({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "SSN 536-90-4399"}]}}, S2C, Kind.RESPONSE)
    enricher.enrich(reply)
    assert reply.findings["pii"][0]["rule"] == "us_ssn" and reply.findings["pii"][0]["part"] == "result"
    other = _ctx({"jsonrpc": "2.0", "id": 2, "method": "ping"}, C2S, Kind.REQUEST)
    enricher.enrich(other)
    assert "pii" not in other.findings


def test_default_policy_tags_pii_and_redacts_spans_only_when_configured():
    result = {"content": [{"type": "text", "text": "Ann: ann@example.com, card 4111 1111 1111 1111, office 10.1.2.3"}]}
    tagged = Harness((PiiEnricher(),)).exchange("tools/call", {"name": "crm", "arguments": {}}, result)
    decision = tagged.verdicts[0].decision
    assert decision.action == "allow" and {"pii", "pii:email", "pii:credit_card", "pii:ipv4"} <= set(decision.tags)
    data = {"mcpfw": {"config": {"detectors": {"pii": {"redact_results": True, "redact_rules": ["email", "credit_card"]}}}}}
    redacted = Harness((PiiEnricher(),), data).exchange("tools/call", {"name": "crm", "arguments": {}}, result)
    text = orjson.loads(redacted.forward)["result"]["content"][0]["text"]
    assert text == "Ann: [PII:email], card [PII:credit_card], office 10.1.2.3"
