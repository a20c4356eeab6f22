"""Authenticate an HTTP request (or the stdio shim's key) into an :class:`Identity`.

One object per process combines the OAuth bearer-token check (:mod:`.jwt`) and API keys
(:mod:`.apikeys`) under the mode the configuration names:

* ``off``: nobody is identified, credentials pass to the upstream untouched;
* ``optional``: callers that present credentials must present valid ones;
* ``required``: a request without credentials gets 401 and the challenge that points
  the client at the firewall's Protected Resource Metadata (RFC 9728).

When the firewall authenticates, it is the resource server: the client's token is never
passed on to the upstream (the HTTP transports drop :attr:`Authenticator.credential_headers`
and refuse a request with ``access_token`` in its URL query).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

from ..config import AuthConfig, Config, ConfigError
from . import AuthError, Identity

log = logging.getLogger("mcpfw.auth")

_KEY_PREFIX = "mcpfw_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Authenticator:
    """Turns presented credentials into an identity, or refuses them with an :class:`AuthError`."""

    def __init__(self, config: AuthConfig, *, jwt: Any | None = None, keys: Any | None = None) -> None:
        self.config = config
        self.mode = config.mode
        self._jwt = jwt
        self._keys = keys
        self._key_header = config.api_keys.header.lower()
        self._required = frozenset(config.required_scopes)
        servers = list(config.authorization_servers) or ([config.jwt.issuer] if config.jwt else [])
        self._servers = servers

    @property
    def active(self) -> bool:
        return self.mode != "off"

    @property
    def credential_headers(self) -> tuple[str, ...]:
        """Request headers that carry credentials meant for the firewall (never forwarded)."""
        return ("authorization", self._key_header)

    def authenticate(self, authorization: str | None, api_key: str | None, audiences: Sequence[str]) -> Identity | None:
        """The caller behind these headers; None when unidentified and that is allowed.

        ``audiences`` are the resource URLs a token must be issued for.
        """
        identity = self._identify(authorization, api_key, audiences)
        if identity is None:
            if self.mode == "required":
                raise AuthError(401, None, "authentication required")
            return None
        if self._required and not self._required.issubset(identity.scopes):
            missing = " ".join(sorted(self._required - set(identity.scopes)))
            raise AuthError(403, "insufficient_scope", f"the credential lacks scope(s): {missing}",
                            scope=" ".join(sorted(self._required)))
        return identity

    def _identify(self, authorization: str | None, api_key: str | None, audiences: Sequence[str]) -> Identity | None:
        if api_key is not None:
            return self._api_key(api_key.strip())
        if authorization is None:
            return None
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthError(401, "invalid_request", "the Authorization header must be: Bearer <token>")
        credential = credential.strip()
        if credential.startswith(_KEY_PREFIX):
            return self._api_key(credential)
        if self._jwt is None:
            raise AuthError(401, "invalid_token", "bearer tokens are not accepted here (no issuer configured)")
        return self._jwt.verify(credential, audiences)

    def _api_key(self, presented: str) -> Identity:
        if self._keys is None:
            raise AuthError(401, "invalid_token", "API keys are not accepted here")
        from .apikeys import KeyStoreError

        try:
            return self._keys.verify(presented)
        except KeyStoreError as exc:
            # Fail closed and say it is the firewall's fault; the path and OS error are for
            # the operator, not for a caller who has not even been identified.
            log.error("API key store unavailable: %s", exc)
            raise AuthError(503, None, "the API key store is unavailable") from None

    # -- what the firewall says back -------------------------------------------------

    def challenge(self, error: AuthError, metadata_url: str) -> str:
        """The ``WWW-Authenticate`` value for a refused request (RFC 6750, RFC 9728)."""
        parts = [f'resource_metadata="{metadata_url}"']
        if error.error:
            parts.append(f'error="{error.error}"')
            parts.append(f'error_description="{_quoted(error.description)}"')
        if error.scope:
            parts.append(f'scope="{error.scope}"')
        return "Bearer " + ", ".join(parts)

    def metadata(self, resource: str) -> dict[str, Any]:
        """The Protected Resource Metadata document (RFC 9728) for ``resource``."""
        doc: dict[str, Any] = {
            "resource": resource,
            "authorization_servers": self._servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "MCP server behind mcpfw",
        }
        # A scope every request needs is one the resource supports: a client that reads the
        # metadata to pick its scopes must learn of it.
        scopes = list(dict.fromkeys([*self.config.scopes_supported, *self.config.required_scopes]))
        if scopes:
            doc["scopes_supported"] = scopes
        return doc


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def expand_env(value: str, *, where: str) -> str:
    """``${VAR}`` references in a configured header value, from the environment.

    A missing variable is a configuration error: sending a credential with an empty
    piece would fail upstream in a way that is much harder to diagnose.
    """

    def take(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if not found:
            raise ConfigError(f"{where}: environment variable {name} is {'empty' if found == '' else 'not set'}")
        return found

    return _ENV_REF.sub(take, value)


def build_authenticator(config: Config) -> Authenticator:
    """The process's authenticator; its verifiers load keys and stores once, here.

    Settings that can never work raise :class:`ConfigError` naming the setting.
    """
    auth = config.auth
    jwt = keys = None
    if auth.mode != "off":
        if auth.jwt is not None:
            jwt = _jwt_verifier(auth)
            # Warm the key cache off the serving thread: the first request should not wait on the IdP.
            threading.Thread(target=jwt.refresh, name="mcpfw-jwks-warmup", daemon=True).start()
        if auth.api_keys.enabled:
            keys = _key_store(auth, create=True)
        if jwt is None and keys is None:
            raise ConfigError("auth.mode is on but neither auth.jwt nor auth.api_keys is enabled")
    return Authenticator(auth, jwt=jwt, keys=keys)


def check_auth(config: Config, *, create_store: bool = True) -> None:
    """Start-up probe of the identity settings, without the network: the JWKS file and the
    algorithms must be usable and the API key store must open. Raises :class:`ConfigError`.

    ``create_store=False`` (``mcpfw config check``) opens the store only if it exists.
    """
    auth = config.auth
    if auth.mode == "off":
        return
    if auth.jwt is not None:
        _jwt_verifier(auth)
    if auth.api_keys.enabled:
        _key_store(auth, create=create_store)


def _jwt_verifier(auth: AuthConfig) -> Any:
    from .jwt import JwtVerifier

    assert auth.jwt is not None
    try:
        return JwtVerifier(auth.jwt)
    except ValueError as exc:  # its messages name the setting (auth.jwt.jwks_file, auth.jwt.algorithms)
        raise ConfigError(str(exc)) from None


def _key_store(auth: AuthConfig, *, create: bool) -> Any:
    from .apikeys import KeyStore, KeyStoreError, default_key_store

    store = KeyStore(default_key_store(auth.api_keys))
    if create or store.path.exists():
        try:
            store.check()
        except KeyStoreError as exc:
            raise ConfigError(f"auth.api_keys.store: {exc}") from None
    return store


def stdio_identity(config: Config, environ: dict[str, str] | None = None) -> Identity | None:
    """The stdio shim's caller: the API key in the environment or the config, verified once.

    Raises :class:`AuthError` when a key is present but invalid, or when auth is required
    and no key is given.
    """
    auth = config.auth
    if auth.mode == "off":
        return None
    env = os.environ if environ is None else environ
    presented = env.get(auth.api_keys.stdio_env) or auth.api_keys.stdio_key
    if not presented:
        if auth.mode == "required":
            raise AuthError(401, None, f"authentication required: set {auth.api_keys.stdio_env} to an API key")
        return None
    if not auth.api_keys.enabled:
        raise AuthError(401, "invalid_token", "API keys are disabled (auth.api_keys.enabled: false)")
    from .apikeys import KeyStore, default_key_store

    return Authenticator(auth, keys=KeyStore(default_key_store(auth.api_keys))).authenticate(
        None, presented, audiences=()
    )
