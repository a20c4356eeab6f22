"""The server's CORS grant, learnt from its answers, on the firewall's own replies."""

from __future__ import annotations

from firewall.transports.http.cors import CorsMirror

A, B = "https://a.example", "https://b.example"


def test_a_grant_to_one_origin_serves_that_origin_only():
    cors = CorsMirror()
    cors.learn("up", A, {"access-control-allow-origin": A, "access-control-allow-credentials": "true",
                         "access-control-expose-headers": "Mcp-Session-Id"})
    assert cors.headers_for("up", A) == {"access-control-allow-origin": A, "vary": "Origin",
                                         "access-control-allow-credentials": "true",
                                         "access-control-expose-headers": "Mcp-Session-Id"}
    assert cors.headers_for("up", B) == {} and cors.headers_for("other", A) == {}


def test_a_wildcard_serves_every_origin_without_credentials():
    cors = CorsMirror()
    cors.learn("up", A, {"access-control-allow-origin": "*", "access-control-allow-credentials": "true"})
    assert cors.headers_for("up", B) == {"access-control-allow-origin": "*"}


def test_nothing_is_learnt_from_a_grant_to_another_origin_and_a_withdrawal_revokes():
    cors = CorsMirror()
    cors.learn("up", A, {"access-control-allow-origin": B})
    assert cors.headers_for("up", A) == {} and cors.headers_for("up", B) == {}
    cors.learn("up", A, {"access-control-allow-origin": "*"})
    cors.learn("up", A, {})  # the server no longer grants it
    assert cors.headers_for("up", A) == {} and cors.headers_for("up", B) == {}


def test_grants_are_bounded():
    cors = CorsMirror()
    for i in range(5000):
        origin = f"https://{i}.example"
        cors.learn("up", origin, {"access-control-allow-origin": origin})
    assert cors.headers_for("up", "https://4999.example") and not cors.headers_for("up", "https://0.example")
    assert len(cors._grants) <= 1024
