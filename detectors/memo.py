"""A small bounded memo from text to a detector's immutable result for that text.

Traffic repeats itself: the same path is read again, a poll returns the same answer, a
tool list is fetched by every session. A detector whose result depends on the text alone
(and on rules fixed when the detector was built) can remember it. Results must be
immutable (tuples), since every caller shares them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

MAX_TEXT = 4096  # longer texts repeat less and their scan dwarfs the lookup anyway
ENTRIES = 4096  # at most ENTRIES * MAX_TEXT characters of keys (16 MiB of ASCII), mostly far less


class TextMemo(Generic[K, V]):
    """Bounded, first-in-first-out memo; safe to share between threads.

    An OrderedDict, not a dict: dropping a plain dict's oldest key (``next(iter(d))``)
    slows down as deleted slots pile up at its front (1.2 us an insert at 4,096 entries,
    against 0.3). Each operation is one call into C, atomic under the interpreter lock; a
    race between two inserts at most drops one entry too many.
    """

    __slots__ = ("_entries", "_max", "_seen", "hits", "misses")

    def __init__(self, entries: int = ENTRIES) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._max = entries
        # Hashes of keys offered once: a key is kept only when it comes a second time, so
        # traffic that never repeats costs a set insert, not an entry (and its memory).
        self._seen: set[int] = set()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key`` if ``key`` was offered before."""
        h = hash(key)
        seen = self._seen
        if h not in seen:
            if len(seen) >= 4 * self._max:
                seen.clear()
            seen.add(h)
            return
        entries = self._entries
        entries[key] = value
        if len(entries) > self._max:
            try:
                entries.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                pass

    def __len__(self) -> int:
        return len(self._entries)


def memoised_scan(memo: TextMemo[str, tuple[T, ...]], text: str, scan: Callable[[str], list[T]]) -> list[T]:
    """``scan(text)``, answered from ``memo`` for a text seen before (a new list each time)."""
    if len(text) > MAX_TEXT:
        return scan(text)
    known = memo.get(text)
    if known is None:
        known = tuple(scan(text))
        memo.put(text, known)
    return list(known)
