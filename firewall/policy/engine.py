"""The policy engine interface and its factory.

Two adapters implement :class:`PolicyEngine`: ``regorus`` (Rust, in-process,
fast, the default) and ``opa`` (the Go OPA library through a c-shared
bridge, complete builtin set). Both parse Rego v1 and compile the bundle once,
when the engine is created.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import DECISION_PATH, ENGINE_NAMES, UNDEFINED, EngineName, PolicyEngine
from .bundle import Bundle, merge_data
from .rules import check_data_conflicts
from .errors import PolicyEvaluationError, PolicyLoadError

__all__ = [
    "DECISION_PATH",
    "ENGINE_NAMES",
    "UNDEFINED",
    "EngineName",
    "PolicyEngine",
    "PolicyEvaluationError",
    "PolicyLoadError",
    "create_engine",
    "DecisionCachePlan",
    "decision_cache_plan",
    "findings_read",
]


def create_engine(
    name: str,
    bundle: Bundle,
    extra_data: Mapping[str, Any] | None = None,
) -> PolicyEngine:
    """Create a ``regorus`` or ``opa`` engine for ``bundle``.

    ``extra_data`` (typically from the user's configuration) is deep-merged
    over the bundle's data. Raises PolicyLoadError if the bundle does not
    compile, ValueError for an unknown engine name.
    """
    data = merge_data(bundle.data, extra_data) if extra_data else bundle.data
    check_data_conflicts(bundle.modules, data)
    if name == "regorus":
        from .regorus_engine import RegorusEngine

        return RegorusEngine(bundle.modules, data)
    if name == "opa":
        # Imported lazily: the OPA bridge is optional and loads a Go runtime.
        try:
            from .opa_engine import OpaPolicyEngine
        except ImportError as exc:
            raise PolicyLoadError(
                f"the OPA engine is not available ({exc}); install opa-golib-python-bindings or use engine 'regorus'"
            ) from exc
        return OpaPolicyEngine(bundle.modules, data)
    raise ValueError(f"unknown policy engine {name!r}; expected one of: {', '.join(ENGINE_NAMES)}")


def installed_engines() -> list[str]:
    """The engines this installation can run: regorus always, OPA when its bridge imports."""
    import importlib.util

    try:  # without importing it: that would load the Go runtime
        found = importlib.util.find_spec("opa_bindings") is not None
    except (ImportError, ValueError):
        found = False
    return ["regorus", "opa"] if found else ["regorus"]


# -- may decisions be remembered? -----------------------------------------------------------

# Builtins whose value depends on more than their arguments (the clock, randomness, the
# network, the runtime) or that have side effects. A module that names any of them (or a
# namespace of them) makes every decision of the bundle unrepeatable. Deliberately broad:
# a false alarm only costs the cache.
_IMPURE = re.compile(
    r"\b(?:time\.now_ns|rand\.|uuid\.|http\.send|net\.lookup|opa\.runtime|io\.jwt\.decode_verify"
    r"|print|trace|crypto\.x509\.parse_and_verify)"
)
# One pass, left to right, so whichever starts first wins: a "#" inside a string is text, and
# a quote or backtick inside a comment opens nothing.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|#[^\n]*')
# `input` used other than as `input.<field>`: the whole document (walk(input), input[k],
# object.keys(input), x := input ...) may be read, so no field can be left out of the key.
_WHOLE_INPUT = re.compile(r"\binput\b(?!\s*\.\s*[A-Za-z_])")


# A test's mock (`with input as {...}`, `with input.tool as {...}`) replaces the input; it
# does not read it, so it must not make the whole document count as read.
_INPUT_MOCK = re.compile(r"\bwith\s+input\b(?:\s*\.\s*[A-Za-z_][\w.]*)?\s+as\b")
_FIELD_READ = re.compile(r"\binput\s*\.\s*([A-Za-z_]\w*)")
# `input.findings.<detector>`, and `input.findings` used any other way (all of it may be read).
_FINDING_READ = re.compile(r"\binput\s*\.\s*findings\s*\.\s*([A-Za-z_]\w*)")
_WHOLE_FINDINGS = re.compile(r"\binput\s*\.\s*findings\b(?!\s*\.\s*[A-Za-z_])")


@dataclass(frozen=True, slots=True)
class DecisionCachePlan:
    """Whether a bundle's decisions are a function of the input alone, and which top-level
    input fields its rules read (``None``: the whole document may be read). Fields no rule
    reads are left out of the cache key."""

    cacheable: bool
    reads: frozenset[str] | None = None

    def unread(self, fields: Iterable[str]) -> frozenset[str]:
        """The ``fields`` no rule reads."""
        return frozenset() if self.reads is None else frozenset(f for f in fields if f not in self.reads)


def _code_only(source: str) -> str:
    """Rego source with its string literals emptied and its comments removed."""
    return _STRING_OR_COMMENT.sub(lambda m: "" if m.group().startswith("#") else '""', source)


def decision_cache_plan(modules: Mapping[str, str] | None) -> DecisionCachePlan:
    """Analyse the Rego modules of a bundle for :class:`DecisionCachePlan`.

    Decisions may be remembered when no module names a builtin that reads the clock,
    randomness, the network or the runtime (the data document is fixed at load). A field
    is read when a module names ``input.<field>``; a module that uses ``input`` in any
    other way (``walk(input, ...)``, ``input[k]``, ``x := input``) may read every field.
    Test mocks (``with input as ...``) read nothing. Conservative text analysis: when in
    doubt, no cache or every field kept.
    """
    if not modules:
        return DecisionCachePlan(False)
    code = [_INPUT_MOCK.sub("with __mock__ as", _code_only(source)) for source in modules.values()]
    if any(_IMPURE.search(text) for text in code):
        return DecisionCachePlan(False)
    if any(_WHOLE_INPUT.search(text) for text in code):
        return DecisionCachePlan(True)
    return DecisionCachePlan(True, frozenset(f for text in code for f in _FIELD_READ.findall(text)))


def findings_read(modules: Mapping[str, str] | None) -> frozenset[str] | None:
    """The detectors (``input.findings.<name>``) whose findings a bundle's rules read;
    ``None`` when any may be read (``input`` or ``input.findings`` used as a whole, or
    modules that cannot be analysed). Same conservative text analysis as
    :func:`decision_cache_plan`; test modules' mocks read nothing."""
    if not modules:
        return None
    code = [_INPUT_MOCK.sub("with __mock__ as", _code_only(source)) for source in modules.values()]
    if any(_WHOLE_INPUT.search(text) or _WHOLE_FINDINGS.search(text) for text in code):
        return None
    return frozenset(name for text in code for name in _FINDING_READ.findall(text))


def engine_modules(engine: Any) -> Mapping[str, str] | None:
    """The Rego modules an engine built by :func:`create_engine` was compiled from."""
    modules = getattr(engine, "_modules", None)
    if isinstance(modules, tuple):  # the regorus adapter keeps (path, source) pairs
        modules = dict(modules)
    return modules if isinstance(modules, Mapping) else None


def engine_cache_plan(engine: Any) -> DecisionCachePlan:
    """:func:`decision_cache_plan` for an engine built by :func:`create_engine` (either adapter
    keeps its modules); an engine of unknown make gets no cache."""
    return decision_cache_plan(engine_modules(engine))
