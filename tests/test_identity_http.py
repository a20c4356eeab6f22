"""The firewall as an OAuth 2.1 resource server in front of real MCP servers: tokens from a
local identity provider, API keys, tenants, RBAC, session binding, upstream credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from firewall import errors
from firewall.identity.apikeys import KeyStore
from peers.http_harness import InProcessFirewall, everything_server, free_port, http, make_config
from peers.idp import IdentityProvider
from support import audit_rows

TS_CLIENT = Path(__file__).parent / "peers" / "ts_http_client.mjs"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider()
    with provider.serving():
        yield provider


@pytest.fixture(scope="module")
def everything():
    port = free_port()
    with everything_server(port, "streamableHttp"):
        yield f"http://127.0.0.1:{port}/mcp"


def auth_config(tmp: Path, upstreams: list[dict[str, Any]], idp: IdentityProvider, **auth: Any) -> Any:
    config = make_config(tmp, upstreams)
    data = config.model_dump()
    data["auth"] = {
        "mode": "required",
        "jwt": {"issuer": idp.issuer, "jwks_refresh_min_seconds": 0},
        "api_keys": {"store": str(tmp / "keys.sqlite")},
        **auth,
    }
    return type(config).model_validate(data)


@pytest.fixture(scope="module")
def firewall(tmp_path_factory, idp, everything):
    tmp = tmp_path_factory.mktemp("identity")
    upstreams = [
        {"url": everything, "name": "acme-everything", "path_prefix": "/acme", "tenants": ["acme"]},
        {"url": everything, "name": "globex-everything", "path_prefix": "/globex", "tenants": ["globex"]},
    ]
    with InProcessFirewall(auth_config(tmp, upstreams, idp)) as fw:
        fw.audit = tmp / "audit.duckdb"
        fw.keys = KeyStore(tmp / "keys.sqlite")
        yield fw


def resource(fw: InProcessFirewall, tenant: str) -> str:
    return f"{fw.url}/{tenant}/mcp"


def token(idp: IdentityProvider, fw: InProcessFirewall, *, tenant: str = "acme", sub: str = "alice",
          roles: list[str] | None = None, **claims: Any) -> str:
    claims.setdefault("aud", resource(fw, tenant))
    return idp.token(sub=sub, tenant=tenant, roles=roles if roles is not None else ["reader"], **claims)


def post(fw: InProcessFirewall, tenant: str, credential: str | None, body: Any = INIT, **headers: str):
    sent = dict(ACCEPT, **headers)
    if credential is not None:
        sent["authorization"] = f"Bearer {credential}"
    return http("POST", resource(fw, tenant), json_body=body, headers=sent)


# -- discovery and challenges ---------------------------------------------------------


def test_unauthenticated_gets_401_pointing_at_protected_resource_metadata(firewall, idp):
    answer = post(firewall, "acme", None)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    metadata_url = f"{firewall.url}/.well-known/oauth-protected-resource/acme/mcp"
    assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata_url}"' in challenge
    assert answer.json()["error"]["code"] == errors.AUTH_FAILED and answer.json()["id"] == 1
    doc = http("GET", metadata_url).json()
    assert doc["resource"] == resource(firewall, "acme")
    assert doc["authorization_servers"] == [idp.issuer] and doc["bearer_methods_supported"] == ["header"]


def test_a_good_token_reaches_the_server(firewall, idp):
    answer = post(firewall, "acme", token(idp, firewall))
    assert answer.status_code == 200, answer.content
    assert "serverInfo" in answer.text


def forged_tokens(idp: IdentityProvider, fw: InProcessFirewall) -> dict[str, str]:
    good = token(idp, fw)
    head, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    public_pem = idp.keys[0].as_pem(private=False)

    def b64(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    # The classic confusion: HMAC keyed with the RSA public key (joserfc rightly refuses to build it).
    signing_input = f"{b64({'alg': 'HS256', 'kid': idp.keys[0].kid, 'typ': 'JWT'})}.{payload}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs256 = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    now = int(time.time())
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "HS256 with the RSA public key": hs256,
        "expired": token(idp, fw, exp=now - 3600, iat=now - 7200),
        "not yet valid": token(idp, fw, nbf=now + 3600),
        "wrong audience": token(idp, fw, aud="https://elsewhere.example/mcp"),
        "wrong issuer": token(idp, fw, iss="https://evil.example"),
        "unknown kid": token(idp, fw, header={"kid": "nobody-has-this-key"}),
        "tampered payload": f"{head}.{b64({**claims, 'roles': ['admin']})}.{signature}",
        "garbage": "not-a-token",
    }


def test_forged_tokens_are_refused_with_401(firewall, idp):
    for name, forged in forged_tokens(idp, firewall).items():
        answer = post(firewall, "acme", forged)
        assert answer.status_code == 401, name
        assert 'error="invalid_token"' in answer.headers["www-authenticate"], name
        assert forged not in answer.text and forged not in answer.headers["www-authenticate"], name


def test_a_tenant_cannot_use_another_tenants_route(firewall, idp):
    # The token is for acme, and even names globex's resource: the route still refuses it.
    answer = post(firewall, "globex", token(idp, firewall, tenant="acme", aud=resource(firewall, "globex")))
    assert answer.status_code == 403
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert "acme" in answer.json()["error"]["message"]


def test_a_stolen_session_id_gets_nothing(firewall, idp):
    alice = token(idp, firewall, sub="alice")
    opened = post(firewall, "acme", alice)
    sid = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    ok = post(firewall, "acme", alice, listing, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
    assert ok.status_code == 200
    mallory = token(idp, firewall, sub="mallory")
    stolen = post(firewall, "acme", mallory, listing, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == errors.SESSION_NOT_FOUND
    assert post(firewall, "acme", None, listing, **{"mcp-session-id": sid}).status_code == 401
    rows = audit_rows(firewall.audit, "'session_not_owned' IN reason_codes", at_least=1)
    assert rows[-1]["subject"] == "mallory"


def test_a_token_cannot_pose_as_an_api_key_to_take_its_session(firewall, idp):
    """A key's default subject is key:<name>; a token claiming that subject in the key's
    tenant would own the key's sessions and tasks, so it is refused."""
    _, secret = firewall.keys.create("acme", "ci", roles=["admin"])
    opened = post(firewall, "acme", secret)
    sid = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    posing = token(idp, firewall, sub="key:ci", roles=["admin"])
    taken = post(firewall, "acme", posing, listing, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
    assert taken.status_code == 401 and "get-env" not in taken.text
    assert 'error_description="token subject uses the prefix \'key:\' reserved for API keys"' in taken.headers["www-authenticate"]
    assert post(firewall, "acme", secret, listing, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}).status_code == 200


def test_a_session_id_the_firewall_does_not_know_gets_nothing(firewall, idp):
    """Opened before a restart, or forgotten to make room: whose it is cannot be told, so it
    is not handed to whoever presents it first (the client opens a new session)."""
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    mallory = token(idp, firewall, sub="mallory")
    answer = post(firewall, "acme", mallory, listing, **{"mcp-session-id": "0123456789abcdef", "mcp-protocol-version": "2025-11-25"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == errors.SESSION_NOT_FOUND
    assert audit_rows(firewall.audit, "'session_unknown' IN reason_codes", at_least=1)


# -- RBAC with the real SDK clients ------------------------------------------------------


async def python_session(url: str, credential: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[set[str], list[Any]]:
    headers = {"Authorization": f"Bearer {credential}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as client:
        async with Client(streamable_http_client(url, http_client=client)) as session:
            names = {t.name for t in (await session.list_tools()).tools}
            results: list[Any] = []
            for name, arguments in calls:
                try:
                    done = await session.call_tool(name, arguments)
                    results.append(done.content[0].text)
                except MCPError as exc:
                    results.append(exc.error)
            return names, results


def test_rbac_per_role_with_the_python_sdk(firewall, idp):
    calls = [("echo", {"message": "hi"}), ("get-env", {})]
    reader_names, reader = anyio.run(python_session, resource(firewall, "acme"), token(idp, firewall, roles=["reader"]), calls)
    assert "echo" in reader_names and "get-env" not in reader_names  # never sees what it may not call
    assert "hi" in reader[0]
    assert reader[1].code == errors.POLICY_DENIED and "rbac_denied" in json.dumps(reader[1].data)
    admin_names, admin = anyio.run(python_session, resource(firewall, "acme"), token(idp, firewall, sub="root", roles=["admin"]), calls)
    assert "get-env" in admin_names and isinstance(admin[1], str)


def test_rbac_with_the_typescript_sdk_and_an_api_key(firewall):
    record, secret = firewall.keys.create("acme", "ts-agent", scopes=["mcp:read"])
    env = {**os.environ, "MCPFW_TEST_BEARER": secret}
    plan = {"calls": [{"tool": "echo", "arguments": {"message": "from ts"}}, {"tool": "get-env", "arguments": {}}]}
    done = subprocess.run(["node", str(TS_CLIENT), "streamableHttp", resource(firewall, "acme"), json.dumps(plan)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "get-env" not in out["tools"] and "echo" in out["tools"]
    assert out["results"][0]["ok"] and out["results"][1]["error"]["code"] == errors.POLICY_DENIED
    rows = audit_rows(firewall.audit, f"key_id = '{record.key_id}' AND decision = 'deny'", at_least=1)
    assert rows[-1]["tenant"] == "acme" and rows[-1]["auth_method"] == "api_key"
    # Revoked: refused on the very next request.
    firewall.keys.revoke(record.key_id)
    assert post(firewall, "acme", secret).status_code == 401
    assert http("POST", resource(firewall, "acme"), json_body=INIT, headers={**ACCEPT, "x-api-key": secret}).status_code == 401


def test_x_api_key_header(firewall):
    _, secret = firewall.keys.create("globex", "cron", roles=["admin"])
    answer = http("POST", resource(firewall, "globex"), json_body=INIT, headers={**ACCEPT, "x-api-key": secret})
    assert answer.status_code == 200, answer.content
    assert post(firewall, "acme", secret).status_code == 403  # a globex key on acme's route


def test_no_token_or_key_in_the_audit_log(firewall, idp):
    _, secret = firewall.keys.create("acme", "leak-check", roles=["reader"])
    bearer = token(idp, firewall, sub="leaky")
    for credential in (bearer, secret, bearer[:-4] + "AAAA"):
        post(firewall, "acme", credential)
        post(firewall, "acme", credential, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                            "params": {"name": "echo", "arguments": {"message": "x"}}})
    rows = audit_rows(firewall.audit, "subject = 'leaky' OR tenant = 'acme'", at_least=4)
    text = json.dumps(audit_rows(firewall.audit), default=str)
    assert rows and bearer not in text and secret not in text
    assert bearer.split(".")[2] not in text and secret.split("_", 2)[2] not in text  # mcpfw_<id>_<secret>: the secret may hold "_"


# -- upstream credentials ------------------------------------------------------------------


class RecordingUpstream:
    """A minimal MCP endpoint (JSON responses) that keeps the headers of every request."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.port = free_port()
        self._loop = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        self.paths.append(request.path_qs)
        body = await request.json()
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "rec", "version": "1"}}
        return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "result": result})

    def _run(self) -> None:
        import asyncio

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/mcp", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()
            while True:
                await asyncio.sleep(3600)

        asyncio.run(main())

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # a daemon thread: gone with the test process


def test_client_credentials_never_reach_the_upstream(tmp_path, idp, monkeypatch):
    monkeypatch.setenv("ACME_UPSTREAM_TOKEN", "upstream-secret-for-acme")
    with RecordingUpstream() as upstream:
        upstreams = [{"url": f"http://127.0.0.1:{upstream.port}/mcp", "name": "rec",
                      "headers": {"x-firewall": "mcpfw"},
                      "tenant_headers": {"acme": {"authorization": "Bearer ${ACME_UPSTREAM_TOKEN}"}}}]
        with InProcessFirewall(auth_config(tmp_path, upstreams, idp)) as fw:
            url = f"{fw.url}/mcp"
            bearer = idp.token(sub="alice", tenant="acme", roles=["reader"], aud=url)
            _, key = KeyStore(tmp_path / "keys.sqlite").create("globex", "k")
            assert http("POST", url, json_body=INIT, headers={**ACCEPT, "authorization": f"Bearer {bearer}"}).status_code == 200
            assert http("POST", url, json_body=INIT, headers={**ACCEPT, "x-api-key": key}).status_code == 200
    acme, globex = upstream.seen
    assert acme["authorization"] == "Bearer upstream-secret-for-acme" and acme["x-firewall"] == "mcpfw"
    assert "authorization" not in globex and "x-api-key" not in globex and globex["x-firewall"] == "mcpfw"
    assert bearer not in json.dumps(upstream.seen) and key not in json.dumps(upstream.seen)


def test_a_token_in_the_query_string_is_refused_not_forwarded(tmp_path, idp):
    """RFC 6750's access_token in the URL: 400 telling the client why, even beside a good header,
    so that the token reaches neither the upstream nor the logs of whatever is in between."""
    with RecordingUpstream() as upstream:
        upstreams = [{"url": f"http://127.0.0.1:{upstream.port}/mcp", "name": "rec"}]
        with InProcessFirewall(auth_config(tmp_path, upstreams, idp)) as fw:
            url = f"{fw.url}/mcp"
            bearer = idp.token(sub="alice", tenant="acme", roles=["reader"], aud=url)
            headers = {**ACCEPT, "authorization": f"Bearer {bearer}"}
            queries = (f"access_token={bearer}", "ACCESS_TOKEN=x", "a=1;access_token=x", "access%5Ftoken=x", "access_token")
            refused = [http("POST", f"{url}?{query}", json_body=INIT, headers=headers) for query in queries]
            passed = http("POST", f"{url}?access_token_hint=1&q=access_token", json_body=INIT, headers=headers)
    for answer in refused:
        assert answer.status_code == 400
        assert answer.json()["error"]["message"] == (
            "mcpfw: access_token in the URL query is not accepted: send the token in the Authorization header")
        assert 'error="invalid_request"' in answer.headers["www-authenticate"]
    assert passed.status_code == 200, passed.content
    assert upstream.paths == ["/mcp?access_token_hint=1&q=access_token"]
    assert len(audit_rows(tmp_path / "audit.duckdb", "'credential_in_query' IN reason_codes", at_least=5)) == 5


def test_a_key_store_failing_at_run_time_tells_the_client_nothing_of_it(tmp_path, idp, caplog):
    """The caller gets 503 and a generic message; the path and the OS error go to the log."""
    store_dir = tmp_path / "store"
    keys = KeyStore(store_dir / "keys.sqlite")
    _, key = keys.create("acme", "ci")
    keys.close()
    upstreams = [{"url": "http://127.0.0.1:9/mcp", "name": "unreached"}]
    config = auth_config(tmp_path, upstreams, idp, api_keys={"store": str(store_dir / "keys.sqlite")})
    with InProcessFirewall(config) as fw:
        shutil.rmtree(store_dir)
        store_dir.write_text("")  # where the store was, now a file: it cannot be reopened
        with caplog.at_level(logging.ERROR, logger="mcpfw.auth"):
            answer = http("POST", f"{fw.url}/mcp", json_body=INIT, headers={**ACCEPT, "x-api-key": key})
    assert answer.status_code == 503
    assert answer.json()["error"]["message"] == "mcpfw: the API key store is unavailable"
    assert str(store_dir) not in answer.text and "File exists" not in answer.text
    assert f"{store_dir}/keys.sqlite: cannot open the key store: File exists" in caplog.text


# -- as a user runs it: mcpfw proxy with the --auth-* flags ------------------------------------


def test_proxy_cli_flags_scopes_and_no_credentials_in_logs(tmp_path, idp, everything):
    from peers.http_harness import firewall_cli

    port = free_port()
    log = tmp_path / "firewall.log"
    url = f"http://127.0.0.1:{port}/mcp"
    flags = ["--auth-issuer", idp.issuer, "--auth-scope", "mcp:tools", "--keys-store", str(tmp_path / "keys.sqlite"),
             "--public-url", f"http://127.0.0.1:{port}"]
    tokens = {
        "scoped": idp.token(sub="ops", tenant="acme", roles=["admin"], scope="mcp:tools", aud=url),
        "unscoped": idp.token(sub="ops", tenant="acme", roles=["admin"], scope="mcp:read", aud=url),
        "expired": idp.token(sub="ops", tenant="acme", aud=url, exp=int(time.time()) - 600),
    }
    with firewall_cli(everything, port, tmp_path / "audit.duckdb", *flags, log=log):
        answers = {name: http("POST", url, json_body=INIT, headers={**ACCEPT, "authorization": f"Bearer {t}"})
                   for name, t in tokens.items()}
    assert answers["scoped"].status_code == 200
    refused = answers["unscoped"]
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="mcp:tools"' in refused.headers["www-authenticate"]
    assert answers["expired"].status_code == 401
    logged = log.read_text()
    assert "listening on" in logged  # the log is the process's stderr
    for value in tokens.values():
        assert value not in logged and value.split(".")[2] not in logged
    text = json.dumps(audit_rows(tmp_path / "audit.duckdb"), default=str)
    assert all(value.split(".")[2] not in text for value in tokens.values())


# -- key rotation through the firewall, WebSocket upgrades, mitmproxy's reverse mode ------------


def test_rotated_signing_key_is_picked_up(firewall, idp):
    assert post(firewall, "acme", token(idp, firewall)).status_code == 200  # keys loaded
    before = idp.jwks_fetches
    fresh = idp.add_key("rsa-2")
    try:
        rotated = idp.token(key=fresh, sub="alice", tenant="acme", roles=["reader"], aud=resource(firewall, "acme"))
        assert post(firewall, "acme", rotated).status_code == 200
        assert idp.jwks_fetches == before + 1  # one refetch for the unknown kid, then cached
        assert post(firewall, "acme", rotated).status_code == 200 and idp.jwks_fetches == before + 1
    finally:
        idp.keys.remove(fresh)


@pytest.mark.parametrize("engine", ["lean", "mitmproxy"])
def test_websocket_upgrade_is_authenticated(tmp_path, idp, engine):
    import sys

    import aiohttp

    from peers.http_harness import PEERS, process

    port = free_port()
    with process([sys.executable, str(PEERS / "ws_server.py"), "--port", str(port)], port):
        upstreams = [{"url": f"ws://127.0.0.1:{port}/mcp", "name": "ws", "tenants": ["acme"]}]
        with InProcessFirewall(auth_config(tmp_path, upstreams, idp), engine=engine) as fw:
            url = f"ws://127.0.0.1:{fw.port}/mcp"

            async def connect(credential: str | None) -> Any:
                headers = {"Authorization": f"Bearer {credential}"} if credential else {}
                async with aiohttp.ClientSession() as session:
                    try:
                        async with session.ws_connect(url, protocols=("mcp",), headers=headers) as ws:
                            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                          "params": {"name": "echo", "arguments": {"message": "hi"}}}))
                            return json.loads((await ws.receive(timeout=10)).data)
                    except aiohttp.WSServerHandshakeError as exc:
                        return exc.status

            assert anyio.run(connect, None) == 401
            wrong_tenant = idp.token(sub="eve", tenant="globex", roles=["admin"], aud=f"http://127.0.0.1:{fw.port}/mcp")
            assert anyio.run(connect, wrong_tenant) == 403
            reader = idp.token(sub="alice", tenant="acme", roles=["reader"], aud=f"http://127.0.0.1:{fw.port}/mcp")
            answer = anyio.run(connect, reader)
            assert answer["result"]["content"][0]["text"] == "hi"
    rows = audit_rows(tmp_path / "audit.duckdb", "transport = 'websocket' AND tool = 'echo'")
    assert rows and rows[0]["subject"] == "alice" and rows[0]["tenant"] == "acme"


def test_mitmproxy_reverse_mode_authenticates_too(tmp_path, idp, everything):
    config = auth_config(tmp_path, [{"url": everything, "name": "everything", "tenants": ["acme"]}], idp)
    with InProcessFirewall(config, engine="mitmproxy") as fw:
        url = f"{fw.url}/mcp"
        assert http("POST", url, json_body=INIT, headers=ACCEPT).status_code == 401
        good = idp.token(sub="alice", tenant="acme", roles=["reader"], aud=url)
        assert http("POST", url, json_body=INIT, headers={**ACCEPT, "authorization": f"Bearer {good}"}).status_code == 200
        metadata = http("GET", f"{fw.url}/.well-known/oauth-protected-resource/mcp").json()
        assert metadata["resource"] == url


def test_legacy_sse_message_endpoint_is_bound_to_its_caller(tmp_path, idp):
    import aiohttp

    from peers.http_harness import conformance_server

    port = free_port()
    with conformance_server(port, "--legacy-sse"):
        config = auth_config(tmp_path, [{"url": f"http://127.0.0.1:{port}/mcp", "name": "legacy"}], idp)
        with InProcessFirewall(config) as fw:
            aud = f"{fw.url}/mcp"
            alice = idp.token(sub="alice", tenant="acme", roles=["reader"], aud=aud)
            mallory = idp.token(sub="mallory", tenant="acme", roles=["reader"], aud=aud)

            async def scenario() -> tuple[int, int]:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{fw.url}/sse", headers={"Authorization": f"Bearer {alice}"}) as stream:
                        assert stream.status == 200
                        endpoint = None
                        while endpoint is None:
                            line = (await stream.content.readline()).decode().strip()
                            if line.startswith("data:"):
                                endpoint = line[5:].strip()
                        path, _, query = endpoint.partition("?")
                        name, _, value = query.partition("=")
                        # The same session id as a lenient server reads it (upper case): the
                        # firewall does not know it, so it is not handed to the first caller.
                        respelled = f"{path}?{name}={value.upper()}"
                        statuses = []
                        for credential, target in ((mallory, endpoint), (mallory, respelled), (alice, endpoint)):
                            async with session.post(f"{fw.url}{target}", json=INIT,
                                                    headers={"Authorization": f"Bearer {credential}"}) as posted:
                                statuses.append(posted.status)
                        return statuses

            stolen, respelled, own = anyio.run(scenario)
    assert stolen == 404 and respelled == 404 and own == 202
