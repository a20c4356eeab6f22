"""The policy engine interface and its factory.

Two adapters implement :class:`PolicyEngine`: ``regorus`` (Rust, in-process,
fast, the default) and ``opa`` (the Go OPA library through a c-shared
bridge, complete builtin set). Both parse Rego v1 and compile the bundle once,
when the engine is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import DECISION_PATH, ENGINE_NAMES, UNDEFINED, EngineName, PolicyEngine
from .bundle import Bundle, merge_data
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
