"""Rate limits: the counter stores (memory, real Redis), the enricher, and the pipeline end to end."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import ROOT, audit_rows

from firewall import errors
from firewall.config import Config, RateLimitsConfig
from firewall.jsonrpc import Message, classify
from firewall.pipeline import C2S, S2C, MessageContext
from firewall.policy.decision import Decision
from firewall.ratelimit import (
    CounterError,
    MemoryCounter,
    Op,
    RateEnricher,
    redis_counter,
)
from firewall.ratelimit.redis_counter import RedisCounter
from firewall.runtime import build_firewall
from firewall.session import PendingRequest, ServerIdentity, Session

REDIS_URL = "redis://127.0.0.1:6379/0"
ALLOW = Decision(allow=True)


# -- helpers ---------------------------------------------------------------------------------


def identity(tenant: str | None = "acme", subject: str | None = "alice", key_id: str | None = None) -> dict[str, Any]:
    return {"subject": subject, "tenant": tenant, "roles": ["admin"], "scopes": [], "key_id": key_id,
            "auth_method": "api_key", "claims": {}}


def session(name: str = "srv") -> Session:
    return Session(ServerIdentity(name), transport="stdio", cwd="/", resolve_symlinks=False)


def request_ctx(sess: Session, msg_id: Any = 1, *, tool: str | None = "search", method: str | None = None,
                ident: dict[str, Any] | None = None, size: int = 100) -> MessageContext:
    if tool is not None:
        body = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    else:
        body = {"jsonrpc": "2.0", "id": msg_id, "method": method or "ping", "params": {}}
    msg = classify(body)
    assert isinstance(msg, Message)
    tool_doc = {"name": tool, "arguments": {}} if tool is not None else None
    return MessageContext(msg, C2S, sess, body["method"], body["params"], tool_doc, None, size, identity=ident)


def response_ctx(sess: Session, msg_id: Any = 1, *, error: bool = False) -> MessageContext:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id}
    body.update({"error": {"code": -1, "message": "no"}} if error else {"result": {"content": []}})
    msg = classify(body)
    assert isinstance(msg, Message)
    pending = PendingRequest("tools/call", {}, None, time.monotonic())
    return MessageContext(msg, S2C, sess, "tools/call", None, None, pending, 50)


def cancel_ctx(sess: Session, request_id: Any) -> MessageContext:
    body = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
    msg = classify(body)
    assert isinstance(msg, Message)
    return MessageContext(msg, C2S, sess, body["method"], body["params"], None, None, 80)


def limits_config(prefix: str, backend: str = "memory", **fields: Any) -> RateLimitsConfig:
    fields.setdefault("rules", [])
    return RateLimitsConfig.model_validate({"backend": backend, "redis_url": REDIS_URL, "key_prefix": prefix, **fields})


def judge(enricher: RateEnricher, ctx: MessageContext, *, forward: bool | None = None) -> dict[str, Any] | None:
    """enrich + after, as the pipeline does; forwarded unless a limit was exceeded (or ``forward``)."""
    enricher.enrich(ctx)
    rate = ctx.rate
    if forward is None:
        forward = not (rate and (rate["exceeded"] or rate["error"]))
    enricher.after(ctx, ALLOW, ctx.message.body if forward else None)
    return rate


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def prefix() -> str:
    return f"mcpfw:test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_prefix(prefix: str):
    """A key prefix of this test's own in the real Redis; its keys are deleted afterwards."""
    if not _redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    import redis

    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def backend_prefix(request) -> tuple[str, str]:
    """(backend, key prefix) for tests that must hold for both stores."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_prefix")
    return "memory", request.getfixturevalue("prefix")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TcpProxy:
    """A TCP relay to Redis that can go down and come back on the same port, or stall."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.target = target
        self.port = 0
        self.stall = False
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for s in list(self._socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._socks.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._socks.append(client)
            if self.stall:
                continue  # accepted, never answered
            upstream = socket.create_connection(self.target)
            self._socks.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# -- the stores ------------------------------------------------------------------------------


def test_memory_window_counts_and_rolls_over():
    clock = FakeClock()
    counter = MemoryCounter(clock)
    op = Op("requests", "k", amount=1, window=10.0)
    assert [counter.hit([op])[0].count for _ in range(3)] == [1, 2, 3]
    clock.now += 4
    count = counter.hit([op])[0]
    assert count.count == 4 and count.reset == pytest.approx(6.0)
    clock.now += 6  # the window opened by the first hit has closed
    count = counter.hit([op])[0]
    assert count.count == 1 and count.reset == pytest.approx(10.0)


def test_memory_bytes_and_concurrent_slots():
    clock = FakeClock()
    counter = MemoryCounter(clock)
    assert counter.hit([Op("bytes", "b", amount=300, window=5)])[0].count == 300
    assert counter.hit([Op("bytes", "b", amount=250, window=5)])[0].count == 550
    take = [counter.hit([Op("concurrent", "c", limit=2, token=f"t{i}", ttl=30)])[0] for i in range(3)]
    assert [(c.count, c.taken) for c in take] == [(1, True), (2, True), (3, False)]
    counter.release([("c", "t0"), ("c", "unknown"), ("nokey", "t9")])
    assert counter.hit([Op("concurrent", "c", limit=2, token="t3", ttl=30)])[0].taken
    clock.now += 31  # every slot lapsed
    assert counter.hit([Op("concurrent", "c", limit=2, token="t4", ttl=30)])[0].count == 1


def test_memory_sweeps_closed_windows():
    clock = FakeClock()
    counter = MemoryCounter(clock)
    for i in range(100):
        counter.hit([Op("requests", f"k{i}", window=1), Op("concurrent", f"c{i}", limit=5, token="t", ttl=1)])
    clock.now += 2
    for _ in range(4096):
        counter.hit([Op("requests", "live", window=100)])
    assert set(counter._windows) == {"live"} and not counter._slots


def test_redis_window_counts_and_rolls_over(redis_prefix):
    counter = RedisCounter(REDIS_URL, timeout_ms=500)
    op = Op("requests", redis_prefix + "w", window=0.3)
    counts = [counter.hit([op])[0] for _ in range(3)]
    assert [c.count for c in counts] == [1, 2, 3]
    assert 0 < counts[-1].reset <= 0.3
    time.sleep(0.35)
    assert counter.hit([op])[0].count == 1


def test_redis_one_call_counts_every_op(redis_prefix):
    counter = RedisCounter(REDIS_URL, timeout_ms=500, in_flight_ttl=30)
    ops = [
        Op("requests", redis_prefix + "r", window=60),
        Op("bytes", redis_prefix + "b", amount=700, window=60),
        Op("concurrent", redis_prefix + "c", limit=1, token="a"),
    ]
    first = counter.hit(ops)
    assert [(c.count, c.taken) for c in first] == [(1, False), (700, False), (1, True)]
    second = counter.hit([*ops[:2], Op("concurrent", redis_prefix + "c", limit=1, token="b")])
    assert [(c.count, c.taken) for c in second] == [(2, False), (1400, False), (2, False)]
    assert second[2].reset is None and 59 < second[0].reset <= 60
    counter.release([(redis_prefix + "c", "a")])
    assert counter.hit([Op("concurrent", redis_prefix + "c", limit=1, token="b")])[0].taken


def test_redis_reloads_the_script_after_noscript(redis_prefix, monkeypatch):
    # A SHA the server has never seen stands for a flushed script cache (a restarted server)
    # without flushing the shared server's cache.
    monkeypatch.setattr(redis_counter, "HIT_SHA", "0" * 40)
    counter = RedisCounter(REDIS_URL, timeout_ms=500)
    assert counter.hit([Op("requests", redis_prefix + "n", window=60)])[0].count == 1
    assert counter.hit([Op("requests", redis_prefix + "n", window=60)])[0].count == 2


def test_redis_unreachable_raises_counter_error_and_fails_fast():
    counter = RedisCounter(f"redis://127.0.0.1:{closed_port()}/0", timeout_ms=200, cooldown=5.0)
    with pytest.raises(CounterError, match="ConnectionError"):
        counter.hit([Op("requests", "x", window=60)])
    with pytest.raises(CounterError, match="ConnectionError"):
        counter.hit([Op("requests", "x", window=60)])  # inside the cooldown: answered at once


def test_redis_down_is_not_dialled_again_inside_the_cooldown():
    # A "Redis" that hangs up on every connection, counting them.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[int] = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        counter = RedisCounter(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout_ms=200, cooldown=5.0)
        with pytest.raises(CounterError):
            counter.hit([Op("requests", "x", window=60)])
        deadline = time.monotonic() + 2
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        dialled = len(accepted)
        assert dialled >= 1
        for _ in range(3):
            with pytest.raises(CounterError):
                counter.hit([Op("requests", "x", window=60)])
        time.sleep(0.2)
        assert len(accepted) == dialled, "inside the cooldown the counter must not connect again"
    finally:
        listener.close()


def test_redis_timeout_is_bounded_by_timeout_ms(redis_prefix):
    proxy = TcpProxy()
    proxy.stall = True
    proxy.start()
    try:
        counter = RedisCounter(f"redis://127.0.0.1:{proxy.port}/0", timeout_ms=100, cooldown=0)
        started = time.perf_counter()
        with pytest.raises(CounterError, match="Timeout"):
            counter.hit([Op("requests", redis_prefix + "t", window=60)])
        assert time.perf_counter() - started < 1.0
    finally:
        proxy.stop()


def test_redis_recovers_after_the_server_comes_back(redis_prefix):
    proxy = TcpProxy()
    proxy.start()
    try:
        counter = RedisCounter(f"redis://127.0.0.1:{proxy.port}/0", timeout_ms=300, cooldown=0.05)
        op = Op("requests", redis_prefix + "r", window=60)
        assert counter.hit([op])[0].count == 1
        proxy.stop()  # the server goes away: pooled connections break, new ones are refused
        with pytest.raises(CounterError):
            counter.hit([op])
        proxy.start()  # back on the same port
        time.sleep(0.06)
        assert counter.hit([op])[0].count == 2  # counters kept, client reconnected
        proxy.stop()
        proxy.start()  # a restart between two messages: the stale connection is replaced at once
        assert counter.hit([op])[0].count == 3
    finally:
        proxy.stop()


# -- the enricher ----------------------------------------------------------------------------


def test_requests_limit_and_the_rate_document(backend_prefix):
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(prefix, backend, rules=[{"name": "per-tenant", "requests": 3, "window_seconds": 30}]))
    sess = session()
    docs = [judge(enricher, request_ctx(sess, i, ident=identity())) for i in range(4)]
    assert [d["limits"][0]["count"] for d in docs] == [1, 2, 3, 4]
    assert docs[2]["exceeded"] == [] and docs[2]["retry_after_seconds"] is None
    last = docs[3]
    assert last["backend"] == backend and last["error"] is None and last["on_error"] == "deny"
    assert last["exceeded"] == ["per-tenant"]
    entry = last["limits"][0]
    assert entry == {
        "rule": "per-tenant", "kind": "requests", "key": "tenant=acme", "limit": 3, "count": 4, "remaining": 0,
        "window_seconds": 30.0, "reset_seconds": entry["reset_seconds"], "exceeded": True,
    }
    assert 29 < entry["reset_seconds"] <= 30
    assert last["retry_after_seconds"] == entry["reset_seconds"]


def test_windows_roll_over_through_the_enricher(backend_prefix):
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(prefix, backend, rules=[{"name": "r", "requests": 1, "window_seconds": 0.2}]))
    sess = session()
    assert judge(enricher, request_ctx(sess, 1))["exceeded"] == []
    assert judge(enricher, request_ctx(sess, 2))["exceeded"] == ["r"]
    time.sleep(0.25)
    assert judge(enricher, request_ctx(sess, 3))["exceeded"] == []


def test_bytes_quota_sums_message_sizes(backend_prefix):
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(prefix, backend, rules=[{"name": "quota", "bytes": 1000, "requests": 100}]))
    sess = session()
    sizes = [400, 500, 200]
    docs = [judge(enricher, request_ctx(sess, i, size=size)) for i, size in enumerate(sizes)]
    by_kind = [{e["kind"]: e for e in d["limits"]} for d in docs]
    assert [b["bytes"]["count"] for b in by_kind] == [400, 900, 1100]
    assert [b["requests"]["count"] for b in by_kind] == [1, 2, 3]
    assert by_kind[1]["bytes"]["remaining"] == 100
    assert docs[2]["exceeded"] == ["quota"] and by_kind[2]["bytes"]["exceeded"] and not by_kind[2]["requests"]["exceeded"]


def test_concurrent_slots_released_by_responses_and_denials(backend_prefix):
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(prefix, backend, rules=[{"name": "inflight", "concurrent": 2, "per": ["subject"]}]))
    sess = session()
    first = judge(enricher, request_ctx(sess, 1, ident=identity()))
    assert first["limits"][0] == {
        "rule": "inflight", "kind": "concurrent", "key": "subject=alice", "limit": 2, "count": 1, "remaining": 1,
        "window_seconds": None, "reset_seconds": None, "exceeded": False,
    }
    judge(enricher, request_ctx(sess, "two", ident=identity()))
    third = judge(enricher, request_ctx(sess, 3, ident=identity()))  # exceeded: not forwarded
    assert third["exceeded"] == ["inflight"] and third["retry_after_seconds"] == 1.0
    # The response to request 1 gives its slot back.
    enricher.after(response_ctx(sess, 1), ALLOW, {})
    fourth = judge(enricher, request_ctx(sess, 4, ident=identity()), forward=False)  # denied by something else
    assert fourth["limits"][0]["count"] == 2 and fourth["exceeded"] == []
    # ... so its slot is free again at once.
    assert judge(enricher, request_ctx(sess, 5, ident=identity()))["limits"][0]["count"] == 2
    # An error response frees a slot too; a different session's id 5 does not.
    enricher.after(response_ctx(session(), 5), ALLOW, {})
    assert judge(enricher, request_ctx(sess, 6, ident=identity()))["exceeded"] == ["inflight"]
    enricher.after(response_ctx(sess, 5, error=True), ALLOW, {})
    assert judge(enricher, request_ctx(sess, 7, ident=identity()))["exceeded"] == []


def test_concurrent_slot_released_by_cancellation(backend_prefix):
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(prefix, backend, rules=[{"name": "one", "concurrent": 1}]))
    sess = session()
    judge(enricher, request_ctx(sess, 1))
    assert judge(enricher, request_ctx(sess, 2))["exceeded"] == ["one"]
    enricher.after(cancel_ctx(sess, 1), ALLOW, None)  # a cancellation the policy dropped: still in flight
    assert judge(enricher, request_ctx(sess, 3))["exceeded"] == ["one"]
    enricher.after(cancel_ctx(sess, 1), ALLOW, {})
    assert judge(enricher, request_ctx(sess, 4))["exceeded"] == []
    enricher.release(sess.id, 4)  # a transport that answered request 4 itself
    assert judge(enricher, request_ctx(sess, 5))["exceeded"] == []
    enricher.release_session("another session")
    assert judge(enricher, request_ctx(sess, 6))["exceeded"] == ["one"]
    enricher.release_session(sess.id)  # the session ended
    assert judge(enricher, request_ctx(sess, 7))["exceeded"] == []


def test_concurrent_slots_lapse_after_the_ttl(backend_prefix):
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(
        prefix, backend, in_flight_ttl_seconds=0.2, rules=[{"name": "one", "concurrent": 1}],
    ))
    sess = session()
    judge(enricher, request_ctx(sess, 1))  # never answered
    assert judge(enricher, request_ctx(sess, 2))["exceeded"] == ["one"]
    time.sleep(0.25)
    assert judge(enricher, request_ctx(sess, 3))["exceeded"] == []


def test_keys_are_separate_per_dimension(backend_prefix):
    backend, prefix = backend_prefix
    rules = [
        {"name": "tenant", "per": ["tenant"], "requests": 1},
        {"name": "user", "per": ["tenant", "subject"], "requests": 1},
        {"name": "tool", "per": ["tool"], "requests": 1},
        {"name": "key", "per": ["key_id"], "requests": 1},
        {"name": "srv", "per": ["server", "method"], "requests": 1},
    ]
    enricher = RateEnricher(limits_config(prefix, backend, rules=rules))

    def exceeded(sess: Session, ident: dict[str, Any] | None, tool: str | None = "search", method: str | None = None) -> set[str]:
        return set(judge(enricher, request_ctx(sess, uuid.uuid4().hex, ident=ident, tool=tool, method=method))["exceeded"])

    a, b = session("a"), session("b")
    assert exceeded(a, identity("acme", "alice", "k1")) == set()
    # Same tenant, another user, another key, another tool, another server: only the tenant is shared.
    assert exceeded(b, identity("acme", "bob", "k2"), tool="fetch") == {"tenant"}
    # Another tenant with the first user's name and key, first tool and server.
    assert exceeded(a, identity("zeta", "alice", "k1")) == {"tool", "key", "srv"}
    # No identity at all: tenant, subject and key are "-", one shared counter.
    doc = judge(enricher, request_ctx(b, "x", ident=None, tool=None, method="resources/list"))
    assert {e["rule"]: e["key"] for e in doc["limits"]} == {
        "tenant": "tenant=-", "user": "tenant=-,subject=-", "tool": "tool=-", "key": "key_id=-",
        "srv": "server=b,method=resources%2Flist",
    }
    assert doc["exceeded"] == []
    assert exceeded(b, None, tool=None, method="resources/list") == {"tenant", "user", "tool", "key", "srv"}


def test_values_cannot_forge_another_key(prefix):
    enricher = RateEnricher(limits_config(prefix, rules=[{"name": "u", "per": ["tenant", "subject"], "requests": 1}]))
    doc = judge(enricher, request_ctx(session(), 1, ident=identity("a,subject=b", "c")))
    assert doc["limits"][0]["key"] == "tenant=a%2Csubject%3Db,subject=c"
    assert judge(enricher, request_ctx(session(), 2, ident=identity("a", "b,subject=c")))["exceeded"] == []


def test_long_values_are_kept_as_digests_in_keys(backend_prefix):
    """A client-chosen tool name of megabytes must not become a counter key of megabytes."""
    backend, prefix = backend_prefix
    enricher = RateEnricher(limits_config(prefix, backend, rules=[{"name": "t", "per": ["tool"], "requests": 1}]))
    huge = "é" * 1_000_000
    first = judge(enricher, request_ctx(session(), 1, tool=huge))
    key = first["limits"][0]["key"]
    assert key.startswith("tool=sha256%3A") and len(key) < 100
    assert judge(enricher, request_ctx(session(), 2, tool=huge))["exceeded"] == ["t"]  # still one counter per name
    assert judge(enricher, request_ctx(session(), 3, tool=huge + "x"))["exceeded"] == []
    assert judge(enricher, request_ctx(session(), 4, tool="search"))["limits"][0]["key"] == "tool=search"


class SpyCounter(MemoryCounter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def hit(self, ops):
        self.calls += 1
        return super().hit(ops)


def test_filters_and_the_cheap_path(prefix):
    rules = [
        {"name": "calls", "methods": ["tools/call"], "tools": ["search", "fetch"], "requests": 5},
        {"name": "acme", "tenants": ["acme"], "methods": ["resources/read"], "requests": 5},
    ]
    spy = SpyCounter()
    enricher = RateEnricher(limits_config(prefix, rules=rules), counter=spy)
    sess = session()
    cases = [
        (request_ctx(sess, 1, tool="search"), ["calls"]),
        (request_ctx(sess, 2, tool="write"), None),
        (request_ctx(sess, 3, tool=None, method="resources/read", ident=identity("acme")), ["acme"]),
        (request_ctx(sess, 4, tool=None, method="resources/read", ident=identity("other")), None),
        (request_ctx(sess, 5, tool=None, method="resources/read", ident=None), None),
        (request_ctx(sess, 6, tool=None, method="tools/list"), None),
    ]
    for ctx, expected in cases:
        enricher.enrich(ctx)
        assert (ctx.rate and [e["rule"] for e in ctx.rate["limits"]]) == expected
    assert spy.calls == 2
    # Responses and notifications, and server-to-client requests, are never counted.
    resp = response_ctx(sess, 1)
    enricher.enrich(resp)
    server_request = request_ctx(sess, 9, tool="search")
    server_request.direction = S2C
    enricher.enrich(server_request)
    enricher.enrich(cancel_ctx(sess, 1))
    assert resp.rate is None and server_request.rate is None and spy.calls == 2
    # A rule without any limit is a configuration error, and so are two rules of one name.
    with pytest.raises(ValueError, match="sets none of"):
        limits_config(prefix, rules=[{"name": "none"}])
    with pytest.raises(ValueError, match="unique"):
        limits_config(prefix, rules=[{"name": "a", "requests": 1}, {"name": "a", "bytes": 1}])


def test_duplicate_request_id_does_not_leak_slots(prefix):
    enricher = RateEnricher(limits_config(prefix, rules=[{"name": "two", "concurrent": 2}]))
    sess = session()
    judge(enricher, request_ctx(sess, 1))
    judge(enricher, request_ctx(sess, 1))  # the same id again: the first one's slot is given back
    enricher.after(response_ctx(sess, 1), ALLOW, {})
    assert judge(enricher, request_ctx(sess, 2))["limits"][0]["count"] == 1


def test_store_failure_sets_error_and_never_raises():
    cfg = RateLimitsConfig.model_validate({
        "backend": "redis", "redis_url": f"redis://127.0.0.1:{closed_port()}/0", "timeout_ms": 100, "on_error": "allow",
        "rules": [{"name": "r", "requests": 1}, {"name": "c", "concurrent": 1}],
    })
    enricher = RateEnricher(cfg)
    ctx = request_ctx(session(), 1)
    enricher.enrich(ctx)
    assert ctx.rate["error"].startswith("redis: ConnectionError") and ctx.rate["on_error"] == "allow"
    assert ctx.rate["limits"] == [] and ctx.rate["exceeded"] == [] and ctx.rate["retry_after_seconds"] is None
    enricher.after(ctx, ALLOW, None)


# -- two processes, one limit ----------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, uuid
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests")
    from firewall.config import RateLimitsConfig
    from firewall.ratelimit import RateEnricher
    from test_ratelimit import request_ctx, session, identity
    cfg = RateLimitsConfig.model_validate({
        "backend": "redis", "key_prefix": sys.argv[2], "timeout_ms": 2000,
        "rules": [{"name": "shared", "per": ["tenant"], "requests": int(sys.argv[3]), "window_seconds": 60}],
    })
    enricher = RateEnricher(cfg)
    sess = session()
    enricher.enrich(request_ctx(sess, "warm", ident=identity("warmup")))  # connect before the start
    print("ready", flush=True)
    sys.stdin.readline()
    allowed = 0
    for i in range(int(sys.argv[4])):
        ctx = request_ctx(sess, i, ident=identity("acme"))
        enricher.enrich(ctx)
        assert ctx.rate["error"] is None, ctx.rate
        allowed += not ctx.rate["exceeded"]
    print(allowed, flush=True)
""")


def test_two_processes_share_one_limit_exactly(redis_prefix):
    limit, attempts = 101, 200
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ROOT), redis_prefix, str(limit), str(attempts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        allowed = [int(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=10)
    assert sum(allowed) == limit
    assert all(a > 0 for a in allowed), allowed  # both took part
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    assert int(client.get(f"{redis_prefix}shared:requests:tenant=acme")) == 2 * attempts
    client.close()


# -- end to end through the inspector --------------------------------------------------------


def firewall_config(tmp_path: Path, rate_limits: dict[str, Any]) -> Config:
    return Config.model_validate({
        "audit": {"path": str(tmp_path / "audit.duckdb")},
        "detectors": {"injection": {"enabled": False}, "intent": {"enabled": False}},
        "registry": {"mode": "off"},
        "rate_limits": rate_limits,
    })


def call(msg_id: int, tool: str = "search") -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": tool, "arguments": {"q": "x"}}})


def test_fourth_call_is_rate_limited_end_to_end(tmp_path, prefix):
    fw = build_firewall(firewall_config(tmp_path, {
        "key_prefix": prefix,
        "rules": [{"name": "three", "per": ["tenant", "tool"], "requests": 3, "window_seconds": 60},
                  {"name": "inflight", "per": ["subject"], "concurrent": 10}],
    }))
    sess = session()
    try:
        assert fw.inspector._enrichers[0].name == "rate"
        outcomes = [fw.inspector.inspect(call(i), "client_to_server", sess, identity=identity()) for i in range(1, 5)]
        for i in range(1, 4):  # the answers pass and free the in-flight slots
            fw.inspector.inspect(orjson.dumps({"jsonrpc": "2.0", "id": i, "result": {"content": []}}), "server_to_client", sess)
        other_tool = fw.inspector.inspect(call(5, "fetch"), "client_to_server", sess, identity=identity())
    finally:
        fw.close()
    assert all(o.forward is not None and o.reply is None for o in outcomes[:3])
    denied = outcomes[3]
    assert denied.forward is None and denied.verdicts[0].error_code == errors.RATE_LIMITED
    reply = orjson.loads(denied.reply)
    assert reply["id"] == 4 and reply["error"]["code"] == -32055
    data = reply["error"]["data"]
    assert 59 < data["retry_after_seconds"] <= 60
    assert [r["code"] for r in data["reasons"]] == ["rate_limited"]
    assert "three" in reply["error"]["message"] and "tenant=acme,tool=search" in reply["error"]["message"]
    assert other_tool.forward is not None

    rows = audit_rows(tmp_path / "audit.duckdb", "direction = 'client_to_server'")
    assert len(rows) == 5
    rates = [r["rate"] if isinstance(r["rate"], dict) else json.loads(r["rate"]) for r in rows]
    assert [next(e for e in rt["limits"] if e["rule"] == "three")["count"] for rt in rates] == [1, 2, 3, 4, 1]
    # Requests 1-3 were answered before 5 came: 4 was denied, so only 5 is in flight then.
    assert next(e for e in rates[4]["limits"] if e["rule"] == "inflight")["count"] == 1
    assert rates[3]["exceeded"] == ["three"] and rows[3]["error_code"] == -32055
    assert rows[3]["reason_codes"] == ["rate_limited"]


@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_unreachable_store_end_to_end(tmp_path, prefix, on_error):
    fw = build_firewall(firewall_config(tmp_path, {
        "backend": "redis", "redis_url": f"redis://127.0.0.1:{closed_port()}/0", "timeout_ms": 100,
        "on_error": on_error, "key_prefix": prefix, "rules": [{"name": "r", "requests": 100}],
    }))
    try:
        outcome = fw.inspector.inspect(call(1), "client_to_server", session(), identity=identity())
        plain = fw.inspector.inspect(orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), "client_to_server", session())
    finally:
        fw.close()
    verdict = outcome.verdicts[0]
    assert plain.forward is not None  # no rule covers notifications: the store is not involved
    if on_error == "deny":
        assert outcome.forward is None and verdict.error_code == errors.POLICY_DENIED
        assert [r["code"] for r in verdict.decision.reasons] == ["rate_store_unavailable"]
        message = orjson.loads(outcome.reply)["error"]["message"]
        assert "counter store is unavailable" in message and "ConnectionError" not in message and "127.0.0.1" not in message
    else:
        assert outcome.forward is not None and verdict.decision.tags == ["rate_store_unavailable"]
    row = audit_rows(tmp_path / "audit.duckdb", "method = 'tools/call'")[0]
    rate = row["rate"] if isinstance(row["rate"], dict) else json.loads(row["rate"])
    assert rate["error"].startswith("redis: ConnectionError") and rate["on_error"] == on_error


def test_redis_backend_end_to_end(tmp_path, redis_prefix):
    fw = build_firewall(firewall_config(tmp_path, {
        "backend": "redis", "key_prefix": redis_prefix, "rules": [{"name": "two", "requests": 2, "per": ["key_id"]}],
    }))
    ident = identity(key_id="k-1")
    try:
        codes = [
            fw.inspector.inspect(call(i), "client_to_server", session(), identity=ident).verdicts[0].error_code
            for i in range(3)
        ]
    finally:
        fw.close()
    assert codes == [None, None, errors.RATE_LIMITED]


def test_rate_documents_match_the_input_schema(prefix):
    import jsonschema

    from firewall.paths import SCHEMA_DIR
    from firewall.pipeline import build_input

    validator = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "policy-input.v1.json").read_text()))
    enricher = RateEnricher(limits_config(prefix, rules=[
        {"name": "r", "per": ["tenant", "tool"], "requests": 1, "bytes": 10_000},
        {"name": "c", "per": [], "concurrent": 5},
    ]))
    down = RateEnricher(RateLimitsConfig.model_validate({
        "backend": "redis", "redis_url": f"redis://127.0.0.1:{closed_port()}/0", "timeout_ms": 50,
        "rules": [{"name": "r", "requests": 1}],
    }))
    sess = session()
    contexts = [request_ctx(sess, 1, ident=identity()), request_ctx(sess, 2, ident=None), request_ctx(sess, 3)]
    for ctx in contexts:
        enricher.enrich(ctx)
    contexts.append(request_ctx(sess, 4))
    down.enrich(contexts[-1])
    assert [bool(c.rate["exceeded"]) for c in contexts] == [False, False, True, False] and contexts[-1].rate["error"]
    for ctx in contexts:
        validator.validate(orjson.loads(orjson.dumps(build_input(ctx))))


def test_a_request_the_upstream_never_answers_gives_its_slot_back(tmp_path, prefix):
    fw = build_firewall(firewall_config(tmp_path, {
        "key_prefix": prefix, "rules": [{"name": "one-at-a-time", "per": ["subject"], "concurrent": 1}],
    }))
    sess = session()
    try:
        first = fw.inspector.inspect(call(1), "client_to_server", sess, identity=identity())
        blocked = fw.inspector.inspect(call(2), "client_to_server", sess, identity=identity())
        fw.inspector.abandon(sess, "client_to_server", 1)  # say, the upstream refused the connection
        after = fw.inspector.inspect(call(3), "client_to_server", sess, identity=identity())
    finally:
        fw.close()
    assert first.forward is not None and blocked.verdicts[0].error_code == errors.RATE_LIMITED
    assert after.forward is not None and sess.pop_pending("client_to_server", 1) is None


def test_a_stdio_session_that_ends_mid_call_gives_its_redis_slot_back(tmp_path, redis_prefix):
    """The client left while a call ran: the shim stops the server, and the slot the call held
    in Redis (shared with every other shim of the tenant) must not stay taken for the TTL."""
    import subprocess
    import sys

    from support import everything_server

    config = tmp_path / "mcpfw.yaml"
    config.write_text(
        f"rate_limits:\n  backend: redis\n  redis_url: {REDIS_URL}\n  key_prefix: '{redis_prefix}'\n"
        "  rules: [{name: one, concurrent: 1, methods: [tools/call]}]\n"
    )
    command = [sys.executable, "-m", "firewall.cli", "stdio", "--config", str(config), "--audit", str(tmp_path / "a.duckdb"),
               "--registry", str(tmp_path / "registry.yaml"), "--", *everything_server()]
    init = (b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},'
            b'"clientInfo":{"name":"t","version":"1"}}}\n{"jsonrpc":"2.0","method":"notifications/initialized"}\n')

    def session(call: bytes, leave_early: bool) -> list[dict]:
        shim = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert shim.stdin is not None and shim.stdout is not None
        shim.stdin.write(init)
        shim.stdin.flush()
        def answer(msg_id: int) -> dict:  # (notifications the server sends in between are skipped)
            while "id" not in (message := orjson.loads(shim.stdout.readline())) or message["id"] != msg_id:
                pass
            return message

        answers = [answer(0)]
        shim.stdin.write(call)
        shim.stdin.flush()
        if leave_early:
            time.sleep(1.0)  # the long call is running on the server
        else:
            answers.append(answer(1))
        shim.stdin.close()
        shim.wait(timeout=30)
        return answers

    long_call = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"trigger-long-running-operation",'
                 b'"arguments":{"duration":30,"steps":2}}}\n')
    session(long_call, leave_early=True)
    echo = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}\n'
    answers = session(echo, leave_early=False)
    assert "result" in answers[1], answers[1]  # not -32055: the first session's slot was given back
