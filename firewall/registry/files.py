"""Files several firewall processes share: an exclusive lock for writers, atomic replacement.

Writers take ``fcntl.flock`` on a sidecar ``<file>.lock`` (never on the data file itself,
which is replaced), re-read the current contents, change them and write a temporary file
that ``os.replace`` swaps in. Readers need no lock: they see either the old or the new
file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

Signature = tuple[int, int, int] | None


class RegistryFileError(Exception):
    """A registry or state file that cannot be read or written; the message names it."""


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the writers' lock of ``path`` (blocking until other writers are done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (call with the lock held)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def signature(path: Path) -> Signature:
    """Changes whenever the file is replaced or rewritten; None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def read_document(path: Path) -> Any:
    """The parsed YAML or JSON (by extension) content of ``path``; None if it does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if is_json(path):
            return orjson.loads(raw) if raw.strip() else None
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(raw, Loader=loader)  # noqa: S506 - a safe loader
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise RegistryFileError(f"{path}: invalid {'JSON' if is_json(path) else 'YAML'}: {exc}") from None


class _ReviewDumper(yaml.SafeDumper):
    """YAML for review: multi-line strings as literal blocks, keys in the order given."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value and not any(ch in value for ch in "\r\t\x0b\x0c") and value == value.rstrip(" "):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_ReviewDumper.add_representer(str, _str)


def dump_document(value: Any, *, as_json: bool, header: str = "") -> bytes:
    """Serialise for a file people review: stable, indented, one line per scalar."""
    if as_json:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"
    text = yaml.dump(value, Dumper=_ReviewDumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)
    return (header + text).encode("utf-8")
