"""DuckDB schema of the audit database: table ``decisions``, ``meta``, views.

The ``decisions`` columns follow docs/contracts.md ("Audit record"). Schema
creation is idempotent and versioned: ``meta.schema_version`` records the
version written; a newer mcpfw adds its columns with
``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` and bumps the version, so old
files keep working and old writers keep inserting (they insert by column name).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import duckdb

SCHEMA_VERSION: Final = 3


class Column(NamedTuple):
    """One column of ``decisions``."""

    name: str
    type: str
    description: str


COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts", "TIMESTAMPTZ", "when the decision was made (microsecond precision)"),
    Column("decision_id", "VARCHAR", "uuid7-like id, sortable by time"),
    Column("direction", "VARCHAR", "client_to_server | server_to_client"),
    Column("kind", "VARCHAR", "request | notification | response | error_response"),
    Column("method", "VARCHAR", "JSON-RPC method (for responses: of the request answered)"),
    Column("tool", "VARCHAR", "tool name for tools/call requests and their responses"),
    Column("server", "VARCHAR", "configured MCP server name"),
    Column("session_id", "VARCHAR", "firewall session id"),
    Column("transport", "VARCHAR", "stdio | http | sse | websocket"),
    Column("protocol_era", "VARCHAR", "MCP protocol era"),
    Column("protocol_version", "VARCHAR", "negotiated MCP protocol version"),
    Column("client_name", "VARCHAR", "clientInfo.name of the MCP client"),
    Column("message_id", "VARCHAR", "JSON text of the JSON-RPC id"),
    Column("args_digest", "VARCHAR", "sha256 hex of the canonical JSON of the unredacted arguments/params"),
    Column("arguments", "JSON", "arguments/params with secrets redacted"),
    Column("decision", "VARCHAR", "allow | deny | redact"),
    Column("reasons", "JSON", "[{code, message}] of the decision"),
    Column("reason_codes", "VARCHAR[]", "the reason codes alone, for filtering"),
    Column("error_code", "INTEGER", "JSON-RPC error code returned to the sender, if any"),
    Column("engine", "VARCHAR", "policy engine that decided"),
    Column("bundle_digest", "VARCHAR", "digest of the policy bundle"),
    Column("eval_ms", "DOUBLE", "policy evaluation time in milliseconds"),
    Column("bytes", "INTEGER", "size of the inspected message in bytes"),
    Column("findings", "JSON", "detector findings keyed by detector name"),
    Column("tags", "VARCHAR[]", "tags added by obligations"),
    Column("error", "VARCHAR", "engine or parse error text"),
    Column("tenant", "VARCHAR", "identity: tenant"),
    Column("subject", "VARCHAR", "identity: subject"),
    Column("key_id", "VARCHAR", "identity: API key id"),
    Column("auth_method", "VARCHAR", "identity: authentication method"),
    Column("rate", "JSON", "rate-limit counters the policy saw (input.rate), including counter-store errors"),
    Column("upstream_ms", "DOUBLE", "responses: milliseconds from forwarding the request to its answer"),
    Column("policy_input", "JSON", "the policy input as evaluated, secrets redacted (audit.record_inputs; for mcpfw policy replay)"),
)

COLUMN_NAMES: Final[tuple[str, ...]] = tuple(c.name for c in COLUMNS)
JSON_COLUMNS: Final = frozenset(c.name for c in COLUMNS if c.type == "JSON")
LIST_COLUMNS: Final = frozenset(c.name for c in COLUMNS if c.type.endswith("[]"))


class View(NamedTuple):
    """A documented view of the audit database."""

    description: str
    sql: str


VIEWS: Final[dict[str, View]] = {
    "decisions_per_tool": View(
        "per tool and server: calls (tools/call requests), messages inspected, "
        "allowed/denied/redacted messages (requests and responses), p50/p95 eval_ms, first/last seen",
        """
        SELECT tool,
               server,
               count(*) FILTER (WHERE kind = 'request') AS calls,
               count(*) AS messages,
               count(*) FILTER (WHERE decision = 'allow') AS allowed,
               count(*) FILTER (WHERE decision = 'deny') AS denied,
               count(*) FILTER (WHERE decision = 'redact') AS redacted,
               round(quantile_cont(eval_ms, 0.5), 3) AS p50_eval_ms,
               round(quantile_cont(eval_ms, 0.95), 3) AS p95_eval_ms,
               min(ts) AS first_seen,
               max(ts) AS last_seen
        FROM decisions
        WHERE tool IS NOT NULL
        GROUP BY tool, server
        ORDER BY calls DESC, messages DESC, tool, server
        """,
    ),
    "denials_by_reason": View(
        "per reason code of denied messages: count, last seen, most recent tool and method",
        """
        SELECT reason_code,
               count(*) AS denials,
               max(ts) AS last_seen,
               arg_max(tool, ts) FILTER (WHERE tool IS NOT NULL) AS example_tool,
               arg_max(method, ts) FILTER (WHERE method IS NOT NULL) AS example_method
        FROM (
            SELECT ts, tool, method,
                   unnest(CASE WHEN len(coalesce(reason_codes, [])) = 0
                               THEN ['(none)'] ELSE reason_codes END) AS reason_code
            FROM decisions
            WHERE decision = 'deny'
        )
        GROUP BY reason_code
        ORDER BY denials DESC, reason_code
        """,
    ),
    "recent_denials": View(
        "the last 100 denied messages, newest first, with reason codes, messages and redacted arguments",
        """
        SELECT ts, decision_id, server, tool, method, direction, kind, reason_codes,
               array_to_string(json_extract_string(reasons, '$[*].message'), '; ') AS reason_messages,
               error_code, arguments, session_id, subject
        FROM decisions
        WHERE decision = 'deny'
        ORDER BY ts DESC, decision_id DESC
        LIMIT 100
        """,
    ),
    "usage_per_server": View(
        "per server: messages, requests, tool calls, distinct tools and sessions, denials, bytes, first/last seen",
        """
        SELECT server,
               count(*) AS messages,
               count(*) FILTER (WHERE kind = 'request') AS requests,
               count(*) FILTER (WHERE kind = 'request' AND method = 'tools/call') AS tool_calls,
               count(DISTINCT tool) AS tools,
               count(DISTINCT session_id) AS sessions,
               count(*) FILTER (WHERE decision = 'deny') AS denied,
               sum(bytes) AS bytes,
               min(ts) AS first_seen,
               max(ts) AS last_seen
        FROM decisions
        GROUP BY server
        ORDER BY messages DESC, server
        """,
    ),
    "usage_per_tenant": View(
        "per tenant: client requests, tool calls, denials, rate-limited calls, request and response bytes, "
        "time spent upstream, distinct subjects and keys: the basis of cost attribution",
        """
        SELECT coalesce(tenant, '(none)') AS tenant,
               count(*) FILTER (WHERE kind = 'request' AND direction = 'client_to_server') AS requests,
               count(*) FILTER (WHERE kind = 'request' AND method = 'tools/call') AS tool_calls,
               count(*) FILTER (WHERE decision = 'deny') AS denied,
               count(*) FILTER (WHERE error_code = -32055) AS rate_limited,
               sum(bytes) FILTER (WHERE direction = 'client_to_server') AS bytes_in,
               sum(bytes) FILTER (WHERE direction = 'server_to_client') AS bytes_out,
               round(sum(upstream_ms) FILTER (WHERE direction = 'server_to_client'), 3) AS upstream_ms,
               count(DISTINCT subject) AS subjects,
               count(DISTINCT key_id) AS keys,
               min(ts) AS first_seen,
               max(ts) AS last_seen
        FROM decisions
        GROUP BY 1
        ORDER BY requests DESC, tenant
        """,
    ),
    "usage_per_key": View(
        "per tenant, subject and API key: requests, tool calls, denials, bytes and upstream time",
        """
        SELECT coalesce(tenant, '(none)') AS tenant,
               subject,
               key_id,
               any_value(auth_method) AS auth_method,
               count(*) FILTER (WHERE kind = 'request' AND direction = 'client_to_server') AS requests,
               count(*) FILTER (WHERE kind = 'request' AND method = 'tools/call') AS tool_calls,
               count(*) FILTER (WHERE decision = 'deny') AS denied,
               count(*) FILTER (WHERE error_code = -32055) AS rate_limited,
               sum(bytes) FILTER (WHERE direction = 'client_to_server') AS bytes_in,
               sum(bytes) FILTER (WHERE direction = 'server_to_client') AS bytes_out,
               round(sum(upstream_ms) FILTER (WHERE direction = 'server_to_client'), 3) AS upstream_ms,
               max(ts) AS last_seen
        FROM decisions
        WHERE subject IS NOT NULL OR key_id IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY requests DESC, tenant, subject, key_id
        """,
    ),
}
"""Views by name: what ``mcpfw audit views`` lists. Bump ``SCHEMA_VERSION``
when one changes so existing files get the new definition."""


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version recorded in the current database, None if absent."""
    # Probing the catalog rather than catching the error keeps an open
    # transaction usable (a failed statement aborts it).
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = 'meta'"
    ).fetchone()
    if not exists or not exists[0]:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create or upgrade the schema in the connection's current database.

    Idempotent; a no-op (one query) once the file is at this version or newer.
    The caller should run it inside a transaction.
    """
    found = schema_version(con)
    if found is not None and found >= SCHEMA_VERSION:
        return
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    columns = ", ".join(f"{c.name} {c.type}" for c in COLUMNS)
    con.execute(f"CREATE TABLE IF NOT EXISTS decisions ({columns})")
    # Files created by an older version get the columns added since.
    for column in COLUMNS:
        con.execute(f"ALTER TABLE decisions ADD COLUMN IF NOT EXISTS {column.name} {column.type}")
    table_comment = _sql_string("mcpfw audit log: one row per firewall decision")
    con.execute(f"COMMENT ON TABLE decisions IS {table_comment}")
    for column in COLUMNS:
        con.execute(f"COMMENT ON COLUMN decisions.{column.name} IS {_sql_string(column.description)}")
    for name, view in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {view.sql}")
        con.execute(f"COMMENT ON VIEW {name} IS {_sql_string(view.description)}")
    con.execute(
        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
    )
