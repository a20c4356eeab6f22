"""Audit log of firewall decisions: DuckDB storage, secret redaction, queries.

Public entry points:

* :class:`AuditLog` - buffered writer (``record``, ``flush``, ``close``,
  ``healthy``, ``accepting``);
* :func:`redact_for_audit`, :func:`redact_text`, :func:`args_digest`,
  :func:`load_secret_rules` - secret handling, reusable by detectors;
* :func:`run_sql`, :func:`list_views` - read-only queries for ``mcpfw audit``.
"""

from firewall.audit.log import AuditLog, AuditUnavailableError
from firewall.audit.store import AuditStats
from firewall.audit.query import list_views, run_sql
from firewall.audit.redact import (
    SecretRule,
    SecretRules,
    SecretRulesError,
    args_digest,
    load_secret_rules,
    redact_for_audit,
    redact_text,
)
from firewall.audit.rows import new_decision_id
from firewall.audit.schema import COLUMNS, SCHEMA_VERSION, VIEWS, ensure_schema

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "VIEWS",
    "AuditLog",
    "AuditStats",
    "AuditUnavailableError",
    "SecretRule",
    "SecretRules",
    "SecretRulesError",
    "args_digest",
    "ensure_schema",
    "list_views",
    "load_secret_rules",
    "new_decision_id",
    "redact_for_audit",
    "redact_text",
    "run_sql",
]
