"""API keys for programmatic MCP clients, kept in a small SQLite database.

A key looks like ``mcpfw_<key id>_<secret>``:

* the key id is 12 random hex digits. It is public: it names the key in ``mcpfw keys``
  output and in the audit log;
* the secret is 32 random bytes from :mod:`secrets`, base64url-encoded without padding
  (43 characters). It is shown once, when the key is created, and never stored.

Per key the database holds a random 16-byte salt and ``SHA-256(salt || secret)``, where
``secret`` is the 43 ASCII characters as presented. It also holds the key's tenant,
name, subject, scopes, roles and its creation, expiry and revocation times.

Why a fast hash is right here: a slow password hash (scrypt, Argon2, bcrypt) exists to
make guessing expensive when the secret is a human password drawn from a small,
predictable space. These secrets are 256 bits from a CSPRNG. Nobody can enumerate that
space however fast the hash is, so a stolen database gives an attacker nothing to crack.
A slow hash would add milliseconds of CPU to every request and buy no security. The salt
makes each stored digest unique even in theory, so digests cannot be compared across
stores or looked up in precomputed tables.

Verification runs for every HTTP request, so verified keys are cached in memory by key id.
Before each lookup the store reads ``PRAGMA data_version``. This cheap read changes when
another connection (another process, such as ``mcpfw keys revoke``) has committed to the
database. When it changes, the cache is dropped, so a revocation takes effect for the
very next request.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import ApiKeysConfig
from ..paths import state_dir
from ..private_db import open_private_db
from . import API_KEY_SUBJECT_PREFIX, AuthError, Identity

KEY_PREFIX = "mcpfw_"
KEY_ID_HEX = 12  # digits of the public key id (48 random bits)
SECRET_BYTES = 32
SALT_BYTES = 16
_SECRET_CHARS = 43  # base64url of 32 bytes, no padding
_MAX_PRESENTED = len(KEY_PREFIX) + KEY_ID_HEX + 1 + _SECRET_CHARS
_KEY_RE = re.compile(rf"mcpfw_([0-9a-f]{{{KEY_ID_HEX}}})_([A-Za-z0-9_-]{{{_SECRET_CHARS}}})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_TOKEN_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 scope-token, minus ','
_NEGATIVE_CACHE_MAX = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    subject    TEXT,
    scopes     TEXT NOT NULL,   -- JSON array
    roles      TEXT NOT NULL,   -- JSON array
    salt       BLOB NOT NULL,
    digest     BLOB NOT NULL,   -- SHA-256(salt || secret)
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    UNIQUE (tenant, name)
) WITHOUT ROWID;
"""
_COLUMNS = "key_id, tenant, name, subject, scopes, roles, created_at, expires_at, revoked_at"


_OPEN_STORES: weakref.WeakSet[KeyStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A SQLite connection must not cross fork(): a child opens its own on first use.
    for store in builtins.list(_OPEN_STORES):
        store._forget_connection()


os.register_at_fork(after_in_child=_after_fork_in_child)


class KeyStoreError(Exception):
    """The key store cannot be opened or written, or a request to it is invalid."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known about a key, without its secret or digest."""

    key_id: str
    tenant: str
    name: str
    subject: str | None
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    @property
    def effective_subject(self) -> str:
        """The subject the key authenticates as: its own, else ``key:<name>``."""
        return self.subject or f"{API_KEY_SUBJECT_PREFIX}{self.name}"

    def status(self, now: float | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (time.time() if now is None else now):
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        d["scopes"], d["roles"] = list(self.scopes), list(self.roles)
        return d


@dataclass(frozen=True, slots=True)
class _Entry:
    record: KeyRecord
    salt: bytes
    digest: bytes


def default_key_store(config: ApiKeysConfig) -> Path:
    """The key database: ``auth.api_keys.store``, else ``state_dir()/keys.sqlite``."""
    return Path(config.store).expanduser() if config.store is not None else state_dir() / "keys.sqlite"


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def _invalid(description: str) -> AuthError:
    return AuthError(401, "invalid_token", description)


class KeyStore:
    """API keys in a SQLite file: create, verify, list and revoke them.

    One connection serves every thread, guarded by a lock. The database file is created
    on first use, with mode 0600. Commits use SQLite's default ``synchronous=FULL``, so a
    revocation survives a power loss.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._cache: dict[str, _Entry] = {}
        self._missing: set[str] = set()  # key ids known not to exist (at this data_version)
        _OPEN_STORES.add(self)

    # -- connection ---------------------------------------------------------------------

    def _reset(self) -> None:
        self._conn = None
        self._version = None
        self._cache.clear()
        self._missing.clear()

    def _forget_connection(self) -> None:
        # In a fork child: the parent's connection and lock state are not ours to use.
        self._lock = threading.Lock()
        self._reset()

    def _connect(self) -> sqlite3.Connection:
        """The open connection (call with the lock held); creates the database if needed."""
        if self._conn is not None:
            return self._conn
        try:
            conn = open_private_db(self.path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"{self.path}: cannot open the key store: {_reason(exc)}") from None
        self._conn = conn
        return conn

    def check(self) -> None:
        """Open the database (creating it if needed) and close it again; :class:`KeyStoreError`
        if it cannot be opened. A start-up probe: the process that runs it may not serve."""
        with self._lock:
            self._connect()
        self.close()

    def close(self) -> None:
        """Close the database connection (it reopens on the next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._reset()

    def _sync(self, conn: sqlite3.Connection) -> None:
        """Drop the cache if another connection committed since we last looked (lock held)."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._cache.clear()
            self._missing.clear()
            self._version = version

    # -- the hot path -------------------------------------------------------------------

    def verify(self, presented: str) -> Identity:
        """The identity behind a presented key; :class:`AuthError` (401) if it is not valid.

        Raises :class:`KeyStoreError` if the database itself fails. That is a server
        fault, not the caller's.
        """
        if not isinstance(presented, str) or len(presented) > _MAX_PRESENTED or not presented.isascii():
            raise _invalid("malformed API key")
        m = _KEY_RE.fullmatch(presented)
        if m is None:
            raise _invalid("malformed API key")
        key_id, secret = m.group(1), m.group(2)
        entry = self._lookup(key_id)
        if entry is None or not hmac.compare_digest(_digest(entry.salt, secret), entry.digest):
            raise _invalid(f"API key {key_id} is not valid")
        record = entry.record
        if record.revoked_at is not None:
            raise _invalid(f"API key {key_id} has been revoked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise _invalid(f"API key {key_id} has expired")
        return Identity(
            subject=record.effective_subject,
            tenant=record.tenant,
            auth_method="api_key",
            roles=record.roles,
            scopes=record.scopes,
            key_id=key_id,
            expires_at=record.expires_at,
        )

    def _lookup(self, key_id: str) -> _Entry | None:
        with self._lock:
            try:
                conn = self._connect()
                self._sync(conn)
                entry = self._cache.get(key_id)
                if entry is not None or key_id in self._missing:
                    return entry
                row = conn.execute(f"SELECT {_COLUMNS}, salt, digest FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            except sqlite3.Error as exc:
                raise KeyStoreError(f"{self.path}: key store read failed: {_reason(exc)}") from None
            if row is None:
                if len(self._missing) >= _NEGATIVE_CACHE_MAX:
                    self._missing.clear()
                self._missing.add(key_id)
                return None
            entry = self._cache[key_id] = _Entry(_record(row), bytes(row[9]), bytes(row[10]))
            return entry

    # -- administration -----------------------------------------------------------------

    def create(
        self,
        tenant: str,
        name: str,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        expires_at: float | None = None,
        subject: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the full key string, which is never available again.

        Raises :class:`KeyStoreError` for an invalid tenant, name, subject, scope or role,
        for a name the tenant already uses, or when the database cannot be written.
        """
        _check(_NAME_RE, tenant, "tenant")
        _check(_NAME_RE, name, "key name")
        scopes, roles = _tokens(scopes, "scope"), _tokens(roles, "role")
        if subject is not None and (not subject or len(subject) > 256 or not subject.isprintable()):
            raise KeyStoreError("invalid subject: 1 to 256 printable characters")
        if expires_at is not None and not (isinstance(expires_at, int | float) and math.isfinite(expires_at)):
            raise KeyStoreError("invalid expiry time")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        salt = secrets.token_bytes(SALT_BYTES)
        created_at = time.time()
        with self._lock:
            conn = self._connect()
            for _ in range(5):
                key_id = secrets.token_hex(KEY_ID_HEX // 2)
                try:
                    with _transaction(conn):
                        if conn.execute("SELECT 1 FROM api_keys WHERE tenant = ? AND name = ?", (tenant, name)).fetchone():
                            raise KeyStoreError(f"tenant {tenant} already has a key named {name}")
                        conn.execute(
                            "INSERT INTO api_keys (key_id, tenant, name, subject, scopes, roles, salt, digest,"
                            " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (key_id, tenant, name, subject, _json(scopes), _json(roles), salt,
                             _digest(salt, secret), created_at, expires_at),
                        )
                    break
                except sqlite3.IntegrityError:
                    continue  # a key id collision: draw another
                except sqlite3.Error as exc:
                    raise KeyStoreError(f"{self.path}: cannot write the key store: {_reason(exc)}") from None
            else:
                raise KeyStoreError(f"{self.path}: could not allocate a key id")
            self._missing.discard(key_id)
        record = KeyRecord(key_id, tenant, name, subject, scopes, roles, created_at, expires_at, None)
        return record, f"{KEY_PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        """The record of one key, or None."""
        with self._lock:
            row = self._read(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        return _record(row[0]) if row else None

    def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        """Every key (of one tenant), oldest first; records only, never secrets or digests."""
        query, params = f"SELECT {_COLUMNS} FROM api_keys", ()
        if tenant is not None:
            query, params = query + " WHERE tenant = ?", (tenant,)
        with self._lock:
            found = self._read(query + " ORDER BY created_at, key_id", params)
        return [_record(row) for row in found]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key. Revoking twice keeps the first time."""
        with self._lock:
            conn = self._connect()
            try:
                with _transaction(conn):
                    exists = conn.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone() is not None
                    conn.execute(
                        "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id)
                    )
            except sqlite3.Error as exc:
                raise KeyStoreError(f"{self.path}: cannot write the key store: {_reason(exc)}") from None
            # data_version does not move for this connection's own writes.
            self._cache.pop(key_id, None)
        return exists

    def _read(self, query: str, params: tuple[Any, ...]) -> builtins.list[tuple[Any, ...]]:
        conn = self._connect()
        try:
            return conn.execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"{self.path}: key store read failed: {_reason(exc)}") from None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(
        key_id=row[0], tenant=row[1], name=row[2], subject=row[3],
        scopes=tuple(orjson.loads(row[4])), roles=tuple(orjson.loads(row[5])),
        created_at=row[6], expires_at=row[7], revoked_at=row[8],
    )


def _json(values: tuple[str, ...]) -> str:
    return orjson.dumps(list(values)).decode()


def _check(pattern: re.Pattern[str], value: Any, what: str) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise KeyStoreError(
            f"invalid {what} {value!r}: 1 to 128 of letters, digits and _ . : @ -, starting with a letter or digit"
        )


def _tokens(values: Any, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise KeyStoreError(f"{what}s must be a list, not a string")
    out: builtins.list[str] = []
    for v in values:
        if not isinstance(v, str) or _TOKEN_RE.fullmatch(v) is None:
            raise KeyStoreError(f"invalid {what} {v!r}: printable ASCII without spaces, quotes, backslashes or commas")
        if v not in out:
            out.append(v)
    return tuple(out)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


__all__ = ["KEY_PREFIX", "KeyRecord", "KeyStore", "KeyStoreError", "default_key_store"]
