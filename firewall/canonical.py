"""Canonical forms of the paths and URLs that tool arguments name.

A rule about ``/data`` must not be dodged by ``/data/../etc/passwd``, ``%2e%2e``,
``file:///etc/passwd``, ``~/.ssh`` or a symlink, so the policy input carries every such
argument in canonical form next to its raw spelling.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any
from urllib.parse import unquote, urlsplit

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_PATH_KEYS = frozenset(
    {
        "path", "paths", "file", "files", "filename", "filepath", "file_path", "filenames",
        "dir", "dirs", "directory", "directories", "folder", "source", "src", "destination",
        "dest", "dst", "target", "root", "cwd", "workdir", "working_directory", "repo_path",
        "repository", "location", "output", "output_path", "input_path", "uri",
    }
)
_MAX_DASHED = 64  # string arguments starting with "-" reported for option checks
_MAX_REFS = 1024  # more than this in one message: the message is refused as unchecked (``truncated``)
_MAX_LEN = 4096  # PATH_MAX: longer strings are canonicalised without asking the file system
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}


def _decode(text: str) -> str:
    """Undo percent-encoding, repeatedly, so that double encoding cannot hide a path."""
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def canonical_path(raw: str, *, cwd: str, resolve_symlinks: bool, expand_user: bool = True) -> str:
    """Absolute, decoded, normalised path; symlinks resolved when the files are on this host.
    ``expand_user=False`` reads ``~name/...`` as a relative path, as servers that expand only
    ``~`` and ``~/`` do."""
    text = raw
    if text[:5].lower() == "file:":
        # file:///p, file://host/p and the one-slash form file:/p all name /p.
        text = urlsplit(text).path or "/"
    text = _decode(text)
    if text.startswith("~") and (expand_user or text == "~" or text.startswith("~/")):
        text = os.path.expanduser(text)
    if not text.startswith("/"):
        text = posixpath.join(cwd, text)
    text = posixpath.normpath(text)
    if text.startswith("//"):
        text = "/" + text.lstrip("/")
    # Longer than PATH_MAX no system call can open it, and a server that shortens it (as
    # this normalisation did) opens what is checked here: no symlink walk over it.
    if resolve_symlinks and "\x00" not in text and len(text) <= _MAX_LEN:
        try:
            text = os.path.realpath(text)
        except (OSError, ValueError):
            pass
    return text


def canonical_url(raw: str) -> dict[str, Any] | None:
    """Scheme and host lower-cased, default port dropped, path decoded and normalised."""
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if port is not None and _DEFAULT_PORTS.get(scheme) == port:
        port = None
    path = _decode(parts.path)
    if path:
        trailing = path.endswith("/")
        path = posixpath.normpath(path) if path.startswith("/") else path
        if trailing and not path.endswith("/"):
            path += "/"
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
    netloc = host if port is None else f"{host}:{port}"
    canonical = f"{scheme}://{netloc}{path}"
    if parts.query:
        canonical += "?" + parts.query
    return {
        "canonical": canonical,
        "scheme": scheme,
        "host": host,
        "port": port,
        "path": path,
        "userinfo": parts.username is not None,
    }


def _looks_like_path(key: str | None, value: str) -> bool:
    if key is not None and key.lower() in _PATH_KEYS and value != "":
        return True
    # Under any other key, a single line that starts like a path. Text of several lines
    # (file contents such as "/* licence */\n...") is content, not a file argument.
    starts = value.startswith(("/", "~/", "./", "../", "~")) or value in (".", "..") or value[:5].lower() == "file:"
    return starts and "\n" not in value and "\r" not in value


# Arguments that name the directory a call works in (mcp-server-git's repo_path): the other
# relative paths of the same call are read from there, not from the firewall's directory.
_BASE_KEYS = ("repo_path", "repository", "cwd", "working_directory", "workdir")
# Keys that name a git revision, which may carry a path: "HEAD:.env" is the file .env.
_REVISION_KEYS = frozenset({"revision", "rev", "ref", "object", "commit", "target", "treeish", "tree_ish"})
# "HEAD:path", "@{1}:path", and the index forms ":path" and ":0:path" (stages 0-3).
_REVISION_PATH = re.compile(r"^(?:[^\s:/][^\s:]*)?:(?:[0-3]:)?(?!//)([^\s:][^\s]*)$")
_GITDIR = "gitdir:"


def _path_ref(
    pointer: str, raw: str, cwd: str, bases: tuple[str, ...], resolve_symlinks: bool, *, path: str | None = None
) -> dict[str, Any]:
    """A PathRef for ``raw`` (``path``: the part of ``raw`` that names the file, if not all)."""
    text = raw if path is None else path
    canonical = canonical_path(text, cwd=cwd, resolve_symlinks=resolve_symlinks)
    ref: dict[str, Any] = {"pointer": pointer, "raw": raw, "canonical": canonical}
    others: set[str] = set()
    if bases and _is_relative(text):
        # The server may resolve it against another directory than the firewall's working
        # directory (server-filesystem uses its allowed directories): each reading counts.
        others = {canonical_path(text, cwd=base, resolve_symlinks=resolve_symlinks, expand_user=False) for base in bases}
    if "$" in text:
        # Some servers expand environment variables ("$HOME/repo": GitPython does), from an
        # environment the shim's child shares: that reading counts too.
        expanded = os.path.expandvars(text)
        if expanded != text:
            others.add(canonical_path(expanded, cwd=cwd, resolve_symlinks=resolve_symlinks))
            if _is_relative(expanded):
                others.update(canonical_path(expanded, cwd=b, resolve_symlinks=resolve_symlinks) for b in bases)
    if resolve_symlinks:
        # A ".git" file ("gitdir: /elsewhere/.git") makes a directory the work tree of a
        # repository elsewhere: git commands there read and write that one, as a symlink would.
        for reading in (canonical, *others):
            others.update(_linked_git_dirs(reading))
    others.discard(canonical)
    if others:
        ref["alternatives"] = sorted(others)
    return ref


def _linked_git_dirs(directory: str) -> list[str]:
    """Places git commands run in ``directory`` read or write besides it: the repository a
    ``.git`` file points at, the common directory of a worktree, borrowed object stores
    (``objects/info/alternates``) and a working tree set elsewhere (``core.worktree``)."""
    dot_git = posixpath.join(directory, ".git")
    found: list[str] = []
    if os.path.isfile(dot_git):
        first = _lines(dot_git)[:1]
        if not first or not first[0].startswith(_GITDIR):
            return []
        git_dir = os.path.realpath(posixpath.join(directory, first[0][len(_GITDIR):].strip()))
        found.append(git_dir)
    elif os.path.isdir(dot_git):
        git_dir = dot_git
    else:
        return []
    common = _lines(posixpath.join(git_dir, "commondir"))[:1]
    git_dirs = [git_dir]
    if common:
        common_dir = os.path.realpath(posixpath.join(git_dir, common[0]))
        found.append(common_dir)
        git_dirs.append(common_dir)
    for where in git_dirs:
        objects = posixpath.join(where, "objects")
        for line in _lines(posixpath.join(objects, "info", "alternates"))[:16]:
            found.append(os.path.realpath(posixpath.join(objects, line)))
        for value in _config_values(posixpath.join(where, "config"), "core", "worktree"):
            found.append(os.path.realpath(posixpath.join(where, value)))
    return found


def _lines(path: str) -> list[str]:
    """The non-empty, non-comment lines of a small file (its first 4 KiB), or none."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError):
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _config_values(path: str, section: str, key: str) -> list[str]:
    """Values of ``key`` in ``[section]`` of a git config file (its first 4 KiB)."""
    values: list[str] = []
    current = None
    for line in _lines(path):
        if line.startswith("["):
            current = line.strip("[]").split(None, 1)[0].lower() if line.strip("[]") else None
        elif current == section and "=" in line:
            name, _, value = line.partition("=")
            if name.strip().lower() == key:
                values.append(value.strip().strip('"'))
    return values


def _is_relative(raw: str) -> bool:
    """Whether a server may read ``raw`` from a directory of its own: anything but an
    absolute path, ``~`` and ``~/...`` (``~name/...`` is relative to server-filesystem,
    which expands only the current user's home, and ``~nobody`` expands to nothing)."""
    if raw[:5].lower() == "file:":
        return False
    text = _decode(raw)
    return not (text.startswith(("/", "~/")) or text == "~")


def extract_resources(
    arguments: Any, *, base_pointer: str, cwd: str, resolve_symlinks: bool, bases: tuple[str, ...] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Every string leaf of ``arguments`` that names a path or URL, canonicalised.

    A relative path is read from ``cwd`` (``canonical``) and from each of ``bases``
    (``alternatives``, when they differ). ``dashed`` lists the strings that start with "-",
    at any depth, by the member they sit in (option checks read it; the policy walks nothing).

    Past ``_MAX_REFS`` references the walk stops and the result carries ``"truncated":
    True``, which the default policy refuses: a reference the policy never saw must not
    pass as checked.
    """
    paths: list[dict[str, Any]] = []
    urls: list[dict[str, Any]] = []
    dashed: list[dict[str, str]] = []
    cwd = _call_base(arguments, resolve_symlinks) or cwd
    stack: list[tuple[str, str | None, Any]] = [(base_pointer, None, arguments)]
    while stack:
        if len(paths) + len(urls) >= _MAX_REFS:
            paths.reverse()
            urls.reverse()
            return {"paths": paths, "urls": urls, "truncated": True, **({"dashed": dashed} if dashed else {})}
        pointer, key, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, (dict, list, str)):
                    stack.append((f"{pointer}/{_escape(k)}", k, v))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (dict, list, str)):
                    stack.append((f"{pointer}/{i}", key, v))
        elif isinstance(node, str):
            if node[:1] == "-" and key is not None and len(dashed) < _MAX_DASHED:
                dashed.append({"pointer": pointer, "key": key})
            if _URL.match(node):
                url = canonical_url(node)
                if url is not None:
                    urls.append({"pointer": pointer, "raw": node, **url})
                if node[:7].lower() == "file://":
                    paths.append(_path_ref(pointer, node, cwd, bases, resolve_symlinks))
            elif key is not None and key.lower() in _REVISION_KEYS and (rev := _REVISION_PATH.match(node)):
                paths.append(_path_ref(pointer, node, cwd, bases, resolve_symlinks, path=rev.group(1)))
            elif _looks_like_path(key, node):
                paths.append(_path_ref(pointer, node, cwd, bases, resolve_symlinks))
    paths.reverse()
    urls.reverse()
    found: dict[str, Any] = {"paths": paths, "urls": urls}
    if dashed:
        found["dashed"] = dashed
    return found


def _call_base(arguments: Any, resolve_symlinks: bool) -> str | None:
    """The absolute directory a call names for itself (``repo_path``...), if any: its
    relative paths are read from there instead of the firewall's working directory (the
    server's directories and the roots still give readings of their own)."""
    if isinstance(arguments, dict):
        for key in _BASE_KEYS:
            value = arguments.get(key)
            if isinstance(value, str) and (value.startswith("/") or value == "~" or value.startswith("~/")):
                return canonical_path(value, cwd="/", resolve_symlinks=resolve_symlinks)
    return None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
