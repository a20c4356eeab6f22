"""2026-07-28 ``Mcp-Param-*`` headers: tool arguments a client mirrors into HTTP headers
(``x-mcp-header`` in the tool's inputSchema) must agree with the body, as Mcp-Method and
Mcp-Name do, or the request is refused at the firewall with -32020."""

from __future__ import annotations

import json
import socket

from peers.http_harness import InProcessFirewall, http, make_config
from support import audit_rows
from test_http_failures import RawServer, read_request

from firewall.transports.http import mcp_headers

SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "query": {"type": "string"},
        "limits": {"type": "object", "properties": {"rows": {"type": "integer", "x-mcp-header": "Rows"}}},
        "dry": {"type": "boolean", "x-mcp-header": "Dry-Run"},
    },
}
TOOLS = [
    {"name": "sql", "inputSchema": SCHEMA},
    {"name": "plain", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}},
    {"name": "broken", "inputSchema": {"type": "object", "properties": {"o": {"type": "object", "x-mcp-header": "O"}}}},
]
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}


def call(name: str, arguments: dict, msg_id: int = 5) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": name, "arguments": arguments, "_meta": META}}


def headers_for(name: str, **params: str) -> dict[str, str]:
    out = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": name}
    out.update({f"mcp-param-{k.replace('_', '-')}": v for k, v in params.items()})
    return out


# -- the rules, without a network ---------------------------------------------------------


def test_declarations_are_read_from_the_schema():
    bindings = mcp_headers.param_bindings(SCHEMA)
    assert {(b.header, b.path, b.kind) for b in bindings} == {
        ("mcp-param-region", ("region",), "string"),
        ("mcp-param-rows", ("limits", "rows"), "integer"),
        ("mcp-param-dry-run", ("dry",), "boolean"),
    }
    assert mcp_headers.param_bindings({"type": "object"}) == ()
    # Invalid declarations make the tool's declarations void (clients reject such tools).
    assert mcp_headers.param_bindings(TOOLS[2]["inputSchema"]) is None
    twice = {"properties": {"a": {"type": "string", "x-mcp-header": "X"}, "b": {"type": "string", "x-mcp-header": "x"}}}
    assert mcp_headers.param_bindings(twice) is None
    assert mcp_headers.param_bindings({"properties": {"a": {"type": "string", "x-mcp-header": "bad name"}}}) is None


def test_values_must_agree_with_the_arguments():
    bindings = mcp_headers.param_bindings(SCHEMA)

    def check(headers: dict, arguments: dict) -> str | None:
        return mcp_headers.param_mismatch(headers, call("sql", arguments), bindings, known=True)

    args = {"region": "us-west1", "limits": {"rows": 42}, "dry": False}
    agreeing = {"mcp-param-region": "us-west1", "mcp-param-rows": "42", "mcp-param-dry-run": "false"}
    assert check(agreeing, args) is None
    assert check({**agreeing, "mcp-param-rows": "42.0"}, {**args, "limits": {"rows": 42.0}}) is None  # numbers compare as numbers
    assert "differs" in check({**agreeing, "mcp-param-region": "eu-west1"}, args)
    assert "differs" in check({**agreeing, "mcp-param-dry-run": "true"}, args)
    assert "missing" in check({"mcp-param-region": "us-west1", "mcp-param-rows": "42"}, args)
    # null or absent arguments: no header expected, and none may stand in for them
    assert check({"mcp-param-region": "us-west1"}, {"region": "us-west1", "dry": None}) is None
    assert "no argument" in check({"mcp-param-region": "us-west1", "mcp-param-rows": "1"}, {"region": "us-west1"})
    assert "not declared" in check({**agreeing, "mcp-param-other": "x"}, args)
    encoded = mcp_headers.encode_value("région ü")
    assert check({"mcp-param-region": encoded}, {"region": "région ü"}) is None
    assert "differs" in check({"mcp-param-region": "=?base64?not base64!?="}, {"region": "x"})
    # Unknown tools: values cannot be tied to arguments, only the method is checked.
    assert mcp_headers.param_mismatch({"mcp-param-region": "x"}, call("sql", {}), None, known=False) is None
    assert "not a tools/call" in mcp_headers.param_mismatch(
        {"mcp-param-region": "x"}, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, None, known=False)


def test_numbers_agree_only_when_their_values_are_exactly_equal():
    schema = {"properties": {"n": {"type": "number", "x-mcp-header": "N"}}}
    bindings = mcp_headers.param_bindings(schema)

    def agrees(header: str, value: float) -> bool:
        return mcp_headers.param_mismatch({"mcp-param-n": header}, call("t", {"n": value}), bindings, known=True) is None

    for header, value in [("10", 10), ("10.0", 10), ("1e1", 10), ("1E+1", 10.0), ("-0", 0), ("0.1", 0.1),
                          ("1e+20", 1e20), ("100000000000000000000", 1e20), ("9007199254740993", 2**53 + 1)]:
        assert agrees(header, value), (header, value)
    # float() called these equal: Python's digit separators, padding, a sign JSON lacks, and
    # integers beyond a double's precision; Decimal's own range ends before the last one's exponent.
    for header, value in [("1_0", 10), (" 10", 10), ("+10", 10), ("010", 10), ("10.", 10), ("0x0a", 10),
                          ("٣", 3), ("9007199254740992", 2**53 + 1), ("10.000000000000001", 10), ("NaN", 0),
                          ("1e-999999999999999999999", 0)]:
        assert not agrees(header, value), (header, value)


# -- through the firewall -----------------------------------------------------------------


class FakeServer:
    """A 2026-07-28 style server: lists TOOLS and echoes the arguments of each call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, conn: socket.socket) -> None:
        got = read_request(conn)
        if got is None:
            return
        request = json.loads(got[1])
        if request["method"] == "tools/list":
            result = {"tools": TOOLS}
        else:
            self.calls.append(request["params"])
            result = {"content": [{"type": "text", "text": json.dumps(request["params"]["arguments"])}]}
        out = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(out), out))


def test_param_headers_are_checked_against_the_body(tmp_path):
    fake = FakeServer()
    args = {"region": "us-west1", "query": "select 1", "limits": {"rows": 10}, "dry": True}
    agreeing = {"region": "us-west1", "rows": "10", "dry_run": "true"}
    refusals = {
        "differs": headers_for("sql", **{**agreeing, "region": "eu-west1"}),
        "missing": headers_for("sql", region="us-west1", rows="10"),
        "not declared": headers_for("sql", **agreeing, tenant="acme"),
    }
    answers = []
    with RawServer(fake) as server:
        config = make_config(tmp_path, [{"url": f"http://127.0.0.1:{server.port}/mcp", "name": "up"}])
        with InProcessFirewall(config) as fw:
            url = f"{fw.url}/mcp"
            # Before any tools/list the firewall cannot tie headers to arguments: the server checks.
            r = http("POST", url, json_body=call("sql", args, 1), headers=headers_for("sql", region="elsewhere"))
            assert r.status_code == 200
            listing = {k: v for k, v in headers_for("").items() if k != "mcp-name"} | {"mcp-method": "tools/list"}
            r = http("POST", url, json_body={"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": META}},
                     headers=listing)
            assert r.status_code == 200
            fake.calls.clear()
            ok = http("POST", url, json_body=call("sql", args, 3), headers=headers_for("sql", **agreeing))
            assert ok.status_code == 200 and "us-west1" in ok.text
            for i, (why, headers) in enumerate(refusals.items(), start=10):
                r = http("POST", url, json_body=call("sql", args, i), headers=headers)
                answers.append((why, i, r.status_code, r.json()))
            # A header for an argument the body does not carry cannot stand in for it.
            r = http("POST", url, json_body=call("sql", {"query": "q"}, 20), headers=headers_for("sql", region="us-west1"))
            answers.append(("no argument", 20, r.status_code, r.json()))
            # Tools without declarations take no Mcp-Param headers; void declarations are not enforced.
            r = http("POST", url, json_body=call("plain", {"x": "1"}, 21), headers=headers_for("plain", x="1"))
            answers.append(("not declared", 21, r.status_code, r.json()))
            r = http("POST", url, json_body=call("broken", {"o": {}}, 22), headers=headers_for("broken", o="1"))
            assert r.status_code == 200
    for why, msg_id, status, answer in answers:
        assert status == 400 and answer["id"] == msg_id and answer["error"]["code"] == -32020, why
        assert why in answer["error"]["message"]
        (row,) = audit_rows(tmp_path / "audit.duckdb", f"decision_id = '{answer['error']['data']['decision_id']}'")
        assert row["reason_codes"] == ["header_mismatch"] and row["error_code"] == -32020
    # Only the agreeing call and the one with void declarations reached the server.
    assert [c["name"] for c in fake.calls] == ["sql", "broken"]
