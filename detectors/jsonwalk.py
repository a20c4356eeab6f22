"""Walk the strings of a JSON value with their RFC 6901 pointers (shared by the detectors)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAX_STRINGS = 10_000  # a message with more strings is scanned partially (the caller is told)


def escape(token: str) -> str:
    """RFC 6901 escaping of one reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def strings(value: Any, pointer: str, *, limit: int = MAX_STRINGS) -> Iterator[tuple[str, str]]:
    """``(pointer, string)`` for every string leaf of ``value``, depth first, at most ``limit``."""
    stack: list[tuple[str, Any]] = [(pointer, value)]
    seen = 0
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node
            seen += 1
            if seen >= limit:
                return
        elif isinstance(node, dict):
            stack.extend((f"{where}/{escape(k)}", v) for k, v in reversed(node.items()) if isinstance(v, (str, dict, list)))
        elif isinstance(node, list):
            stack.extend((f"{where}/{i}", v) for i, v in reversed(list(enumerate(node))) if isinstance(v, (str, dict, list)))
