"""The mcpfw policy layer: bundles, engines, decisions and the Rego test runner.

Typical use::

    bundle = load_bundle("policies")
    engine = create_engine("regorus", bundle, extra_data=config_data)
    decision = normalize_decision(engine.evaluate(input_json))
"""

from .base import DECISION_PATH, ENGINE_NAMES, UNDEFINED, EngineName, PolicyEngine
from .bundle import Bundle, load_bundle, merge_data
from .decision import Decision, apply_redactions, deny_decision, normalize_decision
from .engine import create_engine
from .errors import PolicyError, PolicyEvaluationError, PolicyLoadError, RedactionError
from .testing import run_policy_tests

__all__ = [
    "DECISION_PATH",
    "ENGINE_NAMES",
    "UNDEFINED",
    "Bundle",
    "Decision",
    "EngineName",
    "PolicyEngine",
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyLoadError",
    "RedactionError",
    "apply_redactions",
    "create_engine",
    "deny_decision",
    "load_bundle",
    "merge_data",
    "normalize_decision",
    "run_policy_tests",
]
