"""Counter stores for rate limits: the interface and the in-process backend.

A store answers one question per message: after counting this message, where does each
of its counters stand? :meth:`RateCounter.hit` takes every counter a message touches and
updates them together, so that a message is either counted everywhere or nowhere.

Windows are fixed: a counter's window opens with the first message counted under its key
and lasts ``window`` seconds; then the count starts over. That is one number per key (no
per-message log), at the price of allowing up to twice the limit in a burst that straddles
the end of one window and the start of the next.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["requests", "bytes", "concurrent"]


class CounterError(Exception):
    """The counter store could not answer (unreachable, timed out, refused the command)."""


@dataclass(slots=True)
class Op:
    """One counter a message touches.

    ``requests``/``bytes``: add ``amount`` to the counter of the window ``key`` is in.
    ``concurrent``: take an in-flight slot named ``token`` under ``key`` unless ``limit``
    slots are already taken; a slot lapses ``ttl`` seconds after it was taken.
    """

    kind: Kind
    key: str
    amount: int = 1
    limit: int = 0
    window: float = 60.0  # seconds (requests, bytes)
    token: str = ""  # concurrent
    ttl: float = 600.0  # seconds (concurrent)


@dataclass(slots=True)
class Count:
    """Where a counter stands after an :class:`Op`.

    ``count`` includes this message (for ``concurrent``: the calls in flight with this one,
    whether or not it got a slot); ``reset`` is the seconds until the window closes (None
    for ``concurrent``); ``taken`` says whether a concurrent slot is now held.
    """

    count: int
    reset: float | None
    taken: bool = False


class RateCounter(Protocol):
    """A store of rate counters; implementations are thread-safe."""

    backend: str

    def hit(self, ops: Sequence[Op]) -> list[Count]:
        """Apply ``ops`` together (atomically per store) and return one :class:`Count` each.

        Raises :class:`CounterError` when the store fails; nothing is counted then.
        """
        ...

    def release(self, slots: Sequence[tuple[str, str]]) -> None:
        """Give back concurrent slots ``(key, token)``; unknown or lapsed ones are ignored.

        Raises :class:`CounterError` when the store fails (the slots then lapse on their own).
        """
        ...

    def close(self) -> None:
        """Drop connections or state; the counter must not be used afterwards."""
        ...


_SWEEP_EVERY = 4096  # hits between purges of closed windows and lapsed slots


class MemoryCounter:
    """Counters in this process's memory: exact, fast, and private to the process."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}  # key -> [count, closes_at]
        self._slots: dict[str, dict[str, float]] = {}  # key -> {token: lapses_at}
        self._hits = 0

    def hit(self, ops: Sequence[Op]) -> list[Count]:
        out: list[Count] = []
        with self._lock:
            now = self._clock()
            self._hits += 1
            if self._hits % _SWEEP_EVERY == 0:
                self._sweep(now)
            for op in ops:
                if op.kind == "concurrent":
                    slots = self._slots.get(op.key)
                    if slots is None:
                        slots = self._slots[op.key] = {}
                    elif slots:
                        for token in [t for t, lapses in slots.items() if lapses <= now]:
                            del slots[token]
                    n = len(slots)
                    taken = n < op.limit
                    if taken:
                        slots[op.token] = now + op.ttl
                    out.append(Count(n + 1, None, taken))
                else:
                    window = self._windows.get(op.key)
                    if window is None or window[1] <= now:
                        window = self._windows[op.key] = [0, now + op.window]
                    window[0] += op.amount
                    out.append(Count(int(window[0]), window[1] - now))
        return out

    def release(self, slots: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            for key, token in slots:
                held = self._slots.get(key)
                if held is not None:
                    held.pop(token, None)
                    if not held:
                        del self._slots[key]

    def close(self) -> None:
        with self._lock:
            self._windows.clear()
            self._slots.clear()

    def _sweep(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if w[1] <= now]:
            del self._windows[key]
        for key, held in list(self._slots.items()):
            for token in [t for t, lapses in held.items() if lapses <= now]:
                del held[token]
            if not held:
                del self._slots[key]


_TOKENS = itertools.count(1)
_TOKEN_PREFIX = os.urandom(6).hex()


def new_token() -> str:
    """A name for one concurrent slot, unique across processes and hosts."""
    return f"{_TOKEN_PREFIX}.{os.getpid()}.{next(_TOKENS)}"
