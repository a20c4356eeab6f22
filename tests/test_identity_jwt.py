"""JwtVerifier against a real identity provider on loopback (discovery, JWKS over HTTP).

Keys are generated here with joserfc; the provider counts what it serves, so the tests can
check exactly how often the verifier goes back to it. Forged tokens are built the way an
attacker would (stdlib HMAC, hand-made headers), never with the verifier's own code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import string
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from firewall.config import JwtConfig
from firewall.identity import AuthError
from firewall.identity.jwt import FILE_CHECK_SECONDS, JwtVerifier, discovery_urls

AUD = "https://fw.example/mcp"


# -- keys (generated once: RSA generation is the slow part) -----------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa1": RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS256", "use": "sig"}),
        "rsa2": RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "use": "sig"}),
        "ec1": ECKey.generate_key("P-256", parameters={"kid": "ec-1", "alg": "ES256", "use": "sig"}),
        "ec2": ECKey.generate_key("P-256", parameters={"kid": "ec-2"}),
        "ed1": OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"}),
        "anon_rsa": RSAKey.generate_key(2048),
        "anon_ec": ECKey.generate_key("P-256"),
    }


# -- the identity provider --------------------------------------------------------------------


class FakeClock:
    """Monotonic seconds the test moves by hand (cache ages, refetch pacing)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class IdP:
    """An OAuth authorization server that publishes metadata and a JWKS on loopback."""

    def __init__(self, keys: list[Any], *, path: str = "", openid: bool = True, oauth: bool = True) -> None:
        self.keys = list(keys)
        self.path = path
        self.openid = openid
        self.oauth = oauth
        self.advertised_issuer: str | None = None  # what the metadata says (default: the real one)
        self.jwks_delay = 0.0
        self.jwks_fetches = 0
        self.metadata_fetches: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        self.running = True

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.origin + self.path

    @property
    def jwks_uri(self) -> str:
        return self.origin + "/keys"

    def jwks(self) -> dict[str, Any]:
        return KeySet(self.keys).as_dict(private=False)

    def metadata_paths(self) -> set[str]:
        """Where this server publishes its metadata: OIDC discovery and/or RFC 8414."""
        paths = set()
        if self.openid:
            paths.add(self.path + "/.well-known/openid-configuration")
        if self.oauth:
            paths.add("/.well-known/oauth-authorization-server" + self.path)
        return paths

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.shutdown()
            self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                metadata = {"issuer": idp.advertised_issuer or idp.issuer, "jwks_uri": idp.jwks_uri,
                            "token_endpoint": idp.issuer + "/token"}
                if self.path == "/keys":
                    with idp._lock:
                        idp.jwks_fetches += 1
                    if idp.jwks_delay:
                        time.sleep(idp.jwks_delay)
                    doc: Any = idp.jwks()
                elif self.path in idp.metadata_paths():
                    doc = metadata
                else:
                    self.send_error(404)
                    return
                if self.path != "/keys":
                    with idp._lock:
                        idp.metadata_fetches[self.path] = idp.metadata_fetches.get(self.path, 0) + 1
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def idp(keys: dict[str, Any]) -> Iterator[IdP]:
    provider = IdP([keys["rsa1"], keys["ec1"]])
    yield provider
    provider.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_verifier(idp: IdP, clock: FakeClock | None = None, **overrides: Any) -> JwtVerifier:
    settings: dict[str, Any] = {"issuer": idp.issuer, "jwks_url": idp.jwks_uri, "fetch_timeout_seconds": 2.0}
    settings.update(overrides)
    return JwtVerifier(JwtConfig(**settings), clock=clock or FakeClock())


# -- tokens -----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(doc: Any) -> str:
    return b64(json.dumps(doc, separators=(",", ":")).encode())


def claims_for(issuer: str, **claims: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": issuer, "aud": AUD, "sub": "alice", "tenant": "acme", "iat": now, "exp": now + 300, **claims}
    return {name: value for name, value in body.items() if value is not None}


def mint(key: Any, issuer: str, *, alg: str | None = None, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token properly signed with ``key`` (header ``kid`` from the key unless overridden)."""
    if alg is None:
        alg = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}[key.key_type]
    head: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if key.kid:
        head["kid"] = key.kid
    head.update(header or {})
    head = {name: value for name, value in head.items() if value is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that EdDSA is deprecated in favour of Ed25519
        return jwt.encode(head, claims_for(issuer, **claims), key, algorithms=[alg])


def without_alg(key: Any) -> Any:
    """The same private key without its JWK ``alg`` (so it can sign with any algorithm of its type)."""
    data = {name: value for name, value in key.as_dict(private=True).items() if name != "alg"}
    return type(key).import_key(data)


def forge_hmac(secret: bytes, issuer: str, kid: str | None, alg: str = "HS256") -> str:
    """The algorithm-confusion classic: HMAC "signed" with the issuer's public key."""
    head = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64json(head)}.{b64json(claims_for(issuer))}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), digest).digest())


def tamper(token: str, **changes: Any) -> str:
    """The same header and signature over a payload with ``changes`` applied."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{head}.{b64json(claims)}.{signature}"


# -- checking refusals ------------------------------------------------------------------------


@pytest.fixture
def refused(caplog: pytest.LogCaptureFixture):
    """Assert a token is refused with 401 invalid_token, and that nothing echoes any part of it."""
    caplog.set_level(logging.DEBUG, logger="mcpfw.auth")

    def check(verifier: JwtVerifier, token: Any, expected: str | None = None, audiences: Any = (AUD,)) -> AuthError:
        with pytest.raises(AuthError) as info:
            verifier.verify(token, audiences)
        err = info.value
        assert (err.status, err.error) == (401, "invalid_token")
        if expected is not None:
            assert err.description == expected
        assert_no_leak(token, [err.description, str(err), repr(err.args), caplog.text])
        return err

    return check


def assert_no_leak(token: Any, texts: list[str]) -> None:
    if not isinstance(token, str) or not token:
        return
    pieces = [token] + [part for part in token.split(".") if len(part) >= 8]
    for text in texts:
        for piece in pieces:
            assert piece not in text, "a refusal or log line contains part of the token"


# -- good tokens ------------------------------------------------------------------------------


def test_good_rsa_token_gives_the_identity(idp: IdP, keys: dict[str, Any]) -> None:
    verifier = make_verifier(idp, claims=["email", "groups"])
    token = mint(keys["rsa1"], idp.issuer, roles=["admin", "dev"], scope="files:read files:write",
                 email="alice@example.com", groups=["g1"], secret_claim="x")
    identity = verifier.verify(token, [AUD])
    assert identity.subject == "alice"
    assert identity.tenant == "acme"
    assert identity.auth_method == "jwt"
    assert identity.roles == ("admin", "dev")
    assert identity.scopes == ("files:read", "files:write")
    assert identity.claims == {"email": "alice@example.com", "groups": ["g1"]}
    assert identity.key_id is None
    assert verifier.verify(mint(keys["rsa1"], idp.issuer, exp=1_999_999_999), [AUD]).expires_at == 1_999_999_999.0
    assert identity.as_input()["tenant"] == "acme"


def test_good_ec_and_eddsa_tokens(idp: IdP, keys: dict[str, Any]) -> None:
    idp.keys.append(keys["ed1"])
    verifier = make_verifier(idp)
    assert verifier.verify(mint(keys["ec1"], idp.issuer), [AUD]).subject == "alice"
    assert verifier.verify(mint(keys["ed1"], idp.issuer), [AUD]).subject == "alice"
    assert idp.jwks_fetches == 1


def test_claim_shapes_roles_string_scopes_list_and_claim_names(idp: IdP, keys: dict[str, Any]) -> None:
    verifier = make_verifier(idp, subject_claim="oid", tenant_claim="tid", roles_claim="realm_access.roles",
                             scope_claims=["scope", "scp"])
    token = mint(keys["rsa1"], idp.issuer, oid="u-1", tid=42, realm_access={"roles": ["reader"]}, scp=["a", "b"])
    identity = verifier.verify(token, [AUD])
    assert (identity.subject, identity.tenant, identity.roles, identity.scopes) == ("u-1", "42", ("reader",), ("a", "b"))
    # roles as a space-separated string; the first scope claim present wins
    plain = make_verifier(idp)
    identity = plain.verify(mint(keys["rsa1"], idp.issuer, roles="ops  audit", scope="x", scp=["y"]), [AUD])
    assert identity.roles == ("ops", "audit") and identity.scopes == ("x",)


def test_tenant_default_and_missing_tenant(idp: IdP, keys: dict[str, Any], refused) -> None:
    token = mint(keys["rsa1"], idp.issuer, tenant=None)
    assert make_verifier(idp, default_tenant="shared").verify(token, [AUD]).tenant == "shared"
    refused(make_verifier(idp), token, "token names no tenant")


def test_subjects_reserved_for_api_keys_are_refused(idp: IdP, keys: dict[str, Any], refused) -> None:
    """``key:<name>`` is an API key's subject: a token claiming it would share the key's sessions."""
    reserved = "token subject uses the prefix 'key:' reserved for API keys"
    refused(make_verifier(idp), mint(keys["rsa1"], idp.issuer, sub="key:ci"), reserved)
    refused(make_verifier(idp, subject_claim="oid"), mint(keys["rsa1"], idp.issuer, oid="key:"), reserved)
    for subject in ("keyring", "monkey:ci", "Key:ci", "ci:key:"):
        assert make_verifier(idp).verify(mint(keys["rsa1"], idp.issuer, sub=subject), [AUD]).subject == subject


def test_malformed_claims_are_refused(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    refused(verifier, mint(keys["rsa1"], idp.issuer, roles={"admin": True}), "malformed claim: roles")
    refused(verifier, mint(keys["rsa1"], idp.issuer, scope=["ok", 3]), "malformed claim: scope")
    refused(verifier, mint(keys["rsa1"], idp.issuer, sub=None), "token has no subject")
    refused(verifier, mint(keys["rsa1"], idp.issuer, sub=""), "malformed claim: sub")
    refused(verifier, mint(keys["rsa1"], idp.issuer, sub=["alice"]), "malformed claim: sub")
    refused(verifier, mint(keys["rsa1"], idp.issuer, tenant={"id": "acme"}), "malformed claim: tenant")
    refused(verifier, mint(keys["rsa1"], idp.issuer, exp="tomorrow"), "malformed claim: exp")
    refused(verifier, mint(keys["rsa1"], idp.issuer, exp=True), "malformed claim: exp")


# -- forged and invalid tokens ----------------------------------------------------------------


def test_alg_none_is_refused(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp, algorithms=["RS256"])
    body = b64json(claims_for(idp.issuer))
    for alg in ("none", "None", "NONE", "nOnE"):
        for kid in (None, "rsa-1"):
            head = {"alg": alg, **({"kid": kid} if kid else {})}
            for signature in ("", b64(b"x")):
                refused(verifier, f"{b64json(head)}.{body}.{signature}", "token algorithm not allowed")
    assert idp.jwks_fetches == 0  # refused before any key lookup


def test_hs256_signed_with_the_rsa_public_key_is_refused(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    public = keys["rsa1"]
    pem = public.as_pem(private=False)
    jwk_json = json.dumps(public.as_dict(private=False)).encode()
    secrets_tried = [pem, pem.strip(), jwk_json, json.dumps(idp.jwks()).encode(), public.as_dict()["n"].encode()]
    for secret in secrets_tried:
        for alg in ("HS256", "HS384", "HS512"):
            for kid in ("rsa-1", None):
                refused(verifier, forge_hmac(secret, idp.issuer, kid, alg), "token algorithm not allowed")
    assert idp.jwks_fetches == 0


def test_hmac_and_none_cannot_even_be_configured(idp: IdP) -> None:
    for bad in (["RS256", "HS256"], ["none"], ["HS512"], ["RS256", "XY999"], []):
        with pytest.raises(ValueError):
            make_verifier(idp, algorithms=bad)


def test_algorithm_not_configured_or_not_matching_the_key(idp: IdP, keys: dict[str, Any], refused) -> None:
    idp.keys.append(keys["rsa2"])
    rsa_only = make_verifier(idp, algorithms=["RS256"])
    refused(rsa_only, mint(keys["ec1"], idp.issuer), "token algorithm not allowed")
    refused(rsa_only, mint(without_alg(keys["rsa1"]), idp.issuer, alg="RS512"), "token algorithm not allowed")
    verifier = make_verifier(idp, algorithms=["RS256", "PS256", "ES256"])
    # rsa-1 is published with alg RS256: a PS256 signature by the same key is refused
    refused(verifier, mint(without_alg(keys["rsa1"]), idp.issuer, alg="PS256"),
            "signing key does not match the token algorithm")
    # rsa-2 is published without alg: it serves both RSA algorithms
    assert verifier.verify(mint(keys["rsa2"], idp.issuer, alg="PS256"), [AUD])
    assert verifier.verify(mint(keys["rsa2"], idp.issuer, alg="RS256"), [AUD])
    # the header names the EC key but the signature is RSA (and the reverse)
    refused(verifier, mint(keys["rsa1"], idp.issuer, header={"kid": "ec-1"}),
            "signing key does not match the token algorithm")
    refused(verifier, mint(keys["ec1"], idp.issuer, header={"kid": "rsa-1"}),
            "signing key does not match the token algorithm")


def test_expiry_not_before_and_leeway(idp: IdP, keys: dict[str, Any], refused) -> None:
    now = int(time.time())
    verifier = make_verifier(idp, leeway_seconds=30)
    k = keys["rsa1"]
    assert verifier.verify(mint(k, idp.issuer, exp=now - 10), [AUD])  # expired, within leeway
    refused(verifier, mint(k, idp.issuer, exp=now - 60), "token expired")
    refused(verifier, mint(k, idp.issuer, exp=None), "token has no expiry")
    assert verifier.verify(mint(k, idp.issuer, nbf=now + 10), [AUD])  # not yet valid, within leeway
    refused(verifier, mint(k, idp.issuer, nbf=now + 120), "token not yet valid")
    assert verifier.verify(mint(k, idp.issuer, iat=now + 10), [AUD])
    refused(verifier, mint(k, idp.issuer, iat=now + 120), "token issued in the future")
    strict = make_verifier(idp, leeway_seconds=0)
    refused(strict, mint(k, idp.issuer, exp=now - 2), "token expired")
    refused(strict, mint(k, idp.issuer, nbf=now + 5), "token not yet valid")


def test_audience(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    k = keys["rsa1"]
    refused(verifier, mint(k, idp.issuer, aud="https://other.example/mcp"), "wrong audience")
    refused(verifier, mint(k, idp.issuer, aud=["https://a.example", "https://b.example"]), "wrong audience")
    refused(verifier, mint(k, idp.issuer, aud=None), "token has no audience")
    refused(verifier, mint(k, idp.issuer, aud=7), "wrong audience")
    assert verifier.verify(mint(k, idp.issuer, aud=["https://a.example", AUD]), [AUD])
    assert verifier.verify(mint(k, idp.issuer), ["https://fw.example/other", AUD])
    # a single audience passed as a string is not matched by substring
    refused(verifier, mint(k, idp.issuer, aud="fw.example"), "wrong audience", audiences=AUD)
    assert verifier.verify(mint(k, idp.issuer), AUD)
    # no accepted audience at all: nothing passes
    refused(verifier, mint(k, idp.issuer), "wrong audience", audiences=[])
    # configured audiences replace the route's
    fixed = make_verifier(idp, audience=["api://mcp"])
    assert fixed.verify(mint(k, idp.issuer, aud="api://mcp"), [AUD])
    refused(fixed, mint(k, idp.issuer), "wrong audience")


def test_issuer(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    k = keys["rsa1"]
    refused(verifier, mint(k, idp.issuer, iss="https://evil.example"), "wrong issuer")
    refused(verifier, mint(k, idp.issuer, iss=idp.issuer + "/"), "wrong issuer")
    refused(verifier, mint(k, idp.issuer, iss=[idp.issuer]), "wrong issuer")
    refused(verifier, mint(k, idp.issuer, iss=None), "token has no issuer")


def test_tampered_tokens(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    good = mint(keys["rsa1"], idp.issuer)
    assert verifier.verify(good, [AUD])
    refused(verifier, tamper(good, sub="admin"), "bad signature")
    refused(verifier, tamper(good, tenant="other-tenant"), "bad signature")
    head, payload, signature = good.split(".")
    same_claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    respaced = b64(json.dumps(same_claims, indent=1).encode())
    refused(verifier, f"{head}.{respaced}.{signature}", "bad signature")  # same claims, other encoding
    other = mint(keys["rsa1"], idp.issuer, sub="mallory").split(".")
    refused(verifier, f"{head}.{other[1]}.{signature}", "bad signature")  # valid payload, wrong signature
    refused(verifier, f"{head}.{payload}.{other[2]}", "bad signature")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    refused(verifier, f"{head}.{payload}.{flipped}", "bad signature")
    refused(verifier, f"{head}.{payload}.", "bad signature")
    # a header re-encoded with an extra member breaks the signature too
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    refused(verifier, f"{b64json({**header, 'x': 1})}.{payload}.{signature}", "bad signature")
    # an EC signature by another P-256 key under ec-1's kid
    ec = mint(keys["ec2"], idp.issuer, header={"kid": "ec-1"})
    refused(verifier, ec, "bad signature")


def test_garbage_and_truncated_tokens(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    good = mint(keys["rsa1"], idp.issuer)
    head, payload, signature = good.split(".")
    cases: list[Any] = [
        "", ".", "..", "...", "a.b", "a.b.c.d", good + ".", "." + good, good[: len(good) // 2], good[:-10],
        f"{head}.{payload}", f"{head}..{signature}", f".{payload}.{signature}",
        "é.é.é", "\x00.\x00.\x00", f"{head}.{payload}.{signature}=", f"{head}=.{payload}.{signature}",
        f"{head}.{payload}.{signature}!!", f"{head}.{payload}.{signature.replace('-', '+')}x",
        f"{b64(b'not json')}.{payload}.{signature}", f"{b64json(['alg'])}.{payload}.{signature}",
        f"{b64json('alg RS256')}.{payload}.{signature}", f"{b64json(7)}.{payload}.{signature}",
        f"{b64json({'typ': 'JWT'})}.{payload}.{signature}",
        f"{b64json({'alg': ['RS256']})}.{payload}.{signature}",
        f"{b64json({'alg': 'RS256', 'kid': 5})}.{payload}.{signature}",
        f"{b64(b'[' * 5000)}.{payload}.{signature}",
        f"{head}.{b64(b'[' * 5000)}.{signature}",
        "x" * 100_000, "a." + "b" * 100_000 + ".c", None, b"bytes.are.not", 12,
    ]
    for case in cases:
        err = refused(verifier, case)
        assert err.description in {"malformed token", "token too large", "token algorithm not allowed",
                                   "bad signature"}, (case, err.description)
    refused(verifier, "x" * 100_000, "token too large")
    refused(verifier, f"{head}.{payload}", "malformed token")
    # a payload that is not a JSON object, properly signed
    for body in (b"[1,2]", b"not json", b'"text"'):
        head_json = {"alg": "RS256", "kid": "rsa-1"}
        compact = jws.serialize_compact(head_json, body, keys["rsa1"], algorithms=["RS256"])
        refused(verifier, compact, "malformed token")


def test_crit_and_unencoded_payload_headers_are_refused(idp: IdP, keys: dict[str, Any], refused) -> None:
    verifier = make_verifier(idp)
    for extra in ({"crit": ["exp"], "exp": 1}, {"crit": ["b64"], "b64": False}, {"b64": True}):
        head = b64json({"alg": "RS256", "kid": "rsa-1", **extra})
        signing_input = f"{head}.{b64json(claims_for(idp.issuer))}"
        signature = keys["rsa1"].private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        refused(verifier, f"{signing_input}.{b64(signature)}", "unsupported token header")


def test_unknown_kid_and_a_flood_cost_at_most_one_refetch(idp: IdP, keys: dict[str, Any], refused,
                                                         clock: FakeClock) -> None:
    verifier = make_verifier(idp, clock, jwks_refresh_min_seconds=30)
    assert verifier.verify(mint(keys["rsa1"], idp.issuer), [AUD])
    assert idp.jwks_fetches == 1
    stranger = RSAKey.generate_key(2048, parameters={"kid": "attacker-kid-0000"})
    err = refused(verifier, mint(stranger, idp.issuer), "unknown signing key")
    assert "attacker-kid" not in err.description
    clock.advance(31)
    for _ in range(50):
        kid = "attacker-" + secrets.token_hex(8)
        err = refused(verifier, mint(stranger, idp.issuer, header={"kid": kid}), "unknown signing key")
        assert kid not in err.description
        clock.advance(0.1)  # 5 s in all: still inside the refresh interval
    assert idp.jwks_fetches == 2  # one refetch for the whole flood
    # known keys kept working throughout, without further fetches
    assert verifier.verify(mint(keys["ec1"], idp.issuer), [AUD])
    assert idp.jwks_fetches == 2


def test_concurrent_unknown_kids_collapse_into_one_fetch(idp: IdP, keys: dict[str, Any], clock: FakeClock) -> None:
    verifier = make_verifier(idp, clock, jwks_refresh_min_seconds=30)
    assert verifier.verify(mint(keys["rsa1"], idp.issuer), [AUD])
    idp.keys.append(keys["rsa2"])
    idp.jwks_delay = 0.15
    clock.advance(31)
    token = mint(keys["rsa2"], idp.issuer)
    results: list[Any] = []

    def worker() -> None:
        try:
            results.append(verifier.verify(token, [AUD]).subject)
        except AuthError as exc:
            results.append(exc.description)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["alice"] * 16
    assert idp.jwks_fetches == 2


def test_key_rotation(idp: IdP, keys: dict[str, Any], refused, clock: FakeClock) -> None:
    verifier = make_verifier(idp, clock, jwks_refresh_min_seconds=30, jwks_cache_seconds=600)
    old = mint(keys["rsa1"], idp.issuer)
    assert verifier.verify(old, [AUD])
    assert idp.jwks_fetches == 1
    # the issuer publishes a new key and starts signing with it
    idp.keys.append(keys["rsa2"])
    new = mint(keys["rsa2"], idp.issuer)
    refused(verifier, new, "unknown signing key")  # right after the first fetch: paced
    assert idp.jwks_fetches == 1
    clock.advance(30)
    assert verifier.verify(new, [AUD]).subject == "alice"
    assert idp.jwks_fetches == 2  # exactly one refetch
    assert verifier.verify(old, [AUD])  # both keys are published
    # the issuer retires the old key; the cached set notices when it expires
    idp.keys = [k for k in idp.keys if k.kid != "rsa-1"]
    assert verifier.verify(old, [AUD])  # still cached, no I/O
    assert idp.jwks_fetches == 2
    clock.advance(601)
    assert verifier.verify(old, [AUD])  # expired set: served while a background refresh runs
    background = verifier._background
    assert background is not None
    background.join(5)
    assert idp.jwks_fetches == 3
    refused(verifier, old, "unknown signing key")
    assert verifier.verify(new, [AUD])


def test_rotation_replacing_the_key_set(idp: IdP, keys: dict[str, Any], refused, clock: FakeClock) -> None:
    verifier = make_verifier(idp, clock, jwks_refresh_min_seconds=10)
    old = mint(keys["rsa1"], idp.issuer)
    assert verifier.verify(old, [AUD])
    idp.keys = [keys["rsa2"], keys["ec2"]]  # old keys gone, new ones in
    clock.advance(10)
    assert verifier.verify(mint(keys["ec2"], idp.issuer), [AUD])
    assert idp.jwks_fetches == 2
    refused(verifier, old, "unknown signing key")  # removed: refused after that refetch
    assert verifier.verify(mint(keys["rsa2"], idp.issuer), [AUD])
    assert idp.jwks_fetches == 2


def test_cached_keys_need_no_io(idp: IdP, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = make_verifier(idp)
    token = mint(keys["rsa1"], idp.issuer)
    assert verifier.verify(token, [AUD])

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the hot path did I/O")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    for _ in range(200):
        assert verifier.verify(token, [AUD])
    assert idp.jwks_fetches == 1


# -- key sources ------------------------------------------------------------------------------


def test_discovery_via_openid_configuration(keys: dict[str, Any]) -> None:
    idp = IdP([keys["rsa1"]], path="/realms/acme", oauth=False)
    try:
        verifier = make_verifier(idp, jwks_url=None)
        assert verifier.verify(mint(keys["rsa1"], idp.issuer), [AUD]).subject == "alice"
        assert idp.metadata_fetches == {"/realms/acme/.well-known/openid-configuration": 1}
        assert idp.jwks_fetches == 1
    finally:
        idp.stop()


def test_discovery_falls_back_to_oauth_authorization_server(keys: dict[str, Any]) -> None:
    idp = IdP([keys["ec1"]], path="/tenant/one", openid=False)
    try:
        verifier = make_verifier(idp, jwks_url=None)
        assert verifier.verify(mint(keys["ec1"], idp.issuer), [AUD]).subject == "alice"
        assert idp.metadata_fetches == {"/.well-known/oauth-authorization-server/tenant/one": 1}
    finally:
        idp.stop()
    # and at an issuer without a path
    bare = IdP([keys["ec1"]], openid=False)
    try:
        verifier = make_verifier(bare, jwks_url=None)
        assert verifier.verify(mint(keys["ec1"], bare.issuer), [AUD])
        assert bare.metadata_fetches == {"/.well-known/oauth-authorization-server": 1}
    finally:
        bare.stop()


def test_discovery_refuses_metadata_of_another_issuer(keys: dict[str, Any], refused) -> None:
    idp = IdP([keys["rsa1"]])
    try:
        idp.advertised_issuer = "https://evil.example"
        verifier = make_verifier(idp, jwks_url=None)
        refused(verifier, mint(keys["rsa1"], idp.issuer), "signing keys unavailable")
        assert idp.jwks_fetches == 0
    finally:
        idp.stop()


def test_discovery_urls() -> None:
    assert discovery_urls("https://idp.example") == [
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server",
    ]
    assert discovery_urls("https://idp.example/realms/acme/") == [
        "https://idp.example/realms/acme/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server/realms/acme",
        "https://idp.example/.well-known/openid-configuration/realms/acme",
    ]


def write_jwks(path: Path, key_list: list[Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(KeySet(key_list).as_dict(private=False)))
    os.replace(tmp, path)


def test_jwks_file(tmp_path: Path, keys: dict[str, Any], refused, clock: FakeClock) -> None:
    issuer = "https://idp.example"
    path = tmp_path / "jwks.json"
    write_jwks(path, [keys["rsa1"]])
    verifier = JwtVerifier(JwtConfig(issuer=issuer, jwks_file=path), clock=clock)
    assert verifier.verify(mint(keys["rsa1"], issuer), [AUD]).subject == "alice"
    # rotated on disk: an unknown kid re-reads the changed file at once
    write_jwks(path, [keys["rsa2"]])
    assert verifier.verify(mint(keys["rsa2"], issuer), [AUD])
    refused(verifier, mint(keys["rsa1"], issuer), "unknown signing key")
    # a removed key also stops verifying once the file check comes round
    write_jwks(path, [keys["rsa2"], keys["ec1"]])
    assert verifier.verify(mint(keys["ec1"], issuer), [AUD])
    write_jwks(path, [keys["ec1"]])
    assert verifier.verify(mint(keys["rsa2"], issuer), [AUD])  # not checked yet
    clock.advance(FILE_CHECK_SECONDS)
    refused(verifier, mint(keys["rsa2"], issuer), "unknown signing key")
    # a broken file keeps the keys read before
    path.write_text("{not json")
    clock.advance(FILE_CHECK_SECONDS)
    assert verifier.verify(mint(keys["ec1"], issuer), [AUD])
    assert verifier.fetches == 0


def test_jwks_file_unusable_at_start(tmp_path: Path) -> None:
    for content in (None, "not json", '{"no": "keys"}'):
        path = tmp_path / "jwks.json"
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
        with pytest.raises(ValueError, match="jwks_file"):
            JwtVerifier(JwtConfig(issuer="https://idp.example", jwks_file=path))


def test_idp_down_after_first_fetch_keeps_cached_keys(idp: IdP, keys: dict[str, Any], refused,
                                                      clock: FakeClock) -> None:
    verifier = make_verifier(idp, clock, jwks_cache_seconds=60, jwks_refresh_min_seconds=5)
    token = mint(keys["rsa1"], idp.issuer)
    assert verifier.verify(token, [AUD])
    idp.stop()
    clock.advance(3600)  # the cached set has long expired
    assert verifier.verify(token, [AUD])
    background = verifier._background
    assert background is not None
    background.join(5)
    assert verifier.verify(token, [AUD])
    assert verifier.verify(mint(keys["ec1"], idp.issuer), [AUD])
    clock.advance(10)
    refused(verifier, mint(keys["rsa2"], idp.issuer), "unknown signing key")  # the refetch failed quietly
    assert verifier.verify(token, [AUD])


def test_no_keys_at_all(keys: dict[str, Any], refused, clock: FakeClock) -> None:
    idp = IdP([keys["rsa1"]])
    idp.stop()
    verifier = make_verifier(idp, clock)
    refused(verifier, mint(keys["rsa1"], idp.issuer), "signing keys unavailable")
    refused(verifier, mint(keys["rsa1"], idp.issuer), "signing keys unavailable")
    assert verifier.fetches == 1  # the second token did not try again within the refresh interval


def test_kidless_keys(keys: dict[str, Any], refused) -> None:
    idp = IdP([keys["anon_rsa"], keys["anon_ec"], keys["rsa1"]])
    try:
        verifier = make_verifier(idp)
        assert verifier.verify(mint(keys["anon_rsa"], idp.issuer), [AUD])
        assert verifier.verify(mint(keys["anon_ec"], idp.issuer), [AUD])
        assert verifier.verify(mint(keys["rsa1"], idp.issuer, header={"kid": None}), [AUD])  # kid-less token, kid'd key
        stranger = RSAKey.generate_key(2048)
        refused(verifier, mint(stranger, idp.issuer), "bad signature")
        refused(verifier, mint(keys["anon_rsa"], idp.issuer, header={"kid": "made-up"}), "unknown signing key")
    finally:
        idp.stop()


def test_keys_that_must_not_verify_are_ignored(keys: dict[str, Any], refused) -> None:
    idp = IdP([keys["rsa1"]])
    try:
        served = idp.jwks

        def with_extras() -> dict[str, Any]:
            doc = served()
            enc = dict(keys["rsa2"].as_dict(private=False), use="enc")
            oct_key = {"kty": "oct", "kid": "shared", "k": b64(b"secret-secret-secret-secret-1234")}
            doc["keys"] += [enc, oct_key, {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"}, "junk"]
            return doc

        idp.jwks = with_extras  # type: ignore[method-assign]
        verifier = make_verifier(idp)
        assert verifier.verify(mint(keys["rsa1"], idp.issuer), [AUD])
        refused(verifier, mint(keys["rsa2"], idp.issuer), "unknown signing key")
        forged = forge_hmac(b"secret-secret-secret-secret-1234", idp.issuer, "shared")
        refused(verifier, forged, "token algorithm not allowed")
    finally:
        idp.stop()


def test_random_mutations_only_ever_raise_auth_error(idp: IdP, keys: dict[str, Any]) -> None:
    verifier = make_verifier(idp)
    good = mint(keys["ec1"], idp.issuer)
    assert verifier.verify(good, [AUD])
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_.=+/ \x00é"
    for _ in range(3000):
        chars = list(good)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.5:
                chars[pos] = rng.choice(alphabet)
            elif action < 0.75:
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(alphabet))
        token = "".join(chars)
        if token == good:
            continue
        # the signature covers the encoded segments and base64url is decoded strictly
        # (no padding, no spare bits): every change must be refused, never raise anything else
        with pytest.raises(AuthError) as info:
            verifier.verify(token, [AUD])
        assert (info.value.status, info.value.error) == (401, "invalid_token")
        assert_no_leak(token, [info.value.description])


def test_refresh_warms_the_cache(idp: IdP, keys: dict[str, Any], clock: FakeClock) -> None:
    verifier = make_verifier(idp, clock)
    assert verifier.refresh() is True
    assert verifier.refresh() is True  # within the refresh interval: no second fetch
    assert idp.jwks_fetches == 1
    assert verifier.verify(mint(keys["rsa1"], idp.issuer), [AUD])
    assert idp.jwks_fetches == 1


# -- settings that can never work: one line and exit 2 from every command, never a traceback ---

MCPFW = [sys.executable, "-m", "firewall.cli"]
PUBLIC = "proxy:\n  public_url: http://127.0.0.1:9\n"
BROKEN_SETTINGS = {
    "missing jwks_file": ("auth:\n  mode: required\n  jwt: {issuer: 'https://idp.example', jwks_file: missing.json}\n",
                          "auth.jwt.jwks_file: {dir}/missing.json: No such file or directory"),
    "jwks_file not JSON": ("auth:\n  mode: required\n  jwt: {issuer: 'https://idp.example', jwks_file: mcpfw.yaml}\n",
                           "auth.jwt.jwks_file: {dir}/mcpfw.yaml: not JSON"),
    "HS256": ("auth:\n  mode: required\n  jwt: {issuer: 'https://idp.example', algorithms: [HS256]}\n",
              "auth.jwt.algorithms: Value error, HS256 not allowed"),
    "unknown algorithm": ("auth:\n  mode: required\n  jwt: {issuer: 'https://idp.example', algorithms: [XY999]}\n",
                          "auth.jwt.algorithms: unknown JWS algorithm 'XY999'"),
    "nobody can authenticate": ("auth:\n  mode: optional\n  api_keys: {enabled: false}\n",
                                "neither auth.jwt nor auth.api_keys is enabled"),
    "issuer not a URL": ("auth:\n  mode: required\n  jwt: {issuer: not-a-url}\n", "auth.jwt.issuer: Value error, not an http(s) URL"),
    "ftp issuer": ("auth:\n  mode: required\n  jwt: {issuer: 'ftp://idp.example'}\n", "auth.jwt.issuer: Value error, not an http(s) URL"),
    "empty issuer": ("auth:\n  mode: required\n  jwt: {issuer: ''}\n", "auth.jwt.issuer: Value error, not an http(s) URL"),
    "file jwks_url": ("auth:\n  mode: required\n  jwt: {issuer: 'https://idp.example', jwks_url: 'file:///etc/passwd'}\n",
                      "auth.jwt.jwks_url: Value error, not an http(s) URL"),
}


def one_line_exit_2(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("case", list(BROKEN_SETTINGS))
def test_settings_that_cannot_work_stop_every_command(tmp_path: Path, case: str) -> None:
    text, fragment = BROKEN_SETTINGS[case]
    config = tmp_path / "mcpfw.yaml"
    config.write_text(PUBLIC + text)
    fragment = fragment.format(dir=tmp_path)
    marker = tmp_path / "server-started"
    audit = str(tmp_path / "audit.duckdb")
    for args in (["config", "check", str(config)],
                 ["proxy", "--config", str(config), "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/mcp", "--audit", audit],
                 ["stdio", "--config", str(config), "--audit", audit, "--", "touch", str(marker)]):
        one_line_exit_2(subprocess.run([*MCPFW, *args], capture_output=True, text=True, timeout=60), fragment)
    assert not marker.exists()


def test_proxy_auth_flags_that_cannot_work(tmp_path: Path) -> None:
    base = ["proxy", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/mcp", "--public-url", "http://127.0.0.1:9",
            "--audit", str(tmp_path / "audit.duckdb")]
    for flags, fragment in [
        (["--auth-issuer", "ftp://idp.example"], "proxy: auth.jwt.issuer: Value error, not an http(s) URL"),
        (["--auth-issuer", "https://idp.example", "--auth-jwks-url", "file:///etc/passwd"], "proxy: auth.jwt.jwks_url"),
        (["--auth-issuer", "https://idp.example", "--auth-jwks-file", str(tmp_path / "none.json")],
         f"auth.jwt.jwks_file: {tmp_path}/none.json: No such file or directory"),
    ]:
        one_line_exit_2(subprocess.run([*MCPFW, *base, *flags], capture_output=True, text=True, timeout=60), fragment)
