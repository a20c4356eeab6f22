"""API keys: the SQLite key store, its hot-path cache, and `mcpfw keys`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from firewall.cli import main as mcpfw
from firewall.config import ApiKeysConfig
from firewall.identity import AuthError, apikeys
from firewall.identity.apikeys import (
    KeyRecord,
    KeyStore,
    KeyStoreError,
    default_key_store,
)
from firewall.keys_cli import parse_expires
from firewall.paths import PROJECT_ROOT


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys.sqlite"


@pytest.fixture
def store(store_path: Path):
    s = KeyStore(store_path)
    yield s
    s.close()


def secret_of(key: str) -> str:
    """The secret part of ``mcpfw_<12 hex>_<secret>`` (the secret may itself contain ``_``)."""
    return key[len("mcpfw_") + 12 + 1:]


def refused(s: KeyStore, presented: object) -> AuthError:
    with pytest.raises(AuthError) as info:
        s.verify(presented)  # type: ignore[arg-type]
    err = info.value
    assert (err.status, err.error) == (401, "invalid_token")
    return err


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = mcpfw(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the store ------------------------------------------------------------------------------


def test_create_verify_round_trip(store, store_path):
    record, key = store.create("acme", "ci", scopes=["tools:read", "tools:call"], roles=["dev"], expires_at=time.time() + 3600)
    assert key.startswith(f"mcpfw_{record.key_id}_")
    assert len(record.key_id) == 12 and int(record.key_id, 16) >= 0
    secret = key[len(f"mcpfw_{record.key_id}_"):]
    assert len(secret) == 43 and len(base64.urlsafe_b64decode(secret + "=")) == 32

    ident = store.verify(key)
    assert ident.subject == "key:ci" and ident.tenant == "acme" and ident.auth_method == "api_key"
    assert ident.scopes == ("tools:read", "tools:call") and ident.roles == ("dev",)
    assert ident.key_id == record.key_id and ident.expires_at == record.expires_at
    assert ident.as_input()["key_id"] == record.key_id

    other, key2 = store.create("acme", "svc", subject="service-account@acme")
    assert store.verify(key2).subject == "service-account@acme" and store.verify(key2).expires_at is None
    assert other.effective_subject == "service-account@acme"

    # A second store over the same file (another process, in effect) accepts the key too.
    again = KeyStore(store_path)
    assert again.verify(key).key_id == record.key_id
    again.close()


def test_file_holds_no_secret_and_is_private(store, store_path):
    _, key = store.create("acme", "ci")
    secret = secret_of(key)
    raw = base64.urlsafe_b64decode(secret + "=")
    files = [p for p in store_path.parent.iterdir() if p.name.startswith("keys.sqlite")]
    assert store_path in files
    blob = b"".join(p.read_bytes() for p in files)
    for needle in (key.encode(), secret.encode(), raw, secret[:20].encode(), raw[:16]):
        assert needle not in blob
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    # What is stored instead: a salt and SHA-256(salt || secret).
    with sqlite3.connect(store_path) as conn:
        salt, digest = conn.execute("SELECT salt, digest FROM api_keys").fetchone()
    assert len(salt) == 16 and len(digest) == 32
    assert hashlib.sha256(salt + secret.encode()).digest() == digest


def test_wrong_secret_with_a_valid_key_id_is_refused(store):
    record, key = store.create("acme", "ci")
    secret = secret_of(key)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    err = refused(store, f"mcpfw_{record.key_id}_{flipped}")
    assert record.key_id in err.description
    assert flipped[:8] not in err.description and secret[:8] not in err.description
    refused(store, key[:-1])  # one character short
    refused(store, key + "A")  # one too many
    assert store.verify(key).key_id == record.key_id  # still fine afterwards


@pytest.mark.parametrize(
    "presented",
    [
        "",
        " ",
        "mcpfw_",
        "mcpfw__",
        "not-a-key",
        "Bearer mcpfw_0123456789ab_" + "A" * 43,
        "mcpfw_0123456789AB_" + "A" * 43,  # upper-case key id
        "mcpfw_0123456789ab_" + "A" * 42 + "=",
        "mcpfw_0123456789ab_" + "A" * 43 + "\n",
        "mcpfw_0123456789ab_" + "é" * 43,
        "mcpfw_０１２３４５６７８９ab_" + "A" * 43,  # full-width digits
        "mcpfw_0123456789ab_" + "A" * 100_000,
        "x" * 1_000_000,
        "mcpfw_0123456789ab\x00_" + "A" * 43,
        None,
        b"mcpfw_0123456789ab_" + b"A" * 43,
        12345,
    ],
    ids=lambda p: repr(p)[:24],
)
def test_malformed_keys_are_refused_with_auth_error(store, presented):
    store.create("acme", "ci")
    err = refused(store, presented)
    if isinstance(presented, str) and len(presented) > 20:
        assert presented[19:40] not in err.description


def test_unknown_key_id_is_refused(store):
    store.create("acme", "ci")
    err = refused(store, "mcpfw_0123456789ab_" + "A" * 43)
    assert "A" * 8 not in err.description
    refused(store, "mcpfw_0123456789ab_" + "A" * 43)  # negative cache path


def test_expired_keys_are_refused(store, monkeypatch):
    _, past = store.create("acme", "old", expires_at=time.time() - 1)
    assert "expired" in refused(store, past).description

    record, key = store.create("acme", "soon", expires_at=time.time() + 60)
    assert store.verify(key).key_id == record.key_id  # warm the cache
    later = time.time() + 61
    monkeypatch.setattr(apikeys, "time", types.SimpleNamespace(time=lambda: later))
    assert "expired" in refused(store, key).description
    assert store.list()[1].status(later) == "expired"


def test_revoke_in_process(store, store_path):
    record, key = store.create("acme", "ci")
    store.verify(key)
    assert store.revoke(record.key_id) is True
    assert "revoked" in refused(store, key).description
    assert store.revoke(record.key_id) is True  # idempotent, keeps the first time
    assert store.revoke("0123456789ab") is False
    assert store.get(record.key_id).status() == "revoked"

    # Revoked through another connection: a warm cache here notices (PRAGMA data_version).
    record2, key2 = store.create("acme", "ci2")
    store.verify(key2)
    other = KeyStore(store_path)
    assert other.revoke(record2.key_id)
    other.close()
    refused(store, key2)


def test_revoke_by_cli_subprocess_takes_effect_for_the_next_verify(store, store_path):
    record, key = store.create("acme", "ci")
    _, keep = store.create("acme", "other")
    for _ in range(3):
        store.verify(key)  # warm cache
    proc = subprocess.run(
        [sys.executable, "-m", "firewall.cli", "keys", "revoke", record.key_id, "--store", str(store_path)],
        check=False, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert record.key_id in proc.stdout
    assert "revoked" in refused(store, key).description
    assert store.verify(keep).tenant == "acme"


def test_names_are_unique_per_tenant(store):
    store.create("acme", "ci")
    with pytest.raises(KeyStoreError, match="already has a key named ci"):
        store.create("acme", "ci")
    store.create("globex", "ci")
    assert sorted((r.tenant, r.name) for r in store.list()) == [("acme", "ci"), ("globex", "ci")]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tenant": "", "name": "n"}, "invalid tenant"),
        ({"tenant": "a b", "name": "n"}, "invalid tenant"),
        ({"tenant": "t", "name": "-n"}, "invalid key name"),
        ({"tenant": "t", "name": "n", "scopes": ["a b"]}, "invalid scope"),
        ({"tenant": "t", "name": "n", "scopes": "read"}, "must be a list"),
        ({"tenant": "t", "name": "n", "roles": ["a,b"]}, "invalid role"),
        ({"tenant": "t", "name": "n", "subject": ""}, "invalid subject"),
        ({"tenant": "t", "name": "n", "expires_at": float("nan")}, "invalid expiry"),
    ],
)
def test_create_validates_its_arguments(store, kwargs, match):
    with pytest.raises(KeyStoreError, match=match):
        store.create(**kwargs)


def test_list_records_carry_no_secret(store):
    _, key = store.create("acme", "ci", scopes=["s"])
    store.create("globex", "bot")
    records = store.list()
    assert [r.name for r in records] == ["ci", "bot"] and [r.name for r in store.list("globex")] == ["bot"]
    assert set(KeyRecord.__dataclass_fields__) == {
        "key_id", "tenant", "name", "subject", "scopes", "roles", "created_at", "expires_at", "revoked_at",
    }
    assert secret_of(key) not in repr(records) and secret_of(key) not in json.dumps(records[0].as_dict())


def test_concurrent_verify_from_8_threads(store, store_path):
    keys = [store.create("acme", f"k{i}", roles=[f"r{i}"])[1] for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def worker(i: int) -> None:
        try:
            start.wait()
            for n in range(300):
                ident = store.verify(keys[i])
                assert ident.roles == (f"r{i}",)
                if n % 50 == 0:
                    with pytest.raises(AuthError):
                        store.verify(keys[i][:-1] + ("A" if keys[i][-1] != "A" else "B"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    # Meanwhile another connection writes, which keeps invalidating the cache.
    writer = KeyStore(store_path)
    start.wait()
    for i in range(10):
        writer.create("other", f"w{i}")
    for t in threads:
        t.join(timeout=30)
    writer.close()
    assert not errors, errors[0]


def test_cached_verify_is_fast(store):
    _, key = store.create("acme", "ci")
    store.verify(key)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        store.verify(key)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 200e-6, f"cached verify took {per_call * 1e6:.1f} µs"  # target well under 50 µs


def test_default_store_path(tmp_path):
    assert default_key_store(ApiKeysConfig()) == Path(os.environ["MCPFW_HOME"]) / "keys.sqlite"
    assert default_key_store(ApiKeysConfig(store=tmp_path / "k.db")) == tmp_path / "k.db"


def test_unwritable_store_is_a_key_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KeyStoreError, match="cannot open the key store"):
        KeyStore(blocker / "keys.sqlite").list()


# -- mcpfw keys -----------------------------------------------------------------------------


def test_parse_expires():
    now = 1_800_000_000.0
    assert parse_expires("30d", now) == now + 30 * 86400
    assert parse_expires("12h", now) == now + 12 * 3600
    assert parse_expires("2w", now) == now + 14 * 86400
    assert parse_expires("2027-01-31T00:00Z", now) == 1_801_353_600.0
    assert parse_expires("2027-01-31T00:00", now) == 1_801_353_600.0  # no zone: UTC
    assert parse_expires("2027-01-31T01:00+01:00", now) == 1_801_353_600.0
    for bad in ("0d", "30", "soon", "2020-01-01T00:00Z", "-1d", "99999999w", ""):
        with pytest.raises(ValueError, match="--expires"):
            parse_expires(bad, now)


def test_cli_create_list_revoke_end_to_end(capsys, tmp_path, store_path):
    s = ("--store", str(store_path))
    code, out, _ = run(capsys, "keys", "create", "--tenant", "acme", "--name", "ci", "--scopes", "tools:read,tools:call",
                       "--scope", "admin", "--roles", "dev,ops", "--subject", "ci-bot", "--expires", "30d", "--json", *s)
    assert code == 0
    created = json.loads(out)
    key, key_id = created["key"], created["key_id"]
    assert key.startswith(f"mcpfw_{key_id}_") and created["tenant"] == "acme" and created["expires"].endswith("Z")
    assert created["scopes"] == ["tools:read", "tools:call", "admin"] and created["roles"] == ["dev", "ops"]

    code, out, _ = run(capsys, "keys", "create", "--tenant", "globex", "--name", "bot", *s)
    assert code == 0 and "will not be shown again" in out
    plain_key = next(w for w in out.split() if w.startswith("mcpfw_"))

    verifier = KeyStore(store_path)
    ident = verifier.verify(key)
    assert (ident.subject, ident.tenant, ident.roles) == ("ci-bot", "acme", ("dev", "ops"))
    assert verifier.verify(plain_key).subject == "key:bot"

    code, out, _ = run(capsys, "keys", "list", *s)
    assert code == 0 and key_id in out and "acme" in out and "active" in out and "ci-bot" in out
    assert "STATUS" in out.splitlines()[0]
    code, listed, _ = run(capsys, "keys", "list", "--json", "--tenant", "acme", *s)
    entries = json.loads(listed)["keys"]
    assert [e["key_id"] for e in entries] == [key_id] and entries[0]["status"] == "active"
    for text in (out, listed):
        for k in (key, plain_key):
            assert secret_of(k) not in text and k not in text

    code, out, err = run(capsys, "keys", "revoke", key_id, *s)
    assert code == 0 and key_id in out
    refused(verifier, key)
    assert verifier.verify(plain_key).tenant == "globex"
    code, out, _ = run(capsys, "keys", "revoke", key_id, *s)
    assert code == 0 and "already revoked" in out
    code, out, err = run(capsys, "keys", "revoke", "0123456789ab", *s)
    assert code == 1 and "no key" in err
    code, listed, _ = run(capsys, "keys", "list", "--json", *s)
    assert {e["key_id"]: e["status"] for e in json.loads(listed)["keys"]}[key_id] == "revoked"
    verifier.close()


def test_cli_store_from_config_and_default(capsys, tmp_path):
    conf = tmp_path / "conf" / "mcpfw.yaml"
    conf.parent.mkdir()
    conf.write_text("auth:\n  api_keys:\n    store: team/keys.sqlite\n")
    code, out, _ = run(capsys, "keys", "create", "--tenant", "t", "--name", "n", "--config", str(conf), "--json")
    assert code == 0 and (tmp_path / "conf/team/keys.sqlite").exists()
    assert KeyStore(tmp_path / "conf/team/keys.sqlite").verify(json.loads(out)["key"]).tenant == "t"

    code, out, _ = run(capsys, "keys", "create", "--tenant", "t", "--name", "n", "--json")
    assert code == 0 and (Path(os.environ["MCPFW_HOME"]) / "keys.sqlite").exists()
    code, out, _ = run(capsys, "keys", "list", "--json")
    assert json.loads(out)["store"] == str(Path(os.environ["MCPFW_HOME"]) / "keys.sqlite")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--tenant", "t", "--name", "n", "--expires", "tomorrow"], "--expires"),
        (["create", "--tenant", "t", "--name", "n", "--expires", "2001-01-01T00:00Z"], "has passed"),
        (["create", "--tenant", "bad tenant", "--name", "n"], "invalid tenant"),
        (["create", "--tenant", "t", "--name", "n", "--scope", "a b"], "invalid scope"),
        (["list", "--store", "{blocked}/keys.sqlite"], "cannot open the key store"),
        (["list", "--config", "{missing}"], "cannot read"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path, argv, message):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    argv = [a.format(blocked=blocker, missing=tmp_path / "none.yaml") for a in argv]
    if "--store" not in argv:
        argv += ["--store", str(tmp_path / "keys.sqlite")] if argv[0] == "create" else []
    code, _, err = run(capsys, "keys", *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_required_scopes_are_advertised_as_supported():
    """A client that reads the resource metadata to choose its scopes must learn of the ones
    every request needs (--auth-scope)."""
    from firewall.config import AuthConfig
    from firewall.identity.authenticator import Authenticator

    config = AuthConfig(mode="required", scopes_supported=["mcp:read"], required_scopes=["mcp:tools", "mcp:read"])
    assert Authenticator(config).metadata("https://fw.example/mcp")["scopes_supported"] == ["mcp:read", "mcp:tools"]
    assert "scopes_supported" not in Authenticator(AuthConfig(mode="required")).metadata("https://fw.example/mcp")


def test_a_key_store_that_cannot_open_stops_the_firewall_at_start(tmp_path):
    """Not at the first request, with nothing logged: at start, naming the setting."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    marker = tmp_path / "server-started"
    config = tmp_path / "mcpfw.yaml"
    config.write_text(f"auth:\n  mode: required\n  api_keys:\n    store: {blocker}/keys.sqlite\n")
    audit = str(tmp_path / "audit.duckdb")
    fragment = f"auth.api_keys.store: {blocker}/keys.sqlite: cannot open the key store"
    for args in (["proxy", "--upstream", "http://127.0.0.1:9/mcp", "--listen", "127.0.0.1:0", "--audit", audit,
                  "--auth", "required", "--keys-store", f"{blocker}/keys.sqlite"],
                 ["stdio", "--config", str(config), "--audit", audit, "--", "touch", str(marker)]):
        done = subprocess.run([sys.executable, "-m", "firewall.cli", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and fragment in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not marker.exists()


def test_config_check_opens_an_existing_key_store_and_creates_none(tmp_path):
    store = tmp_path / "keys.sqlite"
    config = tmp_path / "mcpfw.yaml"
    config.write_text(f"auth:\n  mode: required\n  api_keys:\n    store: {store}\n")
    done = subprocess.run([sys.executable, "-m", "firewall.cli", "config", "check", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not store.exists(), done.stderr  # a check creates nothing
    store.write_text("not a database")
    done = subprocess.run([sys.executable, "-m", "firewall.cli", "config", "check", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"auth.api_keys.store: {store}: cannot open the key store" in done.stderr, done.stderr
