"""Who is calling: identities from OAuth bearer tokens (JWTs) and API keys.

:class:`Identity` is what the policy sees as ``input.identity`` and what the audit log
records (tenant, subject, key id, auth method). :class:`AuthError` carries the HTTP
status and the ``WWW-Authenticate`` challenge parameters of a refused credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


API_KEY_SUBJECT_PREFIX = "key:"
"""An API key's default subject is ``key:<name>``; a bearer token's subject may not start so,
or it would own the sessions and tasks of the key with that name in its tenant."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    subject: str | None
    tenant: str | None
    auth_method: str  # "jwt" | "api_key"
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    key_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)  # claims that config selects, for the policy
    expires_at: float | None = None  # epoch seconds

    def as_input(self) -> dict[str, Any]:
        """The ``identity`` field of the policy input (and the audit row's identity columns)."""
        return {
            "subject": self.subject,
            "tenant": self.tenant,
            "roles": list(self.roles),
            "scopes": list(self.scopes),
            "key_id": self.key_id,
            "auth_method": self.auth_method,
            "claims": self.claims,
        }

    @property
    def principal(self) -> tuple[str | None, str | None]:
        """What a session is bound to: the same tenant and subject may use it, nobody else."""
        return (self.tenant, self.subject)


class AuthError(Exception):
    """A request whose credentials are missing, invalid or insufficient.

    ``status`` is 401 (no or bad credentials) or 403 (valid, but not allowed);
    ``error`` is the RFC 6750 error code (``invalid_request``, ``invalid_token``,
    ``insufficient_scope``) or None when no credentials were presented at all.
    The description never contains the credential itself.
    """

    def __init__(self, status: int, error: str | None, description: str, *, scope: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope


__all__ = ["API_KEY_SUBJECT_PREFIX", "AuthError", "Identity"]
