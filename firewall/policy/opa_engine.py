"""Policy engine adapter for OPA through opa-golib-python-bindings.

The bridge embeds OPA's ``v1/rego`` package, which parses Rego v1 by default.
Modules are compiled when the first query is prepared, so the constructor
prepares the decision query right away: compile errors surface as
PolicyLoadError at creation, never on the hot path. An OPA engine may be
shared between threads but serialises evaluations, so ``fork()`` builds a
separate engine that evaluates in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from .base import DECISION_PATH, UNDEFINED
from .errors import PolicyEvaluationError, PolicyLoadError

__all__ = ["OpaPolicyEngine"]

_DOCUMENT = DECISION_PATH.removeprefix("data.")
_QUERY_VAR = "mcpfw_query_value"
# Errors that mean "the bundle does not compile", as opposed to runtime errors.
_LOAD_ERROR_CODES = frozenset({"parse_error", "compile_error", "prepare_error"})


class OpaPolicyEngine:
    """:class:`~firewall.policy.base.PolicyEngine` backed by OPA."""

    name = "opa"

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
        self._modules = dict(modules)
        self._data = data
        self._engine = OpaEngine()
        try:
            for path, source in self._modules.items():
                try:
                    self._engine.add_policy(path, source)
                except OpaError as exc:
                    raise PolicyLoadError(exc.message, path=path) from None
            if data:
                try:
                    self._engine.add_data(dict(data))
                except OpaError as exc:
                    raise PolicyLoadError(f"cannot load data: {exc.message}") from None
            self._prepare()
        except BaseException:
            self._engine.close()
            raise

    def _prepare(self) -> None:
        # Evaluating once compiles the bundle and caches the prepared query.
        # Only compile failures matter here: the policy may legitimately be
        # undefined or fail at runtime for an empty input.
        try:
            self._engine.eval_document(_DOCUMENT, {})
        except OpaError as exc:
            if exc.code in _LOAD_ERROR_CODES:
                raise PolicyLoadError(f"Rego compile error: {exc.message}") from None

    def evaluate(self, input_json: str) -> dict[str, Any]:
        """Evaluate ``data.mcpfw.decision`` with ``input_json`` as input."""
        try:
            value = orjson.loads(input_json)
        except orjson.JSONDecodeError as exc:
            raise PolicyEvaluationError(f"policy input is not valid JSON: {exc}") from None
        try:
            result = self._engine.eval_document(_DOCUMENT, value)
        except OpaUndefinedError:
            raise PolicyEvaluationError(f"{DECISION_PATH} is undefined") from None
        except OpaError as exc:
            raise PolicyEvaluationError(exc.message, detail=str(exc)) from None
        if not isinstance(result, dict):
            raise PolicyEvaluationError(f"{DECISION_PATH} is not an object (got {type(result).__name__})")
        return result

    def eval_query(self, query: str) -> object:
        """Evaluate a Rego expression without input; UNDEFINED if it has no value."""
        try:
            rows = self._engine.eval_query(f"{_QUERY_VAR} := {query}")
        except OpaError as exc:
            raise PolicyEvaluationError(exc.message, detail=str(exc)) from None
        for bindings in rows:
            if _QUERY_VAR in bindings:
                return bindings[_QUERY_VAR]
        return UNDEFINED

    def fork(self) -> OpaPolicyEngine:
        """A separate OPA engine with the same policies (compiled anew, ~1ms)."""
        return OpaPolicyEngine(self._modules, self._data)

    def prepare(self) -> None:
        """Nothing to do: an OPA engine is compiled when it is made, and any thread may use it."""

    def close(self) -> None:
        """Release the Go engine."""
        self._engine.close()
