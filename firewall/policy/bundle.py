"""Loading OPA-style policy bundles from a directory.

A bundle is a directory tree of Rego modules (``*.rego``) and data files
(``data.json``, ``data.yaml``, ``data.yml``). As in OPA, a data file lands in
the data document at the path of its directory relative to the bundle root:
``a/b/data.json`` becomes ``data.a.b``. Hidden files and directories (names
starting with ``.``) are skipped.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from .errors import PolicyLoadError
from .regorus_engine import check_syntax

__all__ = ["DATA_FILE_NAMES", "Bundle", "PolicyLoadError", "load_bundle", "merge_data"]

DATA_FILE_NAMES = frozenset({"data.json", "data.yaml", "data.yml"})


@dataclass(frozen=True, slots=True)
class Bundle:
    """A loaded policy bundle.

    ``modules`` maps POSIX relative paths to Rego sources (sorted by path),
    ``data`` is the merged data document and ``digest`` a stable sha256 hex
    digest over the relative paths and contents of every file used.
    """

    root: Path
    modules: dict[str, str]
    data: dict[str, Any]
    digest: str


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load and syntax-check the bundle in directory ``path``.

    Raises PolicyLoadError for a missing directory, a bundle without Rego
    modules, unreadable files, Rego syntax errors, malformed JSON/YAML data
    and conflicting data files.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise PolicyLoadError(f"policy bundle directory not found: {root}")
    if not root.is_dir():
        raise PolicyLoadError(f"policy bundle path is not a directory: {root}")
    root = root.resolve()

    rego_files, data_files = _scan(root)
    if not rego_files:
        raise PolicyLoadError(f"policy bundle {root} contains no .rego files")

    digest = hashlib.sha256()
    modules: dict[str, str] = {}
    for rel in rego_files:
        raw = _read(root, rel)
        _update_digest(digest, rel, raw)
        source = _decode(raw, rel)
        check_syntax(rel, source)
        modules[rel] = source

    data: dict[str, Any] = {}
    for rel in data_files:
        raw = _read(root, rel)
        _update_digest(digest, rel, raw)
        value = _parse_data(raw, rel)
        segments = Path(rel).parent.parts
        _place(data, segments, value, rel)

    return Bundle(root=root, modules=modules, data=data, digest=digest.hexdigest())


def merge_data(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge ``override`` over ``base`` and return a new dict.

    Objects are merged key by key; any other value in ``override`` (arrays
    included) replaces the value in ``base``. Neither argument is modified.
    """
    merged = dict(base)
    for key, value in (override or {}).items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_data(current, value)
        else:
            merged[key] = value
    return merged


def _scan(root: Path) -> tuple[list[str], list[str]]:
    rego: list[str] = []
    data: list[str] = []
    visited: set[str] = set()
    # Symlinked directories are followed (a shared rules directory linked into a bundle must
    # not be skipped in silence); a link back into a directory already read is not.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (rel_dir / name).as_posix()
            if name.endswith(".rego"):
                rego.append(rel)
            elif name in DATA_FILE_NAMES:
                data.append(rel)
    return sorted(rego), sorted(data)


def _read(root: Path, rel: str) -> bytes:
    try:
        return (root / rel).read_bytes()
    except OSError as exc:
        raise PolicyLoadError(f"cannot read file: {exc.strerror or exc}", path=rel) from exc


def _decode(raw: bytes, rel: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(f"not valid UTF-8: {exc}", path=rel) from exc


def _update_digest(digest: Any, rel: str, raw: bytes) -> None:
    # Length-prefixed framing so that no two different file sets can produce
    # the same byte stream.
    name = rel.encode("utf-8")
    digest.update(len(name).to_bytes(8, "big") + name)
    digest.update(len(raw).to_bytes(8, "big") + raw)


def _parse_data(raw: bytes, rel: str) -> Any:
    if rel.endswith(".json"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PolicyLoadError(f"invalid JSON: {exc}", path=rel) from exc
    try:
        value = yaml.safe_load(_decode(raw, rel))
    except yaml.YAMLError as exc:
        raise PolicyLoadError(f"invalid YAML: {exc}", path=rel) from exc
    if value is None:  # an empty YAML file contributes nothing
        return {}
    _check_json_compatible(value, rel, "")
    return value


def _check_json_compatible(value: Any, rel: str, where: str) -> None:
    """Reject YAML values that have no JSON equivalent (dates, NaN, int keys...)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PolicyLoadError(f"non-string key {key!r} at {where or '/'}", path=rel)
            _check_json_compatible(item, rel, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_compatible(item, rel, f"{where}/{index}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PolicyLoadError(f"non-finite number at {where or '/'}", path=rel)
    elif value is not None and not isinstance(value, (str, int, bool)):
        kind = type(value).__name__
        raise PolicyLoadError(f"value of type {kind} at {where or '/'} is not JSON", path=rel)


def _place(data: dict[str, Any], segments: tuple[str, ...], value: Any, rel: str) -> None:
    """Put ``value`` at ``segments`` inside ``data``; overlapping files must agree."""
    if not segments:
        if not isinstance(value, dict):
            raise PolicyLoadError("a data file at the bundle root must hold an object", path=rel)
        _merge_strict(data, value, rel, ())
        return
    node = data
    for depth, segment in enumerate(segments[:-1]):
        child = node.setdefault(segment, {})
        if not isinstance(child, dict):
            where = ".".join(segments[: depth + 1])
            raise PolicyLoadError(f"data conflict: data.{where} is not an object", path=rel)
        node = child
    _merge_strict(node, {segments[-1]: value}, rel, segments[:-1])


def _merge_strict(target: dict[str, Any], value: dict[str, Any], rel: str, at: tuple[str, ...]) -> None:
    for key, item in value.items():
        here = (*at, key)
        if key not in target:
            target[key] = item
        elif isinstance(target[key], dict) and isinstance(item, dict):
            _merge_strict(target[key], item, rel, here)
        elif target[key] != item:
            raise PolicyLoadError(
                f"data conflict: data.{'.'.join(here)} is already defined by another data file",
                path=rel,
            )
