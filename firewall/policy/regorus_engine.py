"""Policy engine adapter for regorus (Rust Rego interpreter).

A regorus ``Engine`` is bound to the thread that created it (using it from
another thread panics), so an adapter records its owner thread and refuses
cross-thread use with a PolicyEvaluationError. ``fork()`` returns an adapter
whose engine is built lazily, from the already validated sources, on the
first thread that uses it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import orjson
import regorus

from .base import DECISION_PATH, UNDEFINED
from .errors import PolicyEvaluationError, PolicyLoadError

__all__ = ["RegorusEngine", "check_syntax", "format_regorus_error"]

# eval_rule_as_json encodes an undefined rule as this JSON string.
_UNDEFINED_JSON = '"<undefined>"'
_QUERY_VAR = "mcpfw_query_value"
_LOCATION = re.compile(r"^\s*-->\s*(\S+)")


def format_regorus_error(exc: BaseException) -> tuple[str, str]:
    """Return (one-line summary, full text) for a regorus exception.

    regorus messages carry a source excerpt and, with RUST_BACKTRACE set, a
    native stack trace; the summary is ``file:line:col: message``.
    """
    text = str(exc).split("\n\nStack backtrace:", 1)[0].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    location = next((m.group(1) for line in lines if (m := _LOCATION.match(line))), None)
    message = next(
        (line.removeprefix("error:").strip() for line in reversed(lines) if line.startswith("error:")),
        lines[0].strip() if lines else type(exc).__name__,
    )
    return (f"{location}: {message}" if location else message), text


def check_syntax(path: str, source: str) -> None:
    """Parse one Rego v1 module; raise PolicyLoadError naming ``path`` on error."""
    engine = regorus.Engine()
    engine.set_rego_v0(False)
    try:
        engine.add_policy(path, source)
    except Exception as exc:
        raise _parse_error(exc, path) from None


def _parse_error(exc: BaseException, path: str) -> PolicyLoadError:
    summary, _ = format_regorus_error(exc)
    position = summary.removeprefix(f"{path}:")
    if position != summary:  # "line:col: message"
        line, col, message = [*position.split(":", 2), "", ""][:3]
        return PolicyLoadError(f"Rego parse error at line {line}, column {col}: {message.strip()}", path=path)
    return PolicyLoadError(f"Rego parse error: {summary}", path=path)


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


class RegorusEngine:
    """:class:`~firewall.policy.base.PolicyEngine` backed by regorus.

    The engine is built (policies parsed, data loaded) in the constructor;
    a fork defers that to its first use. Close or drop an engine on its
    owner thread: regorus cannot free it from another thread and leaks it.
    """

    name = "regorus"

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
        self._setup(tuple(modules.items()), orjson.dumps(data).decode("utf-8"))
        self._build()

    def _setup(self, modules: tuple[tuple[str, str], ...], data_json: str) -> None:
        self._modules = modules
        self._data_json = data_json
        self._build_lock = threading.Lock()
        self._owner: int | None = None
        self._closed = False
        self._pristine: regorus.Engine | None = None  # never sees an input
        self._engine: regorus.Engine | None = None

    def _build(self) -> None:
        engine = regorus.Engine()
        engine.set_rego_v0(False)
        for path, source in self._modules:
            try:
                engine.add_policy(path, source)
            except Exception as exc:
                raise _parse_error(exc, path) from None
        try:
            engine.add_data_json(self._data_json)
        except Exception as exc:
            raise PolicyLoadError(f"cannot load data: {format_regorus_error(exc)[0]}") from None
        # The first query runs regorus's module analysis (unsafe variables
        # and the like); running one now makes such errors load errors.
        try:
            engine.eval_query_as_json("true")
        except Exception as exc:
            raise PolicyLoadError(f"Rego compile error: {format_regorus_error(exc)[0]}") from None
        self._pristine = engine
        self._engine = engine.clone()
        self._owner = threading.get_ident()

    def _local(self) -> tuple[regorus.Engine, regorus.Engine]:
        """(working, pristine) engines for the calling thread."""
        if self._owner != threading.get_ident():
            self._claim()
        if self._engine is None or self._pristine is None:
            raise PolicyEvaluationError("regorus engine is closed")
        return self._engine, self._pristine

    def _claim(self) -> None:
        """Build a not-yet-built (forked) engine on the calling thread."""
        with self._build_lock:
            if self._closed:
                return
            if self._owner is None:
                try:
                    self._build()
                except PolicyLoadError as exc:
                    raise PolicyEvaluationError(str(exc)) from None
            elif self._owner != threading.get_ident():
                raise PolicyEvaluationError(
                    "regorus engine used from a thread other than its owner; use fork() per thread"
                )

    def evaluate(self, input_json: str) -> dict[str, Any]:
        """Evaluate ``data.mcpfw.decision`` with ``input_json`` as input."""
        engine, _ = self._local()
        try:
            engine.set_input_json(input_json)
            raw = engine.eval_rule_as_json(DECISION_PATH)
        except BaseException as exc:
            # Besides RuntimeError, a Rust panic surfaces as PanicException,
            # a BaseException: it must still become a (fail-closed) error.
            if _is_fatal(exc):
                raise
            summary, detail = format_regorus_error(exc)
            raise PolicyEvaluationError(summary, detail=detail) from None
        if raw == _UNDEFINED_JSON:
            raise PolicyEvaluationError(f"{DECISION_PATH} is undefined")
        value = orjson.loads(raw)
        if not isinstance(value, dict):
            raise PolicyEvaluationError(f"{DECISION_PATH} is not an object (got {type(value).__name__})")
        return value

    def eval_query(self, query: str) -> object:
        """Evaluate a Rego expression without input; UNDEFINED if it has no value."""
        _, pristine = self._local()
        engine = pristine.clone()  # cheap, and guarantees no stale input
        try:
            raw = engine.eval_query_as_json(f"{_QUERY_VAR} := {query}")
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            summary, detail = format_regorus_error(exc)
            raise PolicyEvaluationError(summary, detail=detail) from None
        for result in orjson.loads(raw).get("result") or ():
            bindings = result.get("bindings") or {}
            if _QUERY_VAR in bindings:
                return bindings[_QUERY_VAR]
        return UNDEFINED

    def prepare(self) -> None:
        """Build this (forked) engine on the calling thread now, not on its first evaluation:
        compiling the default bundle takes 10-30 ms."""
        self._local()

    def fork(self) -> RegorusEngine:
        """An independent engine, built on first use by whichever thread uses it."""
        forked = RegorusEngine.__new__(RegorusEngine)
        forked._setup(self._modules, self._data_json)
        return forked

    def close(self) -> None:
        """Release the engine; later calls raise PolicyEvaluationError."""
        with self._build_lock:
            self._closed = True
            self._engine = None
            self._pristine = None
