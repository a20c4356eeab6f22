"""Rate counters in Redis, shared by every firewall process that uses the same server and prefix.

All the counting for one message is one Lua script call (EVALSHA, loaded again with EVAL
when the server answers NOSCRIPT, e.g. after a restart or SCRIPT FLUSH), so two firewalls
behind a load balancer see one count and enforce one limit. The script reads the clock of
the Redis server, not of the firewall hosts: windows and slot lapses agree whatever the
hosts' clocks say.

Keys: a ``requests`` or ``bytes`` counter is a string key that expires when its window
closes; a ``concurrent`` key is a sorted set of slot tokens scored by when they lapse
(milliseconds, server time), so that slots of requests that never got an answer stop
counting after the in-flight TTL.

After a failure the counter fails fast (without asking Redis) for ``cooldown`` seconds,
so that an unreachable server costs one timeout per cooldown rather than one per message;
the next call after that reconnects.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from .counters import Count, CounterError, Op

# KEYS[i]: the key of op i. ARGV: three values per op, (kind, number, text):
#   "n", amount, window in ms        add amount to the window's counter
#   "c", limit,  token               take an in-flight slot unless limit are taken
# and last ARGV[3 * #KEYS + 1]: the in-flight TTL in ms.
# Returns two integers per op: (count, ms until the window closes) or (count, 1 if taken else 0).
HIT_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local ttl = tonumber(ARGV[3 * #KEYS + 1])
local out = {}
for i, key in ipairs(KEYS) do
  local kind = ARGV[3 * i - 2]
  local number = tonumber(ARGV[3 * i - 1])
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local n = redis.call('ZCARD', key)
    if n < number then
      redis.call('ZADD', key, now + ttl, ARGV[3 * i])
      redis.call('PEXPIRE', key, ttl)
      out[2 * i - 1] = n + 1
      out[2 * i] = 1
    else
      out[2 * i - 1] = n + 1
      out[2 * i] = 0
    end
  else
    local count = redis.call('INCRBY', key, number)
    local left = redis.call('PTTL', key)
    if left < 0 then
      left = tonumber(ARGV[3 * i])
      redis.call('PEXPIRE', key, left)
    end
    out[2 * i - 1] = count
    out[2 * i] = left
  end
end
return out
"""
HIT_SHA = hashlib.sha1(HIT_SCRIPT.encode()).hexdigest()

_POOL_SIZE = 16
_clients: dict[tuple[str, int], Any] = {}
_clients_lock = threading.Lock()


def shared_client(url: str, timeout_ms: int) -> Any:
    """The process's Redis client for ``url``: one small blocking connection pool.

    Socket connect and read timeouts, and the wait for a free pooled connection, are all
    ``timeout_ms``. A broken connection (the server restarted) is retried once, at once, on a
    fresh one; timeouts are not retried (the message's latency budget is spent). redis-py
    replaces connections after a fork, so forked workers do not share sockets.
    """
    key = (url, timeout_ms)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            seconds = timeout_ms / 1000.0
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=_POOL_SIZE,
                timeout=seconds,
                socket_timeout=seconds,
                socket_connect_timeout=seconds,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
            client = _clients[key] = redis.Redis(connection_pool=pool)
        return client


class RedisCounter:
    """Rate counters in Redis (see the module docstring)."""

    backend = "redis"

    def __init__(
        self, url: str, *, timeout_ms: int = 200, in_flight_ttl: float = 600.0, cooldown: float = 0.5,
        client: Any = None,
    ) -> None:
        self._client = client if client is not None else shared_client(url, timeout_ms)
        self._ttl_ms = str(max(1, round(in_flight_ttl * 1000)))
        self._cooldown = cooldown
        self._down_until = 0.0
        self._down_reason = ""
        import redis

        self._errors = (redis.RedisError, OSError)
        self._noscript = redis.exceptions.NoScriptError

    def hit(self, ops: Sequence[Op]) -> list[Count]:
        keys: list[str] = []
        args: list[str | int] = []
        for op in ops:
            keys.append(op.key)
            if op.kind == "concurrent":
                args += ("c", op.limit, op.token)
            else:
                args += ("n", op.amount, max(1, round(op.window * 1000)))
        args.append(self._ttl_ms)
        raw = self._call(keys, args)
        out: list[Count] = []
        try:
            for i, op in enumerate(ops):
                count, second = int(raw[2 * i]), int(raw[2 * i + 1])
                if op.kind == "concurrent":
                    out.append(Count(count, None, second == 1))
                else:
                    out.append(Count(count, second / 1000.0))
        except (TypeError, ValueError, IndexError) as exc:
            raise CounterError(f"redis: unexpected reply to the rate script: {raw!r}"[:300]) from exc
        return out

    def release(self, slots: Sequence[tuple[str, str]]) -> None:
        if not slots:
            return
        if self._down_until and time.monotonic() < self._down_until:
            raise CounterError(self._down_reason)
        try:
            if len(slots) == 1:
                self._client.zrem(slots[0][0], slots[0][1])
            else:
                pipe = self._client.pipeline(transaction=False)
                for key, token in slots:
                    pipe.zrem(key, token)
                pipe.execute()
        except self._errors as exc:
            self._failed(exc)

    def close(self) -> None:
        """Nothing to do: the client is shared by the process (see :func:`shared_client`)."""

    def _call(self, keys: list[str], args: list[str | int]) -> list[Any]:
        if self._down_until and time.monotonic() < self._down_until:
            raise CounterError(self._down_reason)
        client = self._client
        try:
            try:
                result = client.evalsha(HIT_SHA, len(keys), *keys, *args)
            except self._noscript:
                # EVAL runs the script and caches it: the next EVALSHA finds it.
                result = client.eval(HIT_SCRIPT, len(keys), *keys, *args)
        except self._errors as exc:
            self._failed(exc)
        self._down_until = 0.0
        return result

    def _failed(self, exc: BaseException) -> NoReturn:
        self._down_reason = _describe(exc)
        self._down_until = time.monotonic() + self._cooldown
        raise CounterError(self._down_reason) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"redis: {type(exc).__name__}: {text}"[:300]
