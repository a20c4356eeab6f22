"""BERT WordPiece for short printable-ASCII text, in plain Python with a word cache.

The injection classifier scores every tool argument and tool result. Most are short, and
for those the ``tokenizers`` call (a Rust round trip that builds offsets, an Encoding
object and more) costs more than the scoring itself: 30 us alone, twice that when the
firewall's other work has pushed it out of the CPU caches. Short ASCII text needs none
of its generality, so this module reproduces what the MiniLM tokenizer does to it
(``BertNormalizer`` with lower-casing and text cleaning, ``BertPreTokenizer``,
``WordPiece`` with ``##`` continuations and a 100-character word limit) and remembers
each word's pieces. Anything else (non-ASCII, control characters) is left to
``tokenizers``; tests check that both give the same ids.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

__all__ = ["AsciiWordPiece"]

# Printable ASCII plus the three whitespace controls the normaliser turns into spaces; any
# other control character would be dropped by it, so such text takes the general path.
_ELIGIBLE = re.compile(r"[\x20-\x7e\t\n\r]*")
# After lower-casing: BertPreTokenizer's words (runs of letters and digits) and its
# punctuation, every ASCII symbol being a token of its own; whitespace separates.
_PIECES = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")


class AsciiWordPiece:
    """Token ids of printable-ASCII text, as the BERT tokenizer with ``vocab`` gives them."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        *,
        unk_token: str = "[UNK]",
        prefix: str = "##",
        max_word_chars: int = 100,
        cache_words: int = 50_000,
    ) -> None:
        self._vocab = dict(vocab)
        self._unk = (self._vocab[unk_token],)
        self._prefix = prefix
        self._max_word_chars = max_word_chars
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_words = cache_words
        self._lock = threading.Lock()

    def ids(self, text: str, limit: int) -> list[int] | None:
        """The ids of ``text``, or None when it is not printable ASCII or has more than
        ``limit`` pieces (the caller then needs the general tokenizer and its offsets)."""
        if not text.isascii() or _ELIGIBLE.fullmatch(text) is None:
            return None
        out: list[int] = []
        cache = self._cache
        for word in _PIECES.findall(text.lower()):
            pieces = cache.get(word)
            if pieces is None:
                pieces = self._word(word)
                with self._lock:
                    if len(cache) >= self._cache_words:
                        cache.clear()
                    cache[word] = pieces
            out.extend(pieces)
            if len(out) > limit:
                return None
        return out

    def _word(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first pieces of one word; the whole word is unknown when any
        part of it has no piece."""
        if len(word) > self._max_word_chars:
            return self._unk
        vocab, prefix = self._vocab, self._prefix
        pieces: list[int] = []
        start, n = 0, len(word)
        while start < n:
            end = n
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                found = vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return self._unk
            pieces.append(found)
            start = end
        return tuple(pieces)
