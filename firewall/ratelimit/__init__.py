"""Rate limits and quotas: per-window request and byte counts, and calls in flight.

:class:`RateEnricher` counts client requests against ``config.rate_limits.rules`` and
fills ``input.rate``; the policy (``data.mcpfw.rules.rate``) decides. Counters live in
this process (:class:`MemoryCounter`) or in Redis (:class:`RedisCounter`), where several
firewall processes share them.
"""

from __future__ import annotations

from .counters import Count, CounterError, MemoryCounter, Op, RateCounter
from .enricher import RateEnricher, make_counter

__all__ = ["Count", "CounterError", "MemoryCounter", "Op", "RateCounter", "RateEnricher", "RedisCounter", "make_counter"]


def __getattr__(name: str):
    # The Redis client is imported only when a Redis backend is used.
    if name == "RedisCounter":
        from .redis_counter import RedisCounter

        return RedisCounter
    raise AttributeError(name)
