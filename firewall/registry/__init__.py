"""The canonical tool registry: pinned definitions, drift and rug-pull detection, approvals.

``definitions`` (canonical form, digests), ``document`` (the reviewed registry file),
``state`` (what firewalls learn at run time), ``view`` (the index both are read through),
``store`` (one process's access to both), ``enricher`` (``input.registry``), ``uritemplate``
(which template a resources/read URI belongs to) and ``review``
(what ``mcpfw registry`` shows and changes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import state_dir

if TYPE_CHECKING:
    from ..config import Config
    from .enricher import RegistryEnricher
    from .view import Modes


def registry_paths(config: Config) -> tuple[Path, Path]:
    """(registry file, state file) from the configuration, with their defaults."""
    file = config.registry.file or state_dir() / "registry.yaml"
    state = config.registry.state or file.with_name(file.stem + ".state.json")
    return file, state


def force_mode(config: Config, mode: str) -> Config:
    """``--registry-mode``: one mode for every server, over the per-server settings too."""
    servers = {name: server.model_copy(update={"registry_mode": None}) for name, server in config.servers.items()}
    return config.model_copy(update={"servers": servers, "registry": config.registry.model_copy(update={"mode": mode})})


def registry_modes(config: Config) -> Modes:
    """Each server's mode: ``servers.<name>.registry_mode``, else ``registry.mode``."""
    from .view import Modes

    return Modes(
        config.registry.mode,
        {name: server.registry_mode for name, server in config.servers.items() if server.registry_mode},
    )


def build_registry_enricher(config: Config) -> RegistryEnricher | None:
    """The enricher for the pipeline, or None when every server's mode is ``off``."""
    from ..config import ConfigError
    from .enricher import RegistryEnricher
    from .files import RegistryFileError
    from .store import RegistryStore

    modes = registry_modes(config)
    if not modes.any_active():
        return None
    file, state = registry_paths(config)
    try:
        store = RegistryStore(file, state)
    except RegistryFileError as exc:
        raise ConfigError(f"registry: {exc}") from None
    return RegistryEnricher(store, modes)
