"""A small bounded memo from text to a detector's immutable result for that text.

Traffic repeats itself: the same file is read again, a poll returns the same answer, a
tool list is fetched by every session. A detector whose result depends on the text alone
(and on rules fixed when the detector was built) can remember it. Results must be
immutable (tuples), since every caller shares them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
T = TypeVar("T")

ENTRIES = 4096  # texts remembered at most
MAX_CHARS = 4 << 20  # characters of remembered texts at most (4 MiB of ASCII per memo)
MAX_TEXT = MAX_CHARS // 16  # longer texts are scanned every time, never kept


class TextMemo(Generic[V]):
    """Bounded, first-in-first-out memo keyed by text; safe to share between threads.

    Bounded twice: by entries and by the characters of the texts it keeps. An
    OrderedDict, not a dict: dropping a plain dict's oldest key (``next(iter(d))``)
    slows down as deleted slots pile up at its front (1.2 us an insert at 4,096 entries,
    against 0.3). Lookups take no lock (one call into C); inserts do.
    """

    __slots__ = ("_entries", "_max", "_max_chars", "_chars", "_seen", "_lock", "hits")

    def __init__(self, entries: int = ENTRIES, max_chars: int = MAX_CHARS) -> None:
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._max = entries
        self._max_chars = max_chars
        self._chars = 0
        # Hashes of texts offered once: a text is kept only when it comes a second time, so
        # traffic that never repeats costs a set insert, not an entry (and its memory).
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self.hits = 0  # lookups answered

    def get(self, text: str) -> V | None:
        value = self._entries.get(text)
        if value is not None:
            self.hits += 1
        return value

    def put(self, text: str, value: V) -> None:
        """Remember ``value`` for ``text`` if ``text`` was offered before."""
        h = hash(text)
        seen = self._seen
        if h not in seen:
            if len(seen) >= 4 * self._max:
                seen.clear()
            seen.add(h)
            return
        if len(text) > self._max_chars:
            return
        with self._lock:
            entries = self._entries
            if text in entries:
                return
            entries[text] = value
            self._chars += len(text)
            while len(entries) > self._max or self._chars > self._max_chars:
                old, _ = entries.popitem(last=False)
                self._chars -= len(old)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        """Characters of the texts kept."""
        return self._chars


def memoised_scan(memo: TextMemo[tuple[T, ...]], text: str, scan: Callable[[str], list[T]]) -> list[T]:
    """``scan(text)``, answered from ``memo`` for a text seen before (a new list each time)."""
    if len(text) > MAX_TEXT:
        return scan(text)
    known = memo.get(text)
    if known is None:
        known = tuple(scan(text))
        memo.put(text, known)
    return list(known)
