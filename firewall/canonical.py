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
    return _levels(text)[-1]


def _levels(text: str) -> list[str]:
    """``text`` and each stage of undoing its percent-encoding (three at most)."""
    levels = [text]
    while "%" in text and len(levels) < 4:
        decoded = unquote(text)
        if decoded == text:
            break
        levels.append(decoded)
        text = decoded
    return levels


_C0_OR_SPACE = "".join(map(chr, range(0x21)))
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
# Dot segments as a WHATWG URL parser knows them, %2e included.
_DOT_SEGMENTS = {".": ".", "%2e": ".", "..": "..", ".%2e": "..", "%2e.": "..", "%2e%2e": ".."}


def _file_url(value: str) -> str | None:
    """``value`` as URL parsers take it (leading and trailing spaces and controls stripped, tabs
    and newlines dropped, as WHATWG and urllib do) if that is a file: URL, else None."""
    text = value.strip(_C0_OR_SPACE)
    if "\t" in text or "\n" in text or "\r" in text:
        text = _TAB_OR_NEWLINE.sub("", text)
    return text if text[:5].lower() == "file:" else None


def _url_texts(url: str, raw: str) -> list[str]:
    """The paths a server may take a file: URL for: its WHATWG path (Node's URL, pydantic's
    AnyUrl: "\\" is "/", "%2e" a dot, "file:etc/passwd" is /etc/passwd) and its urllib path
    (relative in "file:etc/passwd"), each percent-decoded (fully first) or not."""
    rest = url[5:].split("#", 1)[0].split("?", 1)[0].replace("\\", "/")
    if rest.startswith("//"):  # the host: a posix server drops it or refuses the URL
        slash = rest.find("/", 2)
        rest = rest[slash:] if slash >= 0 else "/"
    segments = [_DOT_SEGMENTS.get(seg.lower(), seg) for seg in rest.split("/")]
    whatwg = "/" + posixpath.normpath("/" + "/".join(segments)).lstrip("/")
    texts = _levels(whatwg)[::-1]
    try:
        parts = urlsplit(raw)
    except ValueError:
        return texts
    if parts.scheme.lower() == "file":
        texts.extend(_levels(parts.path or "/")[::-1])
    return texts


def _resolve(path: str, resolve_symlinks: bool) -> list[str]:
    """The places the absolute ``path`` may name: physically (symlinks followed before ".."
    as the kernel does: Python's open, git) and lexically (".." collapsed first, then
    symlinks: Node's path.resolve and fs.realpath in server-filesystem)."""
    lexical = posixpath.normpath(path)
    if lexical.startswith("//"):
        lexical = "/" + lexical.lstrip("/")
    if not resolve_symlinks:
        return [lexical]
    if "\x00" in path:
        # Node and Python refuse a name with a NUL; C code ends the name there.
        return [lexical, *_resolve(path.split("\x00", 1)[0] or "/", True)]
    readings = []
    # Longer than PATH_MAX no system call can open it, and a server that shortens it (as
    # the normalisation did) opens what is checked here: no symlink walk over it.
    if "/.." in path and len(path) <= _MAX_LEN:
        readings.append(_realpath(path))
    readings.append(_realpath(lexical) if len(lexical) <= _MAX_LEN else lexical)
    return readings


def _realpath(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return posixpath.normpath(path)


def path_readings(
    raw: str, *, cwd: str, resolve_symlinks: bool, bases: tuple[str, ...] = (), expand_user: bool = True
) -> list[str]:
    """Every absolute path a server may take ``raw`` for, the canonical one first.

    Plain paths are read as servers read them (no percent-decoding) and decoded (each
    stage); file: URLs as WHATWG and urllib parse them. A relative path is read from ``cwd``
    and from each of ``bases``; ``expand_user=False`` reads ``~name/...`` from ``cwd`` as a
    relative path, as servers that expand only ``~`` and ``~/`` do (from ``bases`` it always
    is). Each is resolved physically and lexically (``_resolve``)."""
    url = _file_url(raw)
    texts = dict.fromkeys(_url_texts(url, raw)) if url is not None else _levels(raw)[::-1]
    found: dict[str, None] = {}
    for text in texts:
        home = text == "~" or text.startswith("~/")
        # A relative URL path (urllib's "file:etc") is read from the working directory only.
        places = (cwd,) if url is not None or text.startswith("/") or home else (cwd, *bases)
        for index, place in enumerate(places):
            path = text
            if path.startswith("~") and (home or (expand_user and index == 0)):
                path = os.path.expanduser(path)
            if not path.startswith("/"):
                path = posixpath.join(place, path)
            for reading in _resolve(path, resolve_symlinks):
                found[reading] = None
    return list(found)


def canonical_path(raw: str, *, cwd: str, resolve_symlinks: bool, expand_user: bool = True) -> str:
    """The canonical reading of ``raw`` (``path_readings``): decoded, absolute, normalised,
    symlinks resolved (as the kernel does) when the files are on this host."""
    return path_readings(raw, cwd=cwd, resolve_symlinks=resolve_symlinks, expand_user=expand_user)[0]


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
    if "\n" in value or "\r" in value:
        return False
    if value.startswith(("/", "~/", "./", "../", "~")) or value in (".", ".."):
        return True
    # A file: URL, also as URL parsers read it (" file:///p", "fi\tle:///p"), but not prose
    # such as "File: notes".
    url = _file_url(value)
    return url is not None and url[5:6].strip() != ""


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
    # The server may resolve a relative path against another directory than the firewall's
    # working directory (server-filesystem uses its allowed directories): each reading counts.
    canonical, *rest = path_readings(text, cwd=cwd, resolve_symlinks=resolve_symlinks, bases=bases)
    ref: dict[str, Any] = {"pointer": pointer, "raw": raw, "canonical": canonical}
    others = set(rest)
    if "$" in text:
        # Some servers expand environment variables ("$HOME/repo": GitPython does), from an
        # environment the shim's child shares: that reading counts too.
        expanded = os.path.expandvars(text)
        if expanded != text:
            others.update(path_readings(expanded, cwd=cwd, resolve_symlinks=resolve_symlinks, bases=bases))
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
    call_base = _call_base(arguments, resolve_symlinks)
    if call_base:
        cwd, bases = call_base[0], (*call_base[1:], *bases)
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
                if _file_url(node) is not None:
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


def _call_base(arguments: Any, resolve_symlinks: bool) -> list[str]:
    """The readings of the absolute directory a call names for itself (``repo_path``...), if
    any: its relative paths are read from each instead of the firewall's working directory
    (the server's directories and the roots still give readings of their own)."""
    if isinstance(arguments, dict):
        for key in _BASE_KEYS:
            value = arguments.get(key)
            if isinstance(value, str) and (value.startswith("/") or value == "~" or value.startswith("~/")):
                return path_readings(value, cwd="/", resolve_symlinks=resolve_symlinks)
    return []


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
