"""Exceptions raised by the policy layer."""

from __future__ import annotations

__all__ = ["PolicyError", "PolicyEvaluationError", "PolicyLoadError", "RedactionError"]


class PolicyError(Exception):
    """Base class for every policy-layer error."""


class PolicyLoadError(PolicyError):
    """A bundle could not be read, parsed or compiled.

    ``path`` names the offending file (relative to the bundle root) when one
    is known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class PolicyEvaluationError(PolicyError):
    """Evaluating a policy failed or produced no usable result.

    The pipeline treats this as a deny with code ``policy_error``.
    ``detail`` holds the engine's full (possibly multi-line) error text.
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail if detail is not None else message


class RedactionError(PolicyError):
    """A redaction instruction cannot be applied safely (fail closed)."""
