"""Shared definitions for the engine adapters: the interface and constants."""

from __future__ import annotations

from typing import Any, Final, Literal, Protocol, runtime_checkable

__all__ = ["DECISION_PATH", "ENGINE_NAMES", "UNDEFINED", "EngineName", "PolicyEngine"]

#: The one document the pipeline evaluates (see docs/contracts.md).
DECISION_PATH: Final = "data.mcpfw.decision"

EngineName = Literal["regorus", "opa"]
ENGINE_NAMES: Final[tuple[EngineName, ...]] = ("regorus", "opa")


class _Undefined:
    """Type of :data:`UNDEFINED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


#: Returned by :meth:`PolicyEngine.eval_query` when the query has no result.
UNDEFINED: Final = _Undefined()


@runtime_checkable
class PolicyEngine(Protocol):
    """A compiled policy bundle ready for evaluation."""

    name: str

    def evaluate(self, input_json: str) -> dict[str, Any]:
        """Evaluate ``data.mcpfw.decision`` for a JSON-encoded input.

        Raises PolicyEvaluationError on any engine error, an undefined
        decision or a decision that is not an object.
        """
        ...

    def eval_query(self, query: str) -> object:
        """Evaluate a Rego expression without input; UNDEFINED if it has no value."""
        ...

    def fork(self) -> PolicyEngine:
        """Return an independent engine with the same policies for another thread."""
        ...

    def prepare(self) -> None:
        """Do now, on the calling thread, the set-up that would otherwise delay this thread's
        first evaluation (a forked regorus engine compiles its policies on first use).

        Raises PolicyEvaluationError when the engine cannot be made ready.
        """
        ...

    def close(self) -> None:
        """Release native resources; the engine must not be used afterwards."""
        ...
