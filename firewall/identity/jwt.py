"""OAuth 2.1 bearer tokens: the firewall as a resource server checks a JWT against its issuer's keys.

:class:`JwtVerifier` turns a signed access token into an :class:`~firewall.identity.Identity`
or refuses it with ``AuthError(401, "invalid_token", ...)``. The cryptography (JWK import,
JWS signature check) is joserfc's; this module decides *which* key and algorithm may be used
and checks the claims (RFC 7519, RFC 9068, the MCP authorization spec):

* the header's ``alg`` must be one the configuration allows; ``none`` and the HMAC family
  are never accepted (the firewall shares no secret with the issuer, so an ``HS256`` token
  "signed" with the issuer's public key must not verify);
* the key is picked by ``kid`` from the issuer's JWKS and must suit the algorithm;
* ``iss`` must equal the configured issuer, ``aud`` must name this resource, ``exp`` must be
  present and in the future, ``nbf``/``iat`` must not be in the future (with leeway), and the
  subject claim must be present and must not start with ``key:`` (API keys' subjects).

Keys come from a JWKS file (re-read when it changes), a JWKS URL, or the URL that
discovery at the issuer names (OpenID Connect discovery, then RFC 8414 metadata). Imported
keys are cached; an unknown ``kid`` refetches the set at most once per
``jwks_refresh_min_seconds``, concurrent refetches collapse into one, and a set older than
``jwks_cache_seconds`` is refreshed in a background thread while the old keys keep working.
A token whose key is cached is verified without any I/O.

Refusal descriptions name the failed check and never contain any part of the token.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from joserfc import jwk, jws
from joserfc.errors import JoseError
from joserfc.util import urlsafe_b64decode

from ..config import REFUSED_JWT_ALGORITHMS, JwtConfig
from . import API_KEY_SUBJECT_PREFIX, AuthError, Identity

log = logging.getLogger("mcpfw.auth")

MAX_TOKEN_BYTES = 32 * 1024
"""Longer bearer tokens are refused before any decoding."""

MAX_JWKS_BYTES = 1024 * 1024
"""Largest JWKS or discovery document read from the network."""

MAX_JWKS_KEYS = 64
"""Keys beyond this many in one JWKS are ignored (each is imported, and kid-less tokens try them)."""

MIN_RSA_BITS = 2048

FILE_CHECK_SECONDS = 1.0
"""How often the hot path looks at a JWKS file's modification time."""

_NEVER_ALLOWED = REFUSED_JWT_ALGORITHMS
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_REFUSED_HEADERS = ("crit", "b64")  # extensions this verifier does not implement (RFC 7515 4.1.11, RFC 7797)


def _refuse(description: str) -> AuthError:
    return AuthError(401, "invalid_token", description)


class KeySourceError(Exception):
    """The JWKS (or the discovery document that names it) could not be loaded."""


@dataclass(frozen=True, slots=True)
class _KeySet:
    """One imported JWKS: keys by ``kid``, and per algorithm the keys a kid-less token may try."""

    by_kid: dict[str, tuple[Any, frozenset[str]]]
    by_alg: dict[str, tuple[Any, ...]]
    size: int

    def candidates(self, kid: str | None, alg: str) -> tuple[Any, ...] | None:
        """Keys to try: None when the set has no key for this kid (or, without kid, this alg)."""
        if kid is None:
            return self.by_alg.get(alg)
        found = self.by_kid.get(kid)
        if found is None:
            return None
        key, algs = found
        return (key,) if alg in algs else ()


class JwtVerifier:
    """Verifies OAuth 2.1 access tokens (JWTs) from the configured issuer.

    ``clock`` (monotonic seconds) paces cache expiry and refetches; tests replace it.
    Construction reads a configured JWKS file (raising ``ValueError`` when it is unusable)
    but does not touch the network: the first token fetches the keys.
    """

    def __init__(self, config: JwtConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._issuer = config.issuer
        self._fixed_audience = frozenset(config.audience)
        self._leeway = float(config.leeway_seconds)
        self._algorithms = _allowed_algorithms(config.algorithms)
        self._subject_claim = config.subject_claim
        self._tenant_claim = config.tenant_claim
        self._roles_claim = config.roles_claim
        self._scope_claims = tuple(config.scope_claims)
        self._copied_claims = tuple(config.claims)
        self._default_tenant = config.default_tenant
        self._registry = jws.JWSRegistry(algorithms=list(self._algorithms), strict_check_header=False)
        # instance limits instead of joserfc's defaults (512-byte headers refuse some IdPs' x5t/x5c headers)
        self._registry.max_header_length = 8 * 1024
        self._registry.max_payload_length = MAX_TOKEN_BYTES
        self._registry.max_signature_length = 2 * 1024

        self._lock = threading.Lock()  # held while loading keys; one load at a time
        self._keys: _KeySet | None = None
        self._loaded_at = 0.0  # clock() of the last successful load
        self._attempted_at: float | None = None  # clock() of the last load attempt, successful or not
        self._generation = 0  # load attempts so far
        self._background: threading.Thread | None = None
        self._discovered_jwks_uri: str | None = None
        self._file: Path | None = Path(config.jwks_file) if config.jwks_file is not None else None
        self._file_signature: tuple[int, int, int] | None = None
        self._file_checked_at = 0.0
        self.fetches = 0
        """Network loads attempted (discovery included in each); for tests and metrics."""

        if self._file is not None:
            try:
                self._load_file()
            except KeySourceError as exc:
                raise ValueError(f"auth.jwt.jwks_file: {exc}") from None

    # -- the hot path -------------------------------------------------------------------

    def verify(self, token: str, audiences: Sequence[str]) -> Identity:
        """The identity this token proves, or ``AuthError(401, "invalid_token", ...)``.

        ``audiences`` are the accepted ``aud`` values (the resource URLs of the route);
        a non-empty ``config.audience`` replaces them.
        """
        if not isinstance(token, str):
            raise _refuse("malformed token")
        if len(token) > MAX_TOKEN_BYTES:
            raise _refuse("token too large")
        if token.count(".") != 2:
            raise _refuse("malformed token")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
            segments = obj.segments
            signing_input = segments["header"] + b"." + segments["payload"]
            signature = urlsafe_b64decode(segments["signature"])
        except (JoseError, ValueError, TypeError, RecursionError):  # every decoding failure is one refusal
            raise _refuse("malformed token") from None
        if not isinstance(header, dict):
            raise _refuse("malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _refuse("token algorithm not allowed")
        if any(name in header for name in _REFUSED_HEADERS):
            raise _refuse("unsupported token header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("malformed token")

        algorithm = self._algorithms[alg]
        for key in self._keys_for(kid, alg):
            try:
                if algorithm.verify(signing_input, signature, key):
                    break
            except (JoseError, ValueError, TypeError):  # a key the signature cannot even be checked with
                pass
        else:
            raise _refuse("bad signature")

        try:
            claims = orjson.loads(obj.payload)
        except orjson.JSONDecodeError:
            raise _refuse("malformed token") from None
        if not isinstance(claims, dict):
            raise _refuse("malformed token")
        return self._identity(claims, audiences)

    def _identity(self, claims: dict[str, Any], audiences: Sequence[str]) -> Identity:
        iss = claims.get("iss")
        if iss is None:
            raise _refuse("token has no issuer")
        if iss != self._issuer:
            raise _refuse("wrong issuer")

        aud = claims.get("aud")
        if aud is None:
            raise _refuse("token has no audience")
        accepted = self._fixed_audience or ((audiences,) if isinstance(audiences, str) else audiences)
        if isinstance(aud, str):
            if aud not in accepted:
                raise _refuse("wrong audience")
        elif not isinstance(aud, list) or not any(isinstance(a, str) and a in accepted for a in aud):
            raise _refuse("wrong audience")

        now = time.time()
        exp = claims.get("exp")
        if exp is None:
            raise _refuse("token has no expiry")
        if not _is_time(exp):
            raise _refuse("malformed claim: exp")
        if now > exp + self._leeway:
            raise _refuse("token expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_time(nbf):
                raise _refuse("malformed claim: nbf")
            if now + self._leeway < nbf:
                raise _refuse("token not yet valid")
        iat = claims.get("iat")
        if iat is not None:
            if not _is_time(iat):
                raise _refuse("malformed claim: iat")
            if now + self._leeway < iat:
                raise _refuse("token issued in the future")

        subject = _identifier(_claim(claims, self._subject_claim), self._subject_claim)
        if subject is None:
            raise _refuse("token has no subject")
        if subject.startswith(API_KEY_SUBJECT_PREFIX):
            raise _refuse(f"token subject uses the prefix {API_KEY_SUBJECT_PREFIX!r} reserved for API keys")
        tenant = _identifier(_claim(claims, self._tenant_claim), self._tenant_claim) or self._default_tenant
        if tenant is None:
            raise _refuse("token names no tenant")

        roles = _words(_claim(claims, self._roles_claim), "roles")
        scopes: tuple[str, ...] = ()
        for name in self._scope_claims:
            value = claims.get(name)
            if value is not None:
                scopes = _words(value, name)
                break
        copied = {name: claims[name] for name in self._copied_claims if name in claims}
        return Identity(
            subject=subject,
            tenant=tenant,
            auth_method="jwt",
            roles=roles,
            scopes=scopes,
            claims=copied,
            expires_at=float(exp),
        )

    def _keys_for(self, kid: str | None, alg: str) -> tuple[Any, ...]:
        """The imported keys to check a token's signature with (cached; loads only when needed)."""
        keys = self._current_keys()
        found = keys.candidates(kid, alg) if keys is not None else None
        if found is None:
            # no keys yet, or a kid (kid-less: an algorithm) the set does not know: maybe the
            # issuer rotated; reload, at most once per refresh interval
            keys = self._reload_for_unknown()
            if keys is None:
                raise _refuse("signing keys unavailable")
            found = keys.candidates(kid, alg)
            if found is None:
                raise _refuse("unknown signing key")
        if not found:
            raise _refuse("signing key does not match the token algorithm")
        return found

    def _current_keys(self) -> _KeySet | None:
        keys = self._keys
        if self._file is not None:
            if self._clock() - self._file_checked_at >= FILE_CHECK_SECONDS:
                self._check_file()
                keys = self._keys
        elif keys is not None and self._clock() - self._loaded_at >= self.config.jwks_cache_seconds:
            self._refresh_in_background()
        return keys

    # -- loading keys ---------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load the keys now (blocking), unless a load happened within the refresh interval.

        Returns whether keys are available afterwards. Startup code may call this to warm
        the cache; a failure only logs (the old keys, if any, stay in use).
        """
        if self._file is not None:
            self._check_file()
            return self._keys is not None
        return self._reload(self.config.jwks_refresh_min_seconds) is not None

    def _reload_for_unknown(self) -> _KeySet | None:
        if self._file is not None:
            self._check_file()
            return self._keys
        return self._reload(self.config.jwks_refresh_min_seconds)

    def _reload(self, min_interval: float) -> _KeySet | None:
        """Load the JWKS from the network unless one was tried within ``min_interval`` seconds.

        Callers that queued on the lock while another thread loaded take that result
        instead of loading again: a burst of unknown kids costs at most one fetch.
        """
        generation = self._generation
        with self._lock:
            if self._generation != generation:
                return self._keys
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < min_interval:
                return self._keys
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = self._fetch_keys()
            except KeySourceError as exc:
                log.warning("JWKS for issuer %s unavailable, %s: %s", self._issuer,
                            "keeping the cached keys" if self._keys is not None else "no keys cached", exc)
                return self._keys
            else:
                self._keys = keys
                self._loaded_at = self._clock()
                return keys
            finally:
                self._generation += 1  # after the load: threads queued behind it take its result

    def _refresh_in_background(self) -> None:
        """Refresh an expired key set off the request path; the old keys serve meanwhile."""
        if self._lock.locked():
            return
        attempted = self._attempted_at
        pace = max(self.config.jwks_refresh_min_seconds, 1.0)
        if attempted is not None and self._clock() - attempted < pace:
            return
        current = self._background
        if current is not None and current.is_alive():
            return
        thread = threading.Thread(target=self._reload, args=(pace,), name="mcpfw-jwks-refresh", daemon=True)
        self._background = thread
        thread.start()

    def _fetch_keys(self) -> _KeySet:
        timeout = self.config.fetch_timeout_seconds
        url = self.config.jwks_url
        if url is None:
            url = self._discovered_jwks_uri or self._discover()
        try:
            doc = _get_json(url, timeout)
        except KeySourceError:
            self._discovered_jwks_uri = None  # rediscover next time: the issuer may have moved its JWKS
            raise
        keys = _import_jwks(doc, self._algorithms)
        self._discovered_jwks_uri = url if self.config.jwks_url is None else None
        return keys

    def _discover(self) -> str:
        """The ``jwks_uri`` from the issuer's metadata (OIDC discovery, then RFC 8414)."""
        timeout = self.config.fetch_timeout_seconds
        problems = []
        for url in discovery_urls(self._issuer):
            try:
                doc = _get_json(url, timeout)
            except KeySourceError as exc:
                problems.append(str(exc))
                continue
            if doc.get("issuer") != self._issuer:
                problems.append(f"{url}: names a different issuer")
                continue
            jwks_uri = doc.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not _acceptable_jwks_uri(jwks_uri, self._issuer):
                problems.append(f"{url}: no usable jwks_uri")
                continue
            return jwks_uri
        raise KeySourceError("discovery failed: " + "; ".join(problems))

    def _check_file(self) -> None:
        """Re-read the JWKS file if it changed since the last read (keeping the old keys if it broke)."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is reading it right now
        try:
            self._file_checked_at = self._clock()
            try:
                self._load_file()
            except KeySourceError as exc:
                log.warning("JWKS file unusable, keeping the keys read before: %s", exc)
        finally:
            self._lock.release()

    def _load_file(self) -> None:
        assert self._file is not None
        try:
            stat = self._file.stat()
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature == self._file_signature and self._keys is not None:
                return
            data = self._file.read_bytes()
        except OSError as exc:
            raise KeySourceError(f"{self._file}: {exc.strerror or exc}") from None
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise KeySourceError(f"{self._file}: not JSON") from None
        self._keys = _import_jwks(doc, self._algorithms, where=str(self._file))
        self._file_signature = signature
        self._loaded_at = self._clock()


# -- helpers ---------------------------------------------------------------------------------


def _allowed_algorithms(names: Sequence[str]) -> dict[str, Any]:
    """joserfc's algorithm objects for the configured names; HMAC and ``none`` are refused."""
    out: dict[str, Any] = {}
    for name in names:
        if name in _NEVER_ALLOWED:
            raise ValueError(
                f"auth.jwt.algorithms: {name} is not allowed (the firewall holds no shared secret; "
                "use an asymmetric algorithm such as RS256 or ES256)"
            )
        model = jws.JWSRegistry.algorithms.get(name)
        if model is None:
            raise ValueError(f"auth.jwt.algorithms: unknown JWS algorithm {name!r}")
        out[name] = model
    if not out:
        raise ValueError("auth.jwt.algorithms: no algorithm allowed")
    return out


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: OIDC discovery (appended to the issuer), then
    RFC 8414 (``/.well-known/oauth-authorization-server`` inserted before the issuer's path),
    then OIDC discovery with the path inserted the same way."""
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [
        issuer.rstrip("/") + "/.well-known/openid-configuration",
        origin + "/.well-known/oauth-authorization-server" + path,
        origin + "/.well-known/openid-configuration" + path,
    ]
    return list(dict.fromkeys(urls))


def _acceptable_jwks_uri(uri: str, issuer: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme == "https" or (scheme == "http" and urlsplit(issuer).scheme == "http")


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object, within ``timeout`` seconds overall and ``MAX_JWKS_BYTES``."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise KeySourceError(f"{url}: not an http(s) URL")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "mcpfw"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                raise KeySourceError(f"{url}: HTTP {response.status}")
            chunks = []
            size = 0
            while chunk := response.read(65536):
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise KeySourceError(f"{url}: document larger than {MAX_JWKS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise KeySourceError(f"{url}: timed out")
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        raise KeySourceError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KeySourceError(f"{url}: {reason}") from None
    try:
        doc = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise KeySourceError(f"{url}: not JSON") from None
    if not isinstance(doc, dict):
        raise KeySourceError(f"{url}: not a JSON object")
    return doc


def _import_jwks(doc: Any, algorithms: dict[str, Any], *, where: str = "JWKS") -> _KeySet:
    """Import the signature keys of a JWKS once; keys that cannot serve any allowed algorithm are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySourceError(f"{where}: not a JWKS (no keys list)")
    by_kid: dict[str, tuple[Any, frozenset[str]]] = {}
    with_kid: dict[str, list[Any]] = {}
    without_kid: dict[str, list[Any]] = {}
    skipped = 0
    for entry in doc["keys"][:MAX_JWKS_KEYS]:
        key, algs = _import_key(entry, algorithms)
        if key is None:
            skipped += 1
            continue
        kid = entry.get("kid")
        if isinstance(kid, str) and kid:
            if kid in by_kid:
                skipped += 1  # ambiguous: the first key with this kid wins
                continue
            by_kid[kid] = (key, algs)
            target = with_kid
        else:
            target = without_kid
        for alg in algs:
            target.setdefault(alg, []).append(key)
    # a token without kid tries kid-less keys first, then the others of its algorithm
    by_alg = {alg: tuple(without_kid.get(alg, []) + with_kid.get(alg, [])) for alg in algorithms}
    by_alg = {alg: keys for alg, keys in by_alg.items() if keys}
    size = min(len(doc["keys"]), MAX_JWKS_KEYS) - skipped
    if len(doc["keys"]) > MAX_JWKS_KEYS:
        log.warning("%s: %d keys, only the first %d are used", where, len(doc["keys"]), MAX_JWKS_KEYS)
    if skipped:
        log.info("%s: %d key(s) skipped (not signature keys of an allowed algorithm)", where, skipped)
    if size == 0:
        log.warning("%s: no usable signing keys", where)
    return _KeySet(by_kid=by_kid, by_alg=by_alg, size=size)


def _import_key(entry: Any, algorithms: dict[str, Any]) -> tuple[Any, frozenset[str]]:
    """One JWK's public half and the allowed algorithms it can verify, or (None, {})."""
    none: tuple[Any, frozenset[str]] = (None, frozenset())
    if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
        return none  # oct keys never: the firewall verifies signatures, it shares no secrets
    if entry.get("use", "sig") != "sig":
        return none
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return none
    public = {name: value for name, value in entry.items() if name not in _PRIVATE_MEMBERS}
    public.pop("key_ops", None)  # checked above; joserfc would refuse "verify" on a public key import otherwise
    try:
        key = jwk.import_key(public)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        log.info("JWKS key skipped: %s", exc)
        return none
    if entry["kty"] == "RSA" and key.public_key.key_size < MIN_RSA_BITS:
        return none
    algs = [name for name, model in algorithms.items() if _suits(model, key)]
    return (key, frozenset(algs)) if algs else none


def _suits(model: Any, key: Any) -> bool:
    try:
        model.check_key(key)
    except JoseError:
        return False
    return True


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name; a dotted name not present as such reaches into nested objects
    (``realm_access.roles``)."""
    value = claims.get(name)
    if value is not None or "." not in name:
        return value
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _identifier(value: Any, name: str) -> str | None:
    """A subject or tenant claim: a non-empty string (or an integer); None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _refuse(f"malformed claim: {name}")


def _words(value: Any, name: str) -> tuple[str, ...]:
    """A roles or scope claim: a space-separated string or a list of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _refuse(f"malformed claim: {name}")


__all__ = ["JwtVerifier", "KeySourceError", "discovery_urls"]
