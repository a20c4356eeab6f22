"""Readable differences between two versions of a definition, for people and for the policy.

Text fields (description, title) get a word diff in ``[-removed-]{+added+}`` form, since
descriptions are mostly one long line; JSON fields (schemas, annotations, capabilities)
get a unified diff of their indented form.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

_WORDS = re.compile(r"\s+|[^\s]+")
_CONTEXT_WORDS = 8


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Top-level fields whose values differ (a field absent on one side counts), sorted."""
    old, new = old or {}, new or {}
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def word_diff(old: str, new: str) -> str:
    """``old`` and ``new`` as one text with deletions in ``[-...-]`` and insertions in ``{+...+}``.

    Long unchanged stretches are shortened to their first and last few words.
    """
    a, b = _WORDS.findall(old), _WORDS.findall(new)
    # (equal tokens) or (removed, added) runs; a blank between two changes joins them,
    # so that "[-Does things.-]" is not shown word by word.
    runs: list[tuple[bool, list[str], list[str]]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        changed = op != "equal"
        if runs and changed and not runs[-1][0] and len(runs) > 1 and all(t.isspace() for t in runs[-1][1]):
            blank = runs.pop()[1]
            runs[-1][1].extend(blank)
            runs[-1][2].extend(blank)
        if runs and changed and runs[-1][0]:
            runs[-1][1].extend(a[i1:i2])
            runs[-1][2].extend(b[j1:j2])
        else:
            runs.append((changed, a[i1:i2], b[j1:j2] if changed else []))
    out: list[str] = []
    for changed, removed, added in runs:
        if not changed:
            out.append(_elide(removed))
            continue
        if removed:
            out.append("[-" + "".join(removed) + "-]")
        if added:
            out.append("{+" + "".join(added) + "+}")
    return "".join(out)


def _elide(tokens: list[str]) -> str:
    words = [t for t in tokens if not t.isspace()]
    if len(words) <= 2 * _CONTEXT_WORDS:
        return "".join(tokens)
    head = _take_words(tokens, _CONTEXT_WORDS)
    tail = _take_words(tokens[::-1], _CONTEXT_WORDS)[::-1]
    return "".join(head) + " ... " + "".join(tail)


def _take_words(tokens: list[str], n: int) -> list[str]:
    out: list[str] = []
    for token in tokens:
        out.append(token)
        n -= not token.isspace()
        if n == 0:
            break
    return out


def unified_json_diff(old: Any, new: Any, label: str) -> str:
    lines = difflib.unified_diff(
        pretty_json(old).splitlines() if old is not None else [],
        pretty_json(new).splitlines() if new is not None else [],
        fromfile=f"{label} (pinned)", tofile=f"{label} (observed)", lineterm="", n=2,
    )
    return "\n".join(lines)


def field_diffs(old: dict[str, Any] | None, new: dict[str, Any] | None, *, limit: int | None = None) -> dict[str, str]:
    """A readable diff per changed field; each cut to ``limit`` characters when given."""
    old, new = old or {}, new or {}
    diffs: dict[str, str] = {}
    for name in changed_fields(old, new):
        before, after = old.get(name), new.get(name)
        if isinstance(before, str) and isinstance(after, str):
            text = word_diff(before, after)
        elif before is None and isinstance(after, str):
            text = "{+" + after + "+}"
        elif after is None and isinstance(before, str):
            text = "[-" + before + "-]"
        else:
            text = unified_json_diff(before, after, name)
        if limit is not None and len(text) > limit:
            text = text[: limit - 1] + "…"
        diffs[name] = text
    return diffs
