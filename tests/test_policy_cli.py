"""Tests for the Rego test runner behind ``mcpfw policy test``."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from firewall.policy import run_policy_tests
from firewall.policy.bundle import load_bundle
from firewall.policy.testing import discover_tests

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

LINE = re.compile(r"^(\[(regorus|opa)\] )?data\.\S+: (PASS|FAIL|ERROR) \(\d+\.\d{2}ms\)(: .+)?$")

SAMPLE = {
    "calc/calc.rego": """package calc

double(x) := x * 2

allowed if input.user == "admin"
""",
    "calc/calc_test.rego": """package calc_test

import data.calc

test_double if calc.double(2) == 4

test_double_wrong if calc.double(2) == 5

test_allowed_for_admin if {
	calc.allowed with input as {"user": "admin"}
}

test_undefined if calc.allowed
""",
}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(bundle: Path, **kwargs) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_policy_tests(bundle, out=out, **kwargs)
    return code, out.getvalue().splitlines()


def test_default_bundle_passes_on_both_engines():
    code, lines = run(POLICIES, engines=["regorus", "opa"])
    assert code == 0, "\n".join(lines)
    passed = sum(1 for line in lines if ": PASS (" in line)
    assert passed > 100
    assert lines[-1] == f"{passed} passed, 0 failed"
    assert not any(line.startswith("DISAGREE") for line in lines)


def test_output_format_and_failure_exit_code(tmp_path):
    code, lines = run(write(tmp_path, SAMPLE), engines=["regorus"])
    assert code == 1
    assert lines[:-1] == [line for line in lines[:-1] if LINE.match(line)]
    outcomes = {line.split(": ")[0]: line.split(": ")[1].split(" ")[0] for line in lines[:-1]}
    assert outcomes == {
        "data.calc_test.test_double": "PASS",
        "data.calc_test.test_double_wrong": "FAIL",
        "data.calc_test.test_allowed_for_admin": "PASS",
        "data.calc_test.test_undefined": "FAIL",
    }
    assert lines[-1] == "2 passed, 2 failed"


def test_all_passing_exit_code(tmp_path):
    code, lines = run(write(tmp_path, SAMPLE), engines=["opa"], run="double$|admin")
    assert code == 0
    assert lines[-1] == "2 passed, 0 failed"


def test_only_true_passes(tmp_path):
    files = {
        "t.rego": """package t

test_number := 1

test_string := "true"

test_object := {"ok": true}

test_true := true
"""
    }
    code, lines = run(write(tmp_path, files))
    assert code == 1
    assert "data.t.test_true: PASS" in "\n".join(lines)
    assert lines[-1] == "1 passed, 3 failed"


def test_evaluation_errors_are_reported_and_counted(tmp_path):
    files = {
        "t.rego": """package t

test_ok if true

test_division if 1 / 0 == 1
"""
    }
    for engine in ["regorus", "opa"]:
        code, lines = run(write(tmp_path, files), engines=[engine])
        assert code == 1
        error_line = next(line for line in lines if "test_division" in line)
        assert LINE.match(error_line)
        assert re.search(r"test_division: ERROR \(\d+\.\d{2}ms\): .*divide by zero", error_line)
        assert lines[-1] == "1 passed, 1 failed, 1 errors"


def test_verbose_shows_full_error_text(tmp_path):
    files = {"t.rego": "package t\n\ntest_division if 1 / 0 == 1\n"}
    _, quiet = run(write(tmp_path, files))
    _, verbose = run(write(tmp_path, files), verbose=True)
    assert len(verbose) > len(quiet)
    assert all(line.startswith("    ") for line in verbose[1:-1])


def test_run_filter(tmp_path):
    code, lines = run(write(tmp_path, SAMPLE), run=r"test_double")
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "data.calc_test.test_double",
        "data.calc_test.test_double_wrong",
    ]
    assert lines[-1] == "1 passed, 1 failed"
    assert code == 1


def test_invalid_run_filter_is_a_usage_error(tmp_path):
    code, lines = run(write(tmp_path, SAMPLE), run="(")
    assert code == 2
    assert lines[-1].startswith("error: invalid --run regular expression")


def test_several_engines_prefix_lines(tmp_path):
    code, lines = run(write(tmp_path, SAMPLE), engines="regorus,opa")
    assert code == 1
    assert sum(line.startswith("[regorus] data.") for line in lines) == 4
    assert sum(line.startswith("[opa] data.") for line in lines) == 4
    assert lines[-1] == "4 passed, 4 failed"


def test_disagreement_between_engines_is_a_failure(tmp_path):
    files = {
        "t.rego": """package t

# regorus's PyPI build has no crypto builtins: ERROR there, PASS on OPA.
test_hash if crypto.sha256("a") != ""

# `not f(x.missing)`: true on regorus, undefined on OPA.
test_not_of_undefined_argument if {
	x := {"a": 1}
	not is_string(x[input.key])
}

test_same if true
"""
    }
    code, lines = run(write(tmp_path, files), engines=["regorus", "opa"])
    assert code == 1
    disagreements = [line for line in lines if line.startswith("DISAGREE")]
    assert disagreements == [
        "DISAGREE data.t.test_hash: regorus=ERROR opa=PASS",
        "DISAGREE data.t.test_not_of_undefined_argument: regorus=PASS opa=FAIL",
    ]
    # 6 runs (2 failing) + 2 disagreements; the regorus error is also listed
    assert lines[-1] == "4 passed, 4 failed, 1 errors"


def test_missing_bundle_is_a_load_error(tmp_path):
    code, lines = run(tmp_path / "missing")
    assert code == 2
    assert lines == [f"error: policy bundle directory not found: {tmp_path / 'missing'}"]


def test_syntax_error_is_a_load_error(tmp_path):
    code, lines = run(write(tmp_path, {"bad.rego": "package bad\n\ntest_x if {\n"}))
    assert code == 2
    assert lines[-1].startswith("error: bad.rego: Rego parse error at line")


def test_compile_error_is_a_load_error(tmp_path):
    code, lines = run(write(tmp_path, {"t.rego": "package t\n\ntest_x if y == 1\n"}), engines=["opa"])
    assert code == 2
    assert "unsafe" in lines[-1]


def test_unknown_engine_is_a_usage_error(tmp_path):
    code, lines = run(write(tmp_path, SAMPLE), engines=["regorus", "wasm"])
    assert code == 2
    assert lines[-1].startswith("error: unknown engine(s) wasm")


def test_bundle_without_tests(tmp_path):
    code, lines = run(write(tmp_path, {"p.rego": "package p\n\nx := 1\n"}))
    assert code == 0
    assert lines == ["0 passed, 0 failed (no test_ rules found)"]


@pytest.mark.parametrize("engine", ["regorus", "opa"])
def test_each_definition_of_a_test_name_runs_on_its_own(tmp_path, engine):
    """Rego joins the definitions of one name with "or"; as one test, a failing or erroring
    body next to a passing one would pass. opa test runs each (test_x, test_x#01, ...)."""
    files = {
        "t/a_test.rego": 'package t\n\ntest_x if { 1 == 1 }\n\ntest_x if { 1 == 2 }\n\n'
                         'test_y if { to_number("x1") == 1 }\n\ntest_y if { true }\n\ntodo_later if { false }\n',
        "t/b_test.rego": 'package t\n\n# caf\u00e9: the parser counts bytes\ntest_x if { "\u00e9" == "e" }\n',
    }
    code, lines = run(write(tmp_path, files), engines=[engine])
    assert code == 1
    outcomes = {line.split(":")[0]: line.split(": ")[1].split(" ")[0] for line in lines[:-1]}
    assert outcomes == {"data.t.test_x": "PASS", "data.t.test_x#01": "FAIL", "data.t.test_x#02": "FAIL",
                        "data.t.test_y": "ERROR", "data.t.test_y#01": "PASS", "data.t.todo_later": "SKIPPED"}
    assert lines[-1] == "2 passed, 3 failed, 1 errors, 1 skipped"


@pytest.mark.parametrize("engine", ["regorus", "opa"])
def test_data_where_a_rule_is_defined_is_refused(tmp_path, engine):
    """A data file (or the configuration's policy.data) at a rule's path must not replace
    the rule: regorus let data.p.decision = {"allow": true} win over the policy."""
    from firewall.policy.bundle import PolicyLoadError
    from firewall.policy.engine import create_engine

    files = {"p/p.rego": 'package p\n\ndecision := {"allow": false}\n', "p/cfg/data.json": '{"x": 1}'}
    bundle = load_bundle(write(tmp_path, files))
    create_engine(engine, bundle).close()  # data beside the rules is fine
    for extra in ({"p": {"decision": {"allow": True}}}, {"p": True}):
        with pytest.raises(PolicyLoadError, match="data.p"):
            create_engine(engine, bundle, extra)
    write(tmp_path, {"p/decision/data.json": '{"allow": true}'})
    code, lines = run(tmp_path, engines=[engine])
    assert code == 2 and "data.p.decision is defined both by a rule" in lines[-1]


def test_discovery_handles_quoted_packages_defaults_and_helpers(tmp_path):
    files = {
        "t.rego": """package a["b-c"]

default test_default := false

test_default if input.never

test_plain if true

test_helper(x) := x

helper_test if false

test_ref.sub := true
"""
    }
    bundle = load_bundle(write(tmp_path, files))
    assert [t.name for t in discover_tests(bundle)] == [
        'data.a["b-c"].test_default',
        'data.a["b-c"].test_plain',
    ]
    code, lines = run(tmp_path, engines=["regorus", "opa"])
    assert lines[-1] == "2 passed, 2 failed"
    assert code == 1


@pytest.mark.parametrize("engine", ["regorus", "opa"])
def test_tests_see_bundle_data(tmp_path, engine):
    files = {
        "cfg/data.yaml": "limit: 3\n",
        "t.rego": "package t\n\ntest_limit if data.cfg.limit == 3\n",
    }
    code, lines = run(write(tmp_path, files), engines=[engine])
    assert (code, lines[-1]) == (0, "1 passed, 0 failed")


def test_tests_see_the_configuration_data(tmp_path):
    """policy.data of the configuration is merged as the firewall merges it: a test of a
    threshold the configuration changes must see the configured value."""
    files = {"p/p.rego": "package p\n\nlimit := data.p.config.limit\n",
             "p/config/data.json": '{"limit": 5}',
             "p/p_test.rego": "package p_test\n\ntest_limit if data.p.limit == 9\n"}
    bundle = write(tmp_path, files)
    assert run(bundle)[0] == 1
    code, lines = run(bundle, data={"p": {"config": {"limit": 9}}})
    assert code == 0, lines
