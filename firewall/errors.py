"""JSON-RPC error codes the firewall answers with (documented in the README)."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
POLICY_DENIED = -32051
POLICY_ERROR = -32052
MESSAGE_TOO_LARGE = -32053
AUDIT_UNAVAILABLE = -32054
RATE_LIMITED = -32055
UPSTREAM_UNAVAILABLE = -32056
AUTH_FAILED = -32057  # missing, invalid or insufficient credentials (HTTP 401/403)
SESSION_NOT_FOUND = -32058  # an unknown session, or one that belongs to another caller (HTTP 404)
APPROVAL_REQUIRED = -32059  # the policy holds this call until a person approves it (mcpfw approvals)
