"""Which resource template a ``resources/read`` URI belongs to: RFC 6570 templates as patterns.

A template is compiled once (cached) to a small regular expression, one that matches every
URI the template can expand to, and a little more: servers match leniently (the Python
SDK's ``{var}`` accepts any run of characters but '/'), and the registry must recognise
every URI a server would route to a template, so matching errs on the side of matching.

* ``{var}`` (simple expansion): one path segment, no '/' (``[^/]*``);
* ``{+var}`` (reserved): anything, '/' included; ``{#var}``: nothing, or '#' and anything;
* ``{/var}``: nothing, or '/' and anything (any number of segments); ``{.var}``: nothing,
  or '.' and no '/' (labels); ``{;x,y}``: nothing, or ';' and no '/' (parameters);
* ``{?x,y}`` and ``{&x}``: nothing, or '?' (resp. '&') and anything up to a fragment;
* modifiers (``{var:3}``, ``{var*}``) and lists do not narrow the match.

Variables may expand to nothing (undefined variables do). A template with an unbalanced
brace, or an operator RFC 6570 reserves for extensions (``= , ! @ |``), matches itself
literally there.

The templates come from the server and the URIs from the client, neither trusted: a
backtracking engine would take exponential time on ``{a}-{b}-{c}-...`` against a long
run of dashes. So the expression is kept as its pieces (literals, ``[^F]*`` runs,
``(?:p[^F]*)?`` options) and matched by advancing the set of reachable positions piece by
piece: O(len(uri) x pieces), whatever the input. ``Template.pattern`` is the same
expression for Python's ``re``, for reading and for tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_RESERVED = frozenset("=,!@|")
# operator -> (prefix or "", characters the expansion cannot contain after it)
_OPERATORS: dict[str, tuple[str, str]] = {
    "": ("", "/"),
    "+": ("", ""),
    "#": ("#", ""),
    "/": ("/", ""),
    ".": (".", "/"),
    ";": (";", "/"),
    "?": ("?", "#"),
    "&": ("&", "#"),
}

Piece = tuple[str, str, str]  # ("lit", text, "") | ("run", "", forbidden) | ("opt", prefix, forbidden)


@dataclass(frozen=True, slots=True)
class Template:
    template: str
    pieces: tuple[Piece, ...]
    literal_length: int  # how much of the template is literal: more is more specific

    @property
    def pattern(self) -> str:
        """The equivalent regular expression (for ``re.fullmatch`` with ``re.DOTALL``)."""
        out = []
        for kind, text, forbidden in self.pieces:
            run = f"[^{re.escape(forbidden)}]*" if forbidden else ".*"
            out.append(re.escape(text) if kind == "lit" else run if kind == "run" else f"(?:{re.escape(text)}{run})?")
        return "".join(out)

    def matches(self, uri: str) -> bool:
        n = len(uri)
        reach = [False] * (n + 1)
        reach[0] = True
        for kind, text, forbidden in self.pieces:
            if kind == "lit":
                size = len(text)
                nxt = [False] * (n + 1)
                for i in range(n - size + 1):
                    if reach[i] and uri.startswith(text, i):
                        nxt[i + size] = True
                reach = nxt
            elif kind == "run":
                reach = _run(uri, reach, forbidden)
            else:
                start = [False] * (n + 1)
                for i in range(n):
                    if reach[i] and uri[i] == text:
                        start[i + 1] = True
                extended = _run(uri, start, forbidden)
                reach = [a or b for a, b in zip(reach, extended, strict=True)]
            if not any(reach):
                return False
        return reach[n]


def _run(uri: str, reach: list[bool], forbidden: str) -> list[bool]:
    """Positions reachable from ``reach`` over characters not in ``forbidden``."""
    out = [False] * len(reach)
    going = False
    for j, here in enumerate(reach):
        going = here or (going and uri[j - 1] not in forbidden)
        out[j] = going
    return out


@lru_cache(maxsize=4096)
def compile_template(template: str) -> Template:
    """The compiled form of ``template`` (cached: each template is compiled once)."""
    parts = _EXPRESSION.split(template)  # literal, expression body, literal, ...
    literals, bodies = parts[::2], parts[1::2]
    if any("{" in text or "}" in text for text in literals):
        return Template(template, (("lit", template, ""),), len(template))  # unbalanced: only itself
    pieces: list[Piece] = []

    def literal(text: str) -> None:
        if not text:
            return
        if pieces and pieces[-1][0] == "lit":
            pieces[-1] = ("lit", pieces[-1][1] + text, "")
        else:
            pieces.append(("lit", text, ""))

    literal(literals[0])
    for body, text in zip(bodies, literals[1:], strict=True):
        operator = body[:1]
        if operator in _RESERVED:
            literal("{" + body + "}")
        else:
            prefix, forbidden = _OPERATORS.get(operator, _OPERATORS[""])
            piece: Piece = ("opt", prefix, forbidden) if prefix else ("run", "", forbidden)
            # Two runs in a row match what the laxer of them matches: keep one.
            if piece[0] == "run" and pieces and pieces[-1][0] == "run":
                kept = pieces[-1][2]
                pieces[-1] = ("run", "", "".join(c for c in kept if c in forbidden))
            else:
                pieces.append(piece)
        literal(text)
    return Template(template, tuple(pieces), sum(len(p[1]) for p in pieces if p[0] == "lit"))


def matches(template: str, uri: str) -> bool:
    return compile_template(template).matches(uri)


__all__ = ["Template", "compile_template", "matches"]
