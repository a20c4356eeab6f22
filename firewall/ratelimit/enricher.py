"""``input.rate``: counts each client request against the configured rate limits.

For a client request (kind ``request``, client to server) the enricher finds the rules
that cover it (their ``methods``, ``tools`` and ``tenants`` filters), builds each rule's
key from the values of its ``per`` dimensions, counts the request in one store call, and
leaves the counters for the policy, which decides (``policies/mcpfw/rules/rate.rego``).
When no rule covers a request, ``input.rate`` stays null and the store is not asked.

Requests are counted when they are judged, before the decision: a request the policy
denies (for a rate limit or any other reason) still counts. A client that keeps calling
past its limit therefore stays limited until the window closes, rather than getting a
request through now and then.

Concurrent limits hold a slot per request from its judgement until its response passes
the firewall (or an error response, or a ``notifications/cancelled`` for it from the
client); a request that is not forwarded gives its slot back at once. Slots whose
response never comes lapse after ``in_flight_ttl_seconds``.

A store failure never raises: ``input.rate.error`` says what failed, nothing is counted,
and the policy decides by ``input.rate.on_error`` (deny by default: fail closed).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..config import RateLimitRule, RateLimitsConfig
from ..jsonrpc import Kind
from ..pipeline import C2S, S2C, MessageContext
from ..policy.decision import Decision
from .counters import Count, CounterError, MemoryCounter, Op, RateCounter, new_token

log = logging.getLogger("mcpfw.ratelimit")

MISSING = "-"  # the value of a dimension the message does not have (no identity, not a tool call)
CONCURRENT_RETRY_SECONDS = 1.0  # retry hint for a concurrent limit: when a call finishes is unknown
_MAX_HELD = 100_000  # requests holding slots remembered at once; older ones lapse by TTL instead
_KINDS = ("requests", "bytes", "concurrent")
_WARN_EVERY = 60.0  # seconds between warnings about slots that could not be given back
_EMPTY: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    per: tuple[str, ...]
    methods: frozenset[str] | None
    tools: frozenset[str] | None
    tenants: frozenset[str] | None
    limits: tuple[tuple[str, int], ...]  # (kind, limit) for each kind the rule sets
    window: float

    @classmethod
    def of(cls, rule: RateLimitRule) -> _Rule:
        return cls(
            name=rule.name,
            per=tuple(rule.per),
            methods=frozenset(rule.methods) if rule.methods is not None else None,
            tools=frozenset(rule.tools) if rule.tools is not None else None,
            tenants=frozenset(rule.tenants) if rule.tenants is not None else None,
            limits=tuple((kind, getattr(rule, kind)) for kind in _KINDS if getattr(rule, kind) is not None),
            window=rule.window_seconds,
        )


def make_counter(config: RateLimitsConfig) -> RateCounter:
    """The counter store the configuration names."""
    if config.backend == "redis":
        from .redis_counter import RedisCounter

        return RedisCounter(config.redis_url, timeout_ms=config.timeout_ms, in_flight_ttl=config.in_flight_ttl_seconds)
    return MemoryCounter()


class RateEnricher:
    """Fills ``input.rate`` for client requests that a rate-limit rule covers."""

    name = "rate"

    def __init__(self, config: RateLimitsConfig, counter: RateCounter | None = None) -> None:
        self._config = config
        self._counter = counter if counter is not None else make_counter(config)
        self._prefix = config.key_prefix
        self._ttl = config.in_flight_ttl_seconds
        self._rules = tuple(r for r in map(_Rule.of, config.rules) if r.limits)
        self._concurrent = any(kind == "concurrent" for r in self._rules for kind, _ in r.limits)
        # (session id, request id) -> (the request's input.rate, its slots): what to give back.
        self._held: OrderedDict[tuple[str, str, Any], tuple[dict[str, Any], list[tuple[str, str]]]] = OrderedDict()
        self._lock = threading.Lock()
        self._quiet_until = 0.0

    @property
    def counter(self) -> RateCounter:
        """The counter store in use."""
        return self._counter

    # -- before the decision ------------------------------------------------------------

    def enrich(self, ctx: MessageContext) -> None:
        if ctx.direction != C2S or ctx.message.kind is not Kind.REQUEST or not self._rules:
            return
        method = ctx.method
        tool = ctx.tool.get("name") if ctx.tool else None
        identity = ctx.identity or _EMPTY
        tenant = identity.get("tenant")
        ops: list[Op] = []
        shown: list[tuple[_Rule, str, str, int]] = []  # rule, shown key, kind, limit
        token = ""
        for rule in self._rules:
            if rule.methods is not None and method not in rule.methods:
                continue
            if rule.tools is not None and tool not in rule.tools:
                continue
            if rule.tenants is not None and tenant not in rule.tenants:
                continue
            key = self._key_of(rule, ctx, identity, tool)
            for kind, limit in rule.limits:
                store_key = f"{self._prefix}{rule.name}:{kind}:{key}"
                if kind == "concurrent":
                    token = token or new_token()
                    ops.append(Op("concurrent", store_key, limit=limit, token=token, ttl=self._ttl))
                else:
                    ops.append(Op(kind, store_key, amount=1 if kind == "requests" else ctx.size, window=rule.window))  # type: ignore[arg-type]
                shown.append((rule, key, kind, limit))
        if not ops:
            return
        rate: dict[str, Any] = {
            "backend": self._counter.backend,
            "error": None,
            "on_error": self._config.on_error,
            "retry_after_seconds": None,
            "exceeded": [],
            "limits": [],
        }
        ctx.rate = rate
        try:
            counts = self._counter.hit(ops)
        except CounterError as exc:
            rate["error"] = str(exc)
            return
        self._fill(rate, shown, counts)
        if token:
            slots = [(op.key, op.token) for op, count in zip(ops, counts, strict=True) if count.taken]
            if slots:
                self._hold(_request_key(ctx.session.id, ctx.message.body.get("id")), rate, slots)

    def _key_of(self, rule: _Rule, ctx: MessageContext, identity: dict[str, Any], tool: str | None) -> str:
        parts = []
        for dim in rule.per:
            if dim == "tool":
                value = tool
            elif dim == "server":
                value = ctx.session.server.name
            elif dim == "method":
                value = ctx.method
            else:
                value = identity.get(dim)
            if value is None or value == "":
                parts.append(f"{dim}={MISSING}")
            else:
                text = value if isinstance(value, str) else str(value)
                if len(text) > _MAX_KEY_VALUE:  # a client's invented name must not become a huge key
                    text = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
                parts.append(f"{dim}={_encode(text)}")
        return ",".join(parts) or "*"

    @staticmethod
    def _fill(rate: dict[str, Any], shown: list[tuple[_Rule, str, str, int]], counts: list[Count]) -> None:
        limits = rate["limits"]
        exceeded: list[str] = rate["exceeded"]
        retry = 0.0
        for (rule, key, kind, limit), count in zip(shown, counts, strict=True):
            over = count.count > limit
            concurrent = kind == "concurrent"
            reset = None if concurrent or count.reset is None else math.ceil(max(count.reset, 0.0) * 1000) / 1000
            limits.append({
                "rule": rule.name,
                "kind": kind,
                "key": key,
                "limit": limit,
                "count": count.count,
                "remaining": max(0, limit - count.count),
                "window_seconds": None if concurrent else rule.window,
                "reset_seconds": reset,
                "exceeded": over,
            })
            if over:
                if rule.name not in exceeded:
                    exceeded.append(rule.name)
                retry = max(retry, CONCURRENT_RETRY_SECONDS if concurrent else (reset or 0.0))
        if exceeded:
            rate["retry_after_seconds"] = retry

    # -- after the decision: give slots back ----------------------------------------------

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
        if not self._concurrent or not self._held:
            return
        kind = ctx.message.kind
        body = ctx.message.body
        if ctx.direction == C2S:
            if kind is Kind.REQUEST:
                rate = ctx.rate
                if forwarded is None and rate is not None:
                    self._give_back(_request_key(ctx.session.id, body.get("id")), owner=rate)
            elif kind is Kind.NOTIFICATION and ctx.method == "notifications/cancelled" and forwarded is not None:
                # The server is told to stop and should not answer: the call is no longer in flight.
                params = ctx.params
                if isinstance(params, dict) and "requestId" in params:
                    self._give_back(_request_key(ctx.session.id, params["requestId"]))
        elif ctx.direction == S2C and ctx.pending is not None and kind in (Kind.RESPONSE, Kind.ERROR_RESPONSE):
            self._give_back(_request_key(ctx.session.id, body.get("id")))

    def release(self, session_id: str, request_id: Any) -> None:
        """Give back the slots of a request that will get no response through the firewall.

        For transports that answer a forwarded request themselves (the upstream failed).
        """
        if self._held:
            self._give_back(_request_key(session_id, request_id))

    def abandoned(self, session_id: str, request_id: Any) -> None:
        """The pipeline's notice that a forwarded request will never be answered."""
        self.release(session_id, request_id)

    def release_session(self, session_id: str) -> None:
        """Give back every slot a session still holds (the session ended; its calls are over)."""
        if not self._held:
            return
        with self._lock:
            keys = [key for key in self._held if key[0] == session_id]
            slots = [slot for key in keys for slot in self._held.pop(key)[1]]
        if slots:
            self._release(slots)

    session_ended = release_session  # the pipeline's notice (Inspector.end_session)

    def _hold(self, key: tuple[str, str, Any], rate: dict[str, Any], slots: list[tuple[str, str]]) -> None:
        dropped: list[tuple[str, str]] = []
        with self._lock:
            previous = self._held.pop(key, None)
            if previous is not None:
                # The same id again while the first is in flight: the session's table of
                # pending requests forgets the first too, so its response cannot be matched.
                dropped += previous[1]
            self._held[key] = (rate, slots)
            while len(self._held) > _MAX_HELD:
                self._held.popitem(last=False)  # lapses in the store after the TTL
        if dropped:
            self._release(dropped)

    def _give_back(self, key: tuple[str, str, Any], owner: dict[str, Any] | None = None) -> None:
        with self._lock:
            entry = self._held.get(key)
            if entry is None or (owner is not None and entry[0] is not owner):
                return
            del self._held[key]
        self._release(entry[1])

    def _release(self, slots: list[tuple[str, str]]) -> None:
        try:
            self._counter.release(slots)
        except CounterError as exc:  # the slots lapse after the in-flight TTL
            now = time.monotonic()
            if now >= self._quiet_until:  # once per outage, not once per response
                self._quiet_until = now + _WARN_EVERY
                log.warning("rate limits: cannot release in-flight slots (they lapse after %ss): %s", self._ttl, exc)


_MAX_KEY_VALUE = 128  # characters of a dimension's value kept as they are in a counter key


@functools.lru_cache(maxsize=4096)
def _encode(value: str) -> str:
    """A dimension's value in a key: %-encoded, so that no value can contain "," or "=" of the key."""
    return quote(value, safe="")


def _request_key(session_id: str, request_id: Any) -> tuple[str, str, Any]:
    try:
        hash(request_id)
    except TypeError:
        request_id = repr(request_id)
    return (session_id, type(request_id).__name__, request_id)
