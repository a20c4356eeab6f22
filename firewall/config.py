"""The one typed configuration of mcpfw, loaded from YAML and validated with pydantic.

Every field has a default, so no file is needed. Command-line flags override the file
through :func:`Config.with_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .paths import DEFAULT_POLICY_DIR, default_audit_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyConfig(_Strict):
    """Which Rego bundle decides, and with which engine."""

    bundle: Path = Field(default=DEFAULT_POLICY_DIR, description="OPA-style bundle directory")
    engine: Literal["regorus", "opa"] = "regorus"
    data: dict[str, Any] = Field(
        default_factory=dict, description="extra data deep-merged over the bundle's data document"
    )


class AuditConfig(_Strict):
    """Where decisions are recorded and what happens when they cannot be."""

    path: Path = Field(default_factory=default_audit_path)
    # Each batch costs a few milliseconds whatever its size (ATTACH with its WAL replay,
    # COMMIT, checkpoints): at 0.5 s a busy firewall writes a row for 40 us of CPU where
    # 0.2 s and 500-row batches cost 65 (bench/bench_audit.py).
    flush_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 500
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    on_failure: Literal["block", "spill"] = "block"
    spill_path: Path | None = None
    record_inputs: bool = Field(
        default=False,
        description="store each decision's policy input (secrets redacted) in the audit log, "
        "so that `mcpfw policy replay` can judge recorded traffic with another policy",
    )


class LimitsConfig(_Strict):
    """Bounds on what a single message may be; anything beyond is refused."""

    max_message_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_depth: Annotated[int, Field(ge=4, le=1000)] = 64
    max_batch_size: Annotated[int, Field(ge=1)] = 100


class ServerConfig(_Strict):
    """Settings of one upstream MCP server, keyed by its name."""

    roots: list[str] = Field(
        default_factory=list, description="filesystem roots the server's tools may touch"
    )
    registry_mode: Literal["strict", "tofu", "off"] | None = Field(
        default=None, description="tool registry mode for this server (default: registry.mode)"
    )


class RegistryConfig(_Strict):
    """The canonical tool registry: reviewed definitions (a file kept in git) and learned state."""

    file: Path | None = Field(default=None, description="registry file, YAML or JSON (default: MCPFW_HOME/registry.yaml)")
    state: Path | None = Field(
        default=None, description="state learned at run time, shared by firewall processes (default: <file stem>.state.json next to the file)"
    )
    mode: Literal["strict", "tofu", "off"] = Field(
        default="tofu", description="strict: only definitions in the file; tofu: pin the first definition seen; off"
    )


class StdioConfig(_Strict):
    """The stdio shim."""

    server_name: str | None = None
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=600)] = 5.0


class UpstreamConfig(_Strict):
    """One remote MCP server behind ``mcpfw proxy``, and which requests are routed to it."""

    url: str = Field(description="the server's MCP endpoint, e.g. http://127.0.0.1:3001/mcp (http, https, ws or wss)")
    name: str | None = Field(default=None, description="server name in policy input and audit (default: the URL's host)")
    path_prefix: str = Field(
        default="", description="listener path prefix routed here and stripped before forwarding ('' = the same paths as the server)"
    )
    host: str | None = Field(default=None, description="route only requests whose Host header names this host")
    tenants: list[str] = Field(
        default_factory=list, description="tenants whose callers may use this upstream (empty: every tenant; with auth on, only identified callers)"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="headers sent upstream on every request (the firewall's own credentials); ${VAR} reads the environment"
    )
    tenant_headers: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per tenant: headers sent upstream for that tenant's callers, over `headers`; ${VAR} reads the environment"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https", "ws", "wss") or not parsed.hostname:
            raise ValueError(f"not an http(s) or ws(s) URL with a host: {value!r}")
        return value

    @field_validator("path_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class ProxyConfig(_Strict):
    """The HTTP transports (``mcpfw proxy``): Streamable HTTP, legacy HTTP+SSE and WebSocket."""

    mode: Literal["reverse", "regular", "transparent"] = "reverse"
    listener: Literal["auto", "lean", "mitmproxy"] = Field(
        default="auto", description="auto: the lean asyncio listener in reverse mode, mitmproxy otherwise"
    )
    listen: str = Field(default="127.0.0.1:8080", description="HOST:PORT to listen on")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"wants HOST:PORT with a port from 0 to 65535, not {value!r}")
        return value

    workers: Annotated[int, Field(ge=0, le=64)] = Field(
        default=1, description="lean engine processes sharing the port (SO_REUSEPORT); 0 = one per core"
    )
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    public_url: str | None = Field(
        default=None, description="the firewall's URL as clients see it, for OAuth metadata (default: from the Host header)"
    )
    preserve_host: bool = Field(
        default=True, description="reverse mode: forward the client's Host header unchanged (keeps DNS-rebinding checks upstream working)"
    )
    non_mcp: Literal["pass", "deny"] = Field(default="pass", description="regular/transparent modes: what happens to traffic that is not MCP")
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0
    upstream_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=120.0, description="longest wait for the upstream's response headers (and a JSON body)"
    )
    client_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=15.0, description="longest time a client may take to send a request's headers and body"
    )
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] = Field(
        default=300, description="an idle keep-alive connection is closed after this (one with a request in flight, "
        "a stream or a WebSocket open is not idle)")
    max_sessions: Annotated[int, Field(ge=1)] = 10_000
    max_connections: Annotated[int, Field(ge=0)] = Field(
        default=0, description="open client connections per process at most (0: the open-file limit less a reserve)")
    max_connections_per_client: Annotated[int, Field(ge=0)] = Field(
        default=1024, description="open connections from one client address at most (0: no limit; raise it behind a load balancer)")
    confdir: Path | None = Field(default=None, description="mitmproxy's directory (its CA for TLS interception); default MCPFW_HOME/mitmproxy")
    ssl_insecure: bool = Field(default=False, description="mitmproxy: do not verify upstream TLS certificates")
    http2: bool = Field(
        default=False,
        description="mitmproxy: offer HTTP/2 to intercepted TLS clients (off: they speak HTTP/1.1, under every client limit; "
        "mitmproxy gives one HTTP/2 connection at most 5 upstream connections, which a sampling call can exhaust)",
    )


class SecretsDetectorConfig(_Strict):
    """Credentials (rules/secrets.yaml) in arguments, results and server messages."""

    enabled: bool = True


class PiiDetectorConfig(_Strict):
    """Personal data (rules/pii.yaml): emails, cards, IBANs, US SSNs, phone numbers, IP addresses."""

    enabled: bool = True
    rules: list[str] | None = Field(default=None, description="rule ids to run (default: all of rules/pii.yaml)")


class PoisoningDetectorConfig(_Strict):
    """Hidden instructions in tool, prompt and resource definitions (rules/poisoning.yaml)."""

    enabled: bool = True
    classifier: bool = Field(
        default=False,
        description="also score definitions with the injection model (noisy on honest descriptions; needs injection.enabled)",
    )


class InjectionDetectorConfig(_Strict):
    """The prompt-injection classifier on tool arguments, tool results, prompts and resources."""

    enabled: bool = True
    min_chars: Annotated[int, Field(ge=1)] = Field(default=12, description="shorter strings are not scored")
    max_chars: Annotated[int, Field(ge=1000)] = Field(
        default=200_000, description="characters scored per message; the rest is reported as truncated"
    )
    decode: bool = Field(default=True, description="also score base64, hex and URL-encoded segments, decoded")


class IntentPurposeConfig(_Strict):
    """A declared purpose; the fields that are set must all match the session (unset = any)."""

    purpose: str = Field(min_length=3)
    client: str | None = Field(default=None, description="client name (clientInfo.name)")
    key_id: str | None = Field(default=None, description="API key id (identity.key_id)")
    server: str | None = Field(default=None, description="server name")


class IntentDetectorConfig(_Strict):
    """Does a tool call fit the declared task or the client's usual calls?"""

    enabled: bool = True
    purposes: list[IntentPurposeConfig] = Field(default_factory=list)
    history: bool = Field(default=False, description="learn each client's allowed calls and score novelty against them")
    min_history: Annotated[int, Field(ge=1)] = 20
    max_history: Annotated[int, Field(ge=1, le=100_000)] = 256


class DetectorsConfig(_Strict):
    """Detectors feeding findings to the policy (input.findings); none decides on its own."""

    secrets: SecretsDetectorConfig = Field(default_factory=SecretsDetectorConfig)
    pii: PiiDetectorConfig = Field(default_factory=PiiDetectorConfig)
    poisoning: PoisoningDetectorConfig = Field(default_factory=PoisoningDetectorConfig)
    injection: InjectionDetectorConfig = Field(default_factory=InjectionDetectorConfig)
    intent: IntentDetectorConfig = Field(default_factory=IntentDetectorConfig)
    run_unread: bool = Field(
        default=False,
        description="also run enabled detectors whose findings no rule of the policy bundle reads "
        "(input.findings.<name>), for their findings in the audit log; by default such a detector is not run",
    )


REFUSED_JWT_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})
"""Never accepted: the firewall shares no secret with the issuer (an HS256 token "signed"
with the issuer's public key must not verify)."""


def _http_url(value: str) -> str:
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) URL with a host: {value!r}")
    return value


class JwtConfig(_Strict):
    """OAuth 2.1 bearer tokens (JWTs) from one issuer, checked against its JWKS."""

    issuer: str = Field(description="the expected `iss`; also where OIDC/OAuth discovery looks for the JWKS")
    audience: list[str] = Field(
        default_factory=list, description="accepted `aud` values (default: the firewall's resource URL for the route)"
    )
    jwks_url: str | None = Field(default=None, description="the issuer's JWKS (default: found by discovery at the issuer)")
    jwks_file: Path | None = Field(default=None, description="a JWKS file instead of fetching one")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])
    leeway_seconds: Annotated[float, Field(ge=0, le=300)] = 30.0
    jwks_cache_seconds: Annotated[float, Field(ge=1)] = 3600.0
    jwks_refresh_min_seconds: Annotated[float, Field(ge=0)] = Field(
        default=30.0, description="an unknown `kid` refetches the JWKS at most this often"
    )
    fetch_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    subject_claim: str = "sub"
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    scope_claims: list[str] = Field(default_factory=lambda: ["scope", "scp"])
    claims: list[str] = Field(default_factory=list, description="further claims copied into identity.claims for the policy")
    default_tenant: str | None = Field(default=None, description="tenant of tokens without the tenant claim (default: refuse them)")

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        refused = [name for name in value if name in REFUSED_JWT_ALGORITHMS]
        if refused:
            raise ValueError(f"{', '.join(refused)} not allowed (the firewall holds no shared secret; "
                             "use an asymmetric algorithm such as RS256 or ES256)")
        if not value:
            raise ValueError("no algorithm allowed")
        return value


class ApiKeysConfig(_Strict):
    """API keys for programmatic clients (``mcpfw keys``)."""

    enabled: bool = True
    store: Path | None = Field(default=None, description="key database, SQLite (default: MCPFW_HOME/keys.sqlite)")
    header: str = Field(default="x-api-key", description="header that carries a key (Authorization: Bearer works too)")
    stdio_env: str = Field(default="MCPFW_API_KEY", description="environment variable the stdio shim reads a key from")
    stdio_key: str | None = Field(default=None, description="a key for the stdio shim (prefer the environment variable)")


class AuthConfig(_Strict):
    """Who is calling: the firewall as an OAuth 2.1 resource server, and API keys."""

    mode: Literal["off", "optional", "required"] = Field(
        default="off", description="off: no identity; optional: identify callers that present credentials; required: 401 without"
    )
    jwt: JwtConfig | None = None
    api_keys: ApiKeysConfig = Field(default_factory=ApiKeysConfig)
    resource: str | None = Field(
        default=None, description="the protected resource's URL in metadata and audience checks (default: public URL + route path)"
    )
    authorization_servers: list[str] = Field(default_factory=list, description="advertised in resource metadata (default: [jwt.issuer])")
    scopes_supported: list[str] = Field(default_factory=list)
    required_scopes: list[str] = Field(default_factory=list, description="scopes every request needs (else 403 insufficient_scope)")

    @model_validator(mode="after")
    def _someone_can_authenticate(self) -> AuthConfig:
        if self.mode != "off" and self.jwt is None and not self.api_keys.enabled:
            raise ValueError(f"auth.mode is {self.mode} but neither auth.jwt nor auth.api_keys is enabled: nobody could authenticate")
        return self


class RateLimitRule(_Strict):
    """One limit: counted per distinct value of ``per`` over the messages it covers."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    per: list[Literal["tenant", "subject", "key_id", "tool", "server", "method"]] = Field(default_factory=lambda: ["tenant"])
    methods: list[str] | None = Field(default=None, description="client request methods counted (default: every request)")
    tools: list[str] | None = Field(default=None, description="only calls of these tools")
    tenants: list[str] | None = Field(default=None, description="only these tenants")
    requests: Annotated[int, Field(ge=0)] | None = Field(default=None, description="requests per window")
    bytes: Annotated[int, Field(ge=0)] | None = Field(default=None, description="request bytes per window")
    concurrent: Annotated[int, Field(ge=0)] | None = Field(default=None, description="requests in flight at once")
    window_seconds: Annotated[float, Field(gt=0, le=31 * 86400)] = 60.0

    @model_validator(mode="after")
    def _counts_something(self) -> RateLimitRule:
        if self.requests is None and self.bytes is None and self.concurrent is None:
            raise ValueError(f"rate limit {self.name!r} sets none of requests, bytes, concurrent")
        return self


class RateLimitsConfig(_Strict):
    """Rate limits and quotas; counted in process, or in Redis to share them between instances."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "mcpfw:rate:"
    timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 200
    on_error: Literal["deny", "allow"] = Field(default="deny", description="when the counter store fails: fail closed (deny) or open")
    in_flight_ttl_seconds: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="a call in flight that never got an answer stops counting after this long"
    )
    rules: list[RateLimitRule] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RateLimitRule]) -> list[RateLimitRule]:
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise ValueError("rate limit names must be unique (rules with one name would share counters)")
        return rules


class ApprovalsConfig(_Strict):
    """Requests held for a person's approval (``require_approval`` obligations, ``mcpfw approvals``)."""

    store: Path | None = Field(default=None, description="approval database, SQLite (default: MCPFW_HOME/approvals.sqlite)")
    pending_hours: Annotated[float, Field(gt=0, le=24 * 90)] = Field(
        default=24.0, description="an approval request nobody decided expires after this long"
    )


class MetricsConfig(_Strict):
    """Prometheus metrics (counted by every firewall process, summed over a shared directory)."""

    enabled: bool = True
    directory: Path | None = Field(default=None, description="where processes write their counts (default: a metrics folder next to the audit file)")
    listen: str | None = Field(
        default=None, description="HOST:PORT where `mcpfw proxy` serves /metrics (stdio shims never listen: use `mcpfw metrics serve`)")
    interval_seconds: Annotated[float, Field(ge=0.1, le=60)] = Field(
        default=1.0, description="how often a process writes its counts when they changed")


class Config(_Strict):
    """The whole configuration file."""

    version: Literal[1] = 1
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    stdio: StdioConfig = Field(default_factory=StdioConfig)
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    def with_overrides(self, **sections: dict[str, Any]) -> Config:
        """A copy with the given fields replaced, e.g. ``policy={"bundle": p}``; None values are ignored."""
        update: dict[str, Any] = {}
        for name, fields in sections.items():
            fields = {k: v for k, v in fields.items() if v is not None}
            if fields:
                update[name] = getattr(self, name).model_copy(update=fields)
        return self.model_copy(update=update)

    def server(self, name: str) -> ServerConfig:
        return self.servers.get(name, ServerConfig())


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the bad key."""


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML configuration file; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(raw).__name__}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + describe_errors(exc)) from None
    return _resolve_relative(config, path.parent)


def describe_errors(exc: ValidationError, section: str = "") -> str:
    """Pydantic's errors on one line, each led by its dotted key (under ``section``, if given)."""
    lines = []
    for err in exc.errors():
        key = ".".join([section, *(str(p) for p in err["loc"])] if section else [str(p) for p in err["loc"]])
        lines.append(f"{key or '(top level)'}: {err['msg']}")
    return "; ".join(lines)


def _resolve_relative(config: Config, base: Path) -> Config:
    """Paths in a config file are relative to the file, not to the working directory."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p)

    config = config.with_overrides(
        policy={"bundle": fix(config.policy.bundle)},
        audit={"path": fix(config.audit.path), "spill_path": fix(config.audit.spill_path)},
        registry={"file": fix(config.registry.file), "state": fix(config.registry.state)},
        metrics={"directory": fix(config.metrics.directory)},
    )
    auth = config.auth
    api_keys = auth.api_keys.model_copy(update={"store": fix(auth.api_keys.store)})
    jwt = auth.jwt.model_copy(update={"jwks_file": fix(auth.jwt.jwks_file)}) if auth.jwt else None
    approvals = config.approvals.model_copy(update={"store": fix(config.approvals.store)})
    return config.model_copy(update={"auth": auth.model_copy(update={"api_keys": api_keys, "jwt": jwt}), "approvals": approvals})
