"""A Rego unit-test runner in the spirit of ``opa test``.

Every rule whose name starts with ``test_`` in any package of a bundle is a
test. A test passes when it evaluates to ``true``; ``false`` or undefined is
a failure and an evaluation error is an error. With several engines every
test runs on each of them, and a test whose outcome differs between engines
is reported as a ``DISAGREE`` failure.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from .base import ENGINE_NAMES, PolicyEngine
from .bundle import Bundle, load_bundle
from .engine import create_engine
from .errors import PolicyError, PolicyEvaluationError
from .rules import ref_text, rule_heads

__all__ = ["Outcome", "PolicyTest", "PolicyTestResult", "discover_tests", "run_policy_tests"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_LOAD_ERROR = 2


class Outcome(StrEnum):
    """The result of one test on one engine."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """A discovered test rule: ``name`` is its full reference (``data.pkg.test_x``);
    ``label`` is how it is reported when that differs (``data.pkg.test_x#01``)."""

    name: str
    file: str
    label: str | None = None

    @property
    def shown(self) -> str:
        return self.label or self.name


_DUPLICATE_SUFFIX = "__mcpfw_body_"


def split_duplicate_tests(bundle: Bundle) -> Bundle:
    """The bundle with every further definition of a test name renamed, so each body runs
    as a test of its own (reported ``test_x#01``, ``#02``... as ``opa test`` does). Rego
    joins definitions of one name with "or": run as one, a failing or erroring body beside
    a passing one would pass."""
    seen: dict[tuple[tuple[str, ...], str], int] = {}
    renames: dict[str, list[tuple[int, int, str]]] = {}
    for head in rule_heads(bundle.modules):
        if not head.name.startswith("test_") or head.ref or head.function or head.default:
            continue
        key = (head.package, head.name)
        count = seen.get(key, 0)
        seen[key] = count + 1
        if count:
            renames.setdefault(head.file, []).append((head.start, head.end, f"{head.name}{_DUPLICATE_SUFFIX}{count}"))
    if not renames:
        return bundle
    modules = dict(bundle.modules)
    for file, edits in renames.items():
        raw = modules[file].encode("utf-8")  # the parser's offsets count bytes
        for start, end, name in sorted(edits, reverse=True):
            raw = raw[:start] + name.encode() + raw[end:]
        modules[file] = raw.decode("utf-8")
    return dataclasses.replace(bundle, modules=modules)


def _label(ref: str) -> str | None:
    base, sep, count = ref.rpartition(_DUPLICATE_SUFFIX)
    return f"{base}#{int(count):02d}" if sep and count.isdigit() else None


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    """One test run on one engine."""

    test: PolicyTest
    engine: str
    outcome: Outcome
    duration_ms: float
    error: str | None = None
    detail: str | None = None


def discover_tests(bundle: Bundle) -> list[PolicyTest]:
    """All ``test_*`` rules of the bundle, in file order, without duplicates.

    Rules are found in the syntax tree regorus produces (engine-independent: only the
    parser is used). Rules with a ref head (``test_x.y``), arguments or a partial-set head
    are not tests, as in ``opa test``.
    """
    seen: set[str] = set()
    tests: list[PolicyTest] = []
    for head in rule_heads(bundle.modules):
        if not head.name.startswith("test_") or head.ref or head.function or head.partial_set:
            continue
        ref = ref_text(["data", *head.package, head.name])
        if ref not in seen:
            seen.add(ref)
            tests.append(PolicyTest(name=ref, file=head.file, label=_label(ref)))
    return tests


def discover_todo(bundle: Bundle) -> list[str]:
    """``todo_*`` rules (skipped tests, reported as ``opa test`` reports them)."""
    found = {ref_text(["data", *h.package, h.name]) for h in rule_heads(bundle.modules)
             if h.name.startswith("todo_") and not (h.ref or h.function)}
    return sorted(found)


def run_tests(engine: PolicyEngine, tests: Iterable[PolicyTest]) -> list[PolicyTestResult]:
    """Evaluate ``tests`` on ``engine``."""
    results: list[PolicyTestResult] = []
    for test in tests:
        start = time.perf_counter()
        try:
            value = engine.eval_query(test.name)
        except PolicyEvaluationError as exc:
            elapsed = (time.perf_counter() - start) * 1000
            results.append(PolicyTestResult(test, engine.name, Outcome.ERROR, elapsed, str(exc), exc.detail))
            continue
        elapsed = (time.perf_counter() - start) * 1000
        outcome = Outcome.PASS if value is True else Outcome.FAIL
        results.append(PolicyTestResult(test, engine.name, outcome, elapsed))
    return results


def run_policy_tests(
    bundle_dir: str | Path,
    engines: Sequence[str] | str = ("regorus",),
    out: TextIO | None = None,
    verbose: bool = False,
    run: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> int:
    """Run the bundle's Rego tests and print one line per test and a summary.

    ``engines`` lists engine names (``regorus``, ``opa``; a comma-separated
    string is accepted too); ``data`` is merged over the bundle's data as the
    firewall merges its configuration's ``policy.data``; ``run`` is a regex
    searched in each test's full name (``data.pkg.test_x``) to select tests.
    ``verbose`` adds the full engine error text under ERROR lines. Returns 0
    when everything passed, 1 on any failure, error or engine disagreement,
    2 when the bundle or an engine could not be loaded (or bad arguments).
    """
    out = out if out is not None else sys.stdout
    if isinstance(engines, str):
        engines = engines.split(",")
    names = list(dict.fromkeys(name.strip() for name in engines if name.strip()))
    unknown = [name for name in names if name not in ENGINE_NAMES]
    if not names or unknown:
        print(
            f"error: unknown engine(s) {', '.join(unknown) or '(none given)'}; expected {', '.join(ENGINE_NAMES)}",
            file=out,
        )
        return EXIT_LOAD_ERROR
    try:
        selector = re.compile(run) if run else None
    except re.error as exc:
        print(f"error: invalid --run regular expression {run!r}: {exc}", file=out)
        return EXIT_LOAD_ERROR

    policy_engines: list[PolicyEngine] = []
    try:
        bundle = split_duplicate_tests(load_bundle(bundle_dir))
        tests = [t for t in discover_tests(bundle) if selector is None or selector.search(t.shown)]
        skipped = [t for t in discover_todo(bundle) if selector is None or selector.search(t)]
        for name in names:
            policy_engines.append(create_engine(name, bundle, data))
    except PolicyError as exc:
        for engine in policy_engines:
            engine.close()
        print(f"error: {exc}", file=out)
        return EXIT_LOAD_ERROR

    prefix = len(names) > 1
    by_engine: dict[str, dict[str, PolicyTestResult]] = {}
    passed = failed = errors = 0
    try:
        for engine in policy_engines:
            results = run_tests(engine, tests)
            by_engine[engine.name] = {r.test.name: r for r in results}
            for result in results:
                _print_result(result, out, prefix=prefix, verbose=verbose)
                if result.outcome is Outcome.PASS:
                    passed += 1
                else:
                    failed += 1
                    errors += result.outcome is Outcome.ERROR
    finally:
        for engine in policy_engines:
            engine.close()

    if prefix:
        for test in tests:
            outcomes = {name: by_engine[name][test.name].outcome for name in names}
            if len(set(outcomes.values())) > 1:
                failed += 1
                detail = " ".join(f"{name}={outcome}" for name, outcome in outcomes.items())
                print(f"DISAGREE {test.shown}: {detail}", file=out)
    for todo in skipped:
        print(f"{todo}: SKIPPED", file=out)

    summary = f"{passed} passed, {failed} failed"
    if errors:
        summary += f", {errors} errors"
    if skipped:
        summary += f", {len(skipped)} skipped"
    if not tests:
        summary += " (no test_ rules found" + (" matching --run)" if selector else ")")
    print(summary, file=out)
    return EXIT_OK if failed == 0 else EXIT_FAILED


def _print_result(result: PolicyTestResult, out: TextIO, *, prefix: bool, verbose: bool) -> None:
    line = f"{result.test.shown}: {result.outcome} ({result.duration_ms:.2f}ms)"
    if prefix:
        line = f"[{result.engine}] {line}"
    if result.outcome is Outcome.ERROR:
        line += f": {result.error}"
    print(line, file=out)
    if verbose and result.outcome is Outcome.ERROR and result.detail and result.detail != result.error:
        for detail_line in result.detail.splitlines():
            print(f"    {detail_line}", file=out)
