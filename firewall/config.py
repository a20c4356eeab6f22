"""The one typed configuration of mcpfw, loaded from YAML and validated with pydantic.

Every field has a default, so no file is needed. Command-line flags override the file
through :func:`Config.with_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class StdioConfig(_Strict):
    """The stdio shim."""

    server_name: str | None = None
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=600)] = 5.0


class Config(_Strict):
    """The whole configuration file."""

    version: Literal[1] = 1
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    stdio: StdioConfig = Field(default_factory=StdioConfig)
    servers: dict[str, ServerConfig] = Field(default_factory=dict)

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
    )
