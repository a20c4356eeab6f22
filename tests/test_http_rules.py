"""Routing, OAuth metadata rewriting and the 2026-07-28 header rules, without a network."""

from __future__ import annotations

import orjson

from firewall.config import UpstreamConfig
from firewall.transports.http import mcp_headers
from firewall.transports.http.oauth import rewrite_metadata, rewrite_www_authenticate
from firewall.transports.http.routes import Router, route_from_config

PUBLIC = "https://fw.example"


def router() -> Router:
    return Router([
        route_from_config(UpstreamConfig(url="http://127.0.0.1:3001/mcp")),
        route_from_config(UpstreamConfig(url="https://gh.internal/mcp", path_prefix="/github", name="github")),
        route_from_config(UpstreamConfig(url="http://10.0.0.5:9000/mcp", host="docs.example", name="docs")),
    ])


def test_routes_by_prefix_and_host():
    r = router()
    assert [(m[0].name, m[1]) for m in [
        r.match("fw:8080", "/mcp"),
        r.match("fw:8080", "/github/mcp?x=1"),
        r.match("fw:8080", "/githubx"),
        r.match("docs.example:8080", "/mcp"),
    ]] == [("127.0.0.1:3001", "/mcp"), ("github", "/mcp?x=1"), ("127.0.0.1:3001", "/githubx"), ("docs", "/mcp")]
    route, path = r.match("fw", "/.well-known/oauth-protected-resource/github/mcp")
    assert (route.name, path) == ("github", "/.well-known/oauth-protected-resource/mcp")


def test_protected_resource_metadata_names_the_firewall():
    github = router().match("fw", "/github/mcp")[0]
    doc = {"resource": "https://gh.internal/mcp", "authorization_servers": ["https://auth.example"]}
    out = orjson.loads(rewrite_metadata(orjson.dumps(doc), github, PUBLIC))
    assert out == {"resource": "https://fw.example/github/mcp", "authorization_servers": ["https://auth.example"]}
    assert rewrite_metadata(orjson.dumps({"resource": "https://elsewhere/mcp"}), github, PUBLIC) is None


def test_www_authenticate_points_at_the_firewall():
    github = router().match("fw", "/github/mcp")[0]
    header = 'Bearer error="invalid_token", resource_metadata="https://gh.internal/.well-known/oauth-protected-resource/mcp", scope="read"'
    assert rewrite_www_authenticate(header, github, PUBLIC) == (
        'Bearer error="invalid_token", resource_metadata="https://fw.example/.well-known/oauth-protected-resource/github/mcp", scope="read"'
    )


def body(method: str, **params) -> dict:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}


def test_routing_headers_must_agree_with_the_body():
    call = body("tools/call", name="echo", arguments={"message": "hi"})
    assert mcp_headers.mismatch({"mcp-method": "tools/call", "mcp-name": "echo"}, call) is None
    assert "Mcp-Method" in mcp_headers.mismatch({"mcp-method": "tools/list"}, call)
    assert "Mcp-Name" in mcp_headers.mismatch({"mcp-method": "tools/call", "mcp-name": "rm"}, call)
    assert mcp_headers.mismatch({"mcp-name": mcp_headers.encode_value("echo")}, call) is None
    assert "names nothing" in mcp_headers.mismatch({"mcp-name": "x"}, body("tools/list"))
    assert "Protocol-Version" in mcp_headers.mismatch({"mcp-method": "tools/call", "mcp-name": "echo", "mcp-protocol-version": "2025-11-25"}, call)
    read = body("resources/read", uri="file:///tmp/ä b")
    assert mcp_headers.mismatch({"mcp-name": mcp_headers.encode_value("file:///tmp/ä b")}, read) is None
    assert mcp_headers.encode_value("file:///tmp/ä b").startswith("=?base64?")
    assert mcp_headers.mismatch({"mcp-method": "ping"}, [call]) is not None  # no routing headers on a batch


def test_duplicated_routing_header_is_refused():
    values = {"Mcp-Method": ["tools/call", "tools/list"]}
    _, problem = mcp_headers.collect(lambda name: values.get(name, []), values.keys())
    assert problem and "more than once" in problem


def test_rewritten_bodies_keep_headers_in_step():
    old = body("tools/call", name="echo", arguments={"message": "sk-1"})
    new = body("tools/call", name="echo", arguments={"message": "[REDACTED]"})
    assert mcp_headers.rederive({"mcp-method": "tools/call", "mcp-name": "echo"}, old, new) == ({}, None)
    renamed = body("tools/call", name="échо", arguments={})
    updates, _ = mcp_headers.rederive({"mcp-name": "echo"}, old, renamed)
    assert mcp_headers.decode_value(updates["mcp-name"]) == "échо"
    _, complaint = mcp_headers.rederive({"mcp-param-region": "x"}, old, new)
    assert complaint and "Mcp-Param" in complaint
