"""Walk the strings of a JSON value with their RFC 6901 pointers (shared by the detectors)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAX_STRINGS: int | None = None
"""No limit: a detector that stopped early would pass what it did not read. A message's
strings are bounded by the message size limit: at the default 4 MiB, a tool result of 380,000
short strings is read by every detector in about 1 s, measured."""


def escape(token: str) -> str:
    """RFC 6901 escaping of one reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def strings(value: Any, pointer: str, *, limit: int | None = MAX_STRINGS) -> Iterator[tuple[str, str]]:
    """``(pointer, string)`` for every string leaf of ``value``, depth first, at most ``limit``
    (None: all)."""
    yield from string_leaves(value, pointer, limit=limit)


def string_leaves(
    value: Any, pointer: str, *, min_len: int = 0, limit: int | None = MAX_STRINGS
) -> list[tuple[str, str]]:
    """:func:`strings` as a list, leaving out strings shorter than ``min_len`` (they still
    count toward ``limit``, so the strings kept are the same as the walk's).

    Pointers are only built for what is kept or descended into.
    """
    if isinstance(value, str):
        return [(pointer, value)] if len(value) >= min_len else []
    if not isinstance(value, (dict, list)):
        return []
    if limit is None:
        # Every message is walked this way, most of them small: recursion is about twice
        # as fast as the explicit stack below, which takes over for deep values.
        out: list[tuple[str, str]] = []
        try:
            _collect(value, pointer, min_len, out, 0)
            return out
        except _TooDeep:
            return _walk(value, pointer, min_len, -1)
    return _walk(value, pointer, min_len, max(limit, 1))  # the walk always reads its first string


_RECURSION_DEPTH = 64  # containers deep; deeper values are walked with an explicit stack
_SCALARS = frozenset({int, float, bool, type(None)})


class _TooDeep(Exception):
    pass


def _collect(node: Any, where: str, min_len: int, out: list[tuple[str, str]], depth: int) -> None:
    if depth > _RECURSION_DEPTH:
        raise _TooDeep
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for token, item in items:
        kind = type(item)
        if kind is str:
            leaf = True
        elif kind is dict or kind is list:
            leaf = False
        elif kind in _SCALARS:
            continue
        elif isinstance(item, str):
            leaf = True
        elif isinstance(item, (dict, list)):
            leaf = False
        else:
            continue
        if leaf and len(item) < min_len:
            continue
        if type(token) is str and ("~" in token or "/" in token):  # (rare: escape() only then)
            token = escape(token)
        if leaf:
            out.append((f"{where}/{token}", item))
        else:
            _collect(item, f"{where}/{token}", min_len, out, depth + 1)


def _walk(value: Any, pointer: str, min_len: int, limit: int) -> list[tuple[str, str]]:
    """The walk with an explicit stack, for deep values and for a ``limit`` (-1: none)."""
    out: list[tuple[str, str]] = []
    seen = 0
    # (parent pointer, token, node): the node's pointer is built when it is needed.
    stack: list[tuple[str, Any, Any]] = [(pointer, None, value)]
    pop, push = stack.pop, stack.append
    while stack:
        parent, token, node = pop()
        if isinstance(node, str):
            seen += 1
            if len(node) >= min_len:
                if type(token) is str and ("~" in token or "/" in token):
                    token = escape(token)
                out.append((f"{parent}/{token}", node))
            if seen == limit:
                return out
            continue
        where = parent if token is None else f"{parent}/{escape(token) if type(token) is str else token}"
        if isinstance(node, dict):
            children = [(k, v) for k, v in node.items() if isinstance(v, (str, dict, list))]
        else:
            children = [(i, v) for i, v in enumerate(node) if isinstance(v, (str, dict, list))]
        for k, v in reversed(children):
            push((where, k, v))
    return out
