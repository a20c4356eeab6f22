"""The one typed configuration of mcpfw, loaded from YAML and validated with pydantic.

Every field has a default, so no file is needed. Command-line flags override the file
through :func:`Config.with_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    flush_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 200
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    on_failure: Literal["block", "spill"] = "block"
    spill_path: Path | None = None


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
    max_sessions: Annotated[int, Field(ge=1)] = 10_000
    confdir: Path | None = Field(default=None, description="mitmproxy's directory (its CA for TLS interception); default MCPFW_HOME/mitmproxy")
    ssl_insecure: bool = Field(default=False, description="mitmproxy: do not verify upstream TLS certificates")


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
        raise ConfigError(f"{path}: " + _describe(exc)) from None
    return _resolve_relative(config, path.parent)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{key}: {err['msg']}")
    return "; ".join(lines)


def _resolve_relative(config: Config, base: Path) -> Config:
    """Paths in a config file are relative to the file, not to the working directory."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p)

    return config.with_overrides(
        policy={"bundle": fix(config.policy.bundle)},
        audit={"path": fix(config.audit.path), "spill_path": fix(config.audit.spill_path)},
        registry={"file": fix(config.registry.file), "state": fix(config.registry.state)},
    )
