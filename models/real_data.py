"""Real benign text (the pool of ``calibration_pool.py``) as classifier data, split by package.

Every pool text belongs to the package it came from (npm package, Python distribution,
Debian package, MCP server); each package is assigned, by a seeded hash of its name, to
one of three parts:

* ``train`` (about half of the packages): benign training documents, and the carriers
  into which training injections are planted (the same text with one planted payload,
  so the model learns the payload, not "synthetic versus real file");
* ``cal`` (about a quarter): validation -- model selection and the threshold choice,
  together with the synthetic validation documents; planted copies carry only the
  *validation* payload families;
* ``test`` (the rest): held out, only measured; planted copies carry only the *test*
  payload families (and S-Labs texts), so the "real carrier" test injections are unseen
  in the payload dimension, as the synthetic test split is.

Payload families and splits follow ``synth_data``: tool outputs use the tool-result
families (``FAMILY_TEMPLATES`` / ``EXTRA_FAMILY_TEMPLATES``) and the external payload pool
routed by split; tool descriptions use the poisoning families (``POISON`` /
``EXTRA_POISON``); prompts get an injection text placed before or after documentation
prose.  Planting places a payload where it would sit in such a file: a comment line in
source code, a paragraph / sentence / HTML comment in documentation, a string value in
JSON, a line of a commit message in a git log.  Training copies may also receive a
harmless assistant-addressed note instead (hard negatives).

Choices for a text depend only on the seed and the text's origin (``random.Random`` keyed by
them), so the samples do not change when other packages are installed or removed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import synth_data as sd
from synth_data import Sample

PARTS = ("train", "cal", "test")
SPLIT_OF_PART = {"train": "train", "cal": "val", "test": "test"}
SPLIT_SEED = "mcpfw-pool-split-v1"

# planting rates per kind and part: (planted injection copy, harmless filler copy)
RATES = {
    "tool_output": {"train": (0.6, 0.2), "cal": (0.35, 0.0), "test": (0.35, 0.0)},
    "tool_description": {"train": (0.6, 0.2), "cal": (0.5, 0.0), "test": (0.5, 0.0)},
    "prompt": {"train": (0.3, 0.0), "cal": (0.25, 0.0), "test": (0.25, 0.0)},
}

_PY_LIKE = (".py", ".pyi", ".pyx", ".pxd", ".yml", ".yaml", ".sh", ".toml", ".cfg")
_C_LIKE = (".js", ".mjs", ".cjs", ".ts", ".mts", ".cts", ".h")


def package_part(package: str) -> str:
    """train / cal / test for a package name: 2 : 1 : 1 by a seeded hash (deterministic)."""
    h = int.from_bytes(hashlib.sha256(f"{SPLIT_SEED}\x00{package}".encode()).digest()[:8], "big") % 4
    return "train" if h < 2 else ("cal" if h == 2 else "test")


def item_part(item) -> str:
    import calibration_pool

    return package_part(calibration_pool.package_of_origin(item.origin))


def _file_ext(origin: str) -> str:
    path = re.sub(r"@\d+$", "", origin)
    m = re.search(r"(\.[A-Za-z0-9]+)$", path)
    return m.group(1).lower() if m else ""


# --------------------------------------------------------------------------
# payloads per kind and split
# --------------------------------------------------------------------------

class Payloads:
    def __init__(self, ext_pool: dict[str, list[str]]):
        self.ext = ext_pool
        fam_all = sorted(sd.FAMILY_TEMPLATES)
        self.to_fams = {
            "train": [f for f in fam_all if f not in sd.TO_TEST_FAMILIES | sd.TO_VAL_FAMILIES],
            "val": sorted(sd.TO_VAL_FAMILIES),
            "test": sorted(sd.TO_TEST_FAMILIES),
        }
        pois_all = sorted(sd.POISON)
        self.td_fams = {
            "train": [f for f in pois_all if f not in sd.TD_TEST_POISON | sd.TD_VAL_POISON],
            "val": sorted(sd.TD_VAL_POISON),
            "test": sorted(sd.TD_TEST_POISON),
        }
        self.others = [n for s in sd.SERVERS.values() for n, _ in s]

    def tool_output(self, rng: random.Random, split: str, doc: str) -> tuple[str, str]:
        r = rng.random()
        if split == "train":
            if r < 0.4:
                fam = rng.choice(sorted(sd.EXTRA_FAMILY_TEMPLATES))
                return fam, sd._fmt_payload(rng, rng.choice(sd.EXTRA_FAMILY_TEMPLATES[fam]), doc)
            if r < 0.75:
                fam = rng.choice(self.to_fams["train"])
                return fam, sd.make_payload(rng, fam, doc)
            if r < 0.92:
                return "external", rng.choice(self.ext["train"])[:1200]
            return "synth_prompt", sd.synth_injection_prompt(rng)
        # validation / test: only that split's families, and the external texts routed to it
        if r < 0.7:
            fam = rng.choice(self.to_fams[split])
            return fam, sd.make_payload(rng, fam, doc)
        return "external", rng.choice(self.ext[split])[:1200]

    def description(self, rng: random.Random, split: str) -> tuple[str, str]:
        fam = rng.choice(self.td_fams[split])
        pool = sd.POISON[fam] + (sd.EXTRA_POISON.get(fam, []) if split == "train" else [])
        p = rng.choice(pool).format(secret=rng.choice(sd.SECRETS), other=rng.choice(self.others),
                                    email=rng.choice(sd.ATTACKER_EMAILS), url=rng.choice(sd.ATTACKER_URLS),
                                    verb=rng.choice(["adds numbers", "reads files", "sends messages"]))
        if split == "train" and rng.random() < 0.3 and fam != "important_block":
            p += " " + rng.choice(sd.POISON["stealth"]).format(verb="returns results", other="", secret="", email="", url="")
        return fam, p

    def prompt(self, rng: random.Random, split: str) -> tuple[str, str]:
        if split == "train" and rng.random() < 0.4:
            return "synth_prompt", sd.synth_injection_prompt(rng)
        return "external", rng.choice(self.ext[split])[:1200]


# --------------------------------------------------------------------------
# planting
# --------------------------------------------------------------------------

def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer(r"\n", text) if m.end() < len(text)]


def _insert(text: str, pos: int, block: str, inner: tuple[int, int] | None = None) -> tuple[str, tuple[int, int]]:
    """Insert ``block`` at ``pos``; the span is the block (or ``inner`` relative to it)."""
    a, b = inner if inner else (0, len(block))
    return text[:pos] + block + text[pos:], (pos + a, pos + b)


def _comment_block(payload: str, style: str, indent: str, rng: random.Random) -> str:
    lines = [ln for ln in payload.splitlines() if ln.strip()] or [payload]
    if style == "py":
        return "".join(f"{indent}# {ln}\n" for ln in lines)
    if rng.random() < 0.5 or len(lines) > 1:
        body = "\n".join(f"{indent} * {ln}" for ln in lines)
        return f"{indent}/*\n{body}\n{indent} */\n" if len(lines) > 1 else f"{indent}/* {lines[0]} */\n"
    return f"{indent}// {lines[0]}\n"


def plant_tool_output(rng: random.Random, text: str, source: str, origin: str, payload: str) -> tuple[str, tuple[int, int]]:
    ext = _file_ext(origin)
    starts = _line_starts(text)
    if source in ("code_py", "code_js", "code_other") or (source == "whole_large" and ext in _PY_LIKE + _C_LIKE):
        style = "py" if ext in _PY_LIKE else "c"
        pos = rng.choice(starts)
        line = text[pos: text.find("\n", pos) if "\n" in text[pos:] else len(text)]
        indent = re.match(r"[ \t]*", line).group(0)
        if rng.random() < 0.2:  # inside a string literal / docstring-like line instead of a comment
            block = f"{indent}{payload.replace(chr(10), ' ')}\n"
        else:
            block = _comment_block(payload, style, indent, rng)
        return _insert(text, pos, block)
    if source == "json":
        vals = [m.end() for m in re.finditer(r'"\s*:\s*"', text)]
        if vals and rng.random() < 0.85:
            enc = json.dumps(payload, ensure_ascii=False)[1:-1]
            pos = rng.choice(vals)
            if rng.random() < 0.5:  # the payload replaces the start of the value, or is appended to it
                end = pos
                while end < len(text) and text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                pos = end
                enc = " " + enc
                return _insert(text, pos, enc, (1, len(enc)))
            return _insert(text, pos, enc + " ", (0, len(enc)))
        pos = rng.choice(starts)
        return _insert(text, pos, payload + "\n")
    if source == "git_log":
        msg_lines = [m.start() for m in re.finditer(r"^    \S", text, re.M)]
        pos = rng.choice(msg_lines) if msg_lines else rng.choice(starts)
        block = "".join(f"    {ln}\n" for ln in payload.splitlines() if ln.strip()) or f"    {payload}\n"
        return _insert(text, pos, block)
    # documentation-like text (docs, usr_doc, licence, changelog, whole doc files)
    r = rng.random()
    if ext in (".md", ".markdown", ".html") and r < 0.2:
        block = f"<!-- {payload} -->"
        pos = rng.choice(starts)
        return _insert(text, pos, block + "\n", (0, len(block)))
    if r < 0.65:  # a paragraph of its own at a paragraph boundary (or the start / end)
        paras = [0] + [m.end() for m in re.finditer(r"\n[ \t]*\n", text)] + [len(text)]
        pos = rng.choice(paras)
        lead = "" if pos == 0 or text[pos - 1] == "\n" else "\n\n"
        block = lead + payload + ("\n\n" if pos < len(text) else "\n")
        return _insert(text, pos, block, (len(lead), len(lead) + len(payload)))
    sents = [m.end() for m in re.finditer(r"[.!?] ", text)]
    if sents:  # inside a paragraph, after a sentence
        pos = rng.choice(sents)
        flat = payload.replace("\n", " ")
        return _insert(text, pos, flat + " ", (0, len(flat)))
    pos = rng.choice(starts)
    return _insert(text, pos, payload + "\n", (0, len(payload)))


def plant_description(rng: random.Random, text: str, payload: str) -> tuple[str, tuple[int, int]]:
    r = rng.random()
    if r < 0.55:  # appended (the usual place of <IMPORTANT> blocks)
        sep = rng.choice(["\n\n", " ", "\n"])
        return text + sep + payload, (len(text) + len(sep), len(text) + len(sep) + len(payload))
    if r < 0.85:  # after the first paragraph / sentence
        m = re.search(r"\n\s*\n|[.!?]\s", text)
        if m:
            pos = m.end()
            block = payload + ("\n\n" if "\n" in m.group(0) else " ")
            return text[:pos] + block + text[pos:], (pos, pos + len(payload))
    sep = rng.choice(["\n\n", " "])
    return payload + sep + text, (0, len(payload))


def plant_prompt(rng: random.Random, text: str, payload: str) -> tuple[str, tuple[int, int]]:
    sep = rng.choice([" ", "\n\n", "\n"])
    if rng.random() < 0.5:
        return text + sep + payload, (len(text) + len(sep), len(text) + len(sep) + len(payload))
    return payload + sep + text, (0, len(payload))


def _filler_tool_output(rng: random.Random) -> str:
    return sd.benign_addressed(rng) if rng.random() < 0.7 else sd.hard_negative_prompt(rng)


def _filler_description(rng: random.Random, others: list[str]) -> str:
    t = rng.choice(sd.EXTRA_DESC_BENIGN + sd.DESC_EXTRAS)
    return t.format(thing=rng.choice(sd.TOPICS), other=rng.choice(others))


# --------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------

def build_samples(items, ext_pool: dict[str, list[str]], seed: int = 1337) -> list[Sample]:
    """Pool items -> samples: every item as a benign document of its part's split, plus planted
    injection copies (and, for training, harmless-filler copies) at the rates of ``RATES``."""
    pay = Payloads(ext_pool)
    out: list[Sample] = []
    for it in items:
        part = item_part(it)
        split = SPLIT_OF_PART[part]
        rng = random.Random(f"{seed}:real:{it.kind}:{it.source}:{it.origin}:{len(it.text)}")
        out.append(Sample(it.text, 0, it.kind, f"pool/{it.source}", split, family="real", carrier=it.source))
        p_inj, p_fill = RATES[it.kind][part]
        r = rng.random()
        if r < p_inj:
            if it.kind == "tool_output":
                doc = "code_file" if it.source.startswith("code") else "doc"
                fam, payload = pay.tool_output(rng, split, doc)
                if rng.random() < 0.06:
                    payload = sd.obfuscate(rng, payload)
                text, span = plant_tool_output(rng, it.text, it.source, it.origin, payload)
            elif it.kind == "tool_description":
                fam, payload = pay.description(rng, split)
                if rng.random() < 0.05:
                    payload = sd.obfuscate(rng, payload)
                text, span = plant_description(rng, it.text, payload)
            else:
                fam, payload = pay.prompt(rng, split)
                text, span = plant_prompt(rng, it.text, payload)
            out.append(Sample(text, 1, it.kind, f"pool_planted/{it.source}+{fam}", split, family=fam,
                              carrier=it.source, spans=[span]))
        elif r < p_inj + p_fill:
            if it.kind == "tool_output":
                text, _ = plant_tool_output(rng, it.text, it.source, it.origin, _filler_tool_output(rng))
            else:
                text, _ = plant_description(rng, it.text, _filler_description(rng, pay.others))
            out.append(Sample(text, 0, it.kind, f"pool_filler/{it.source}", split, family="filler", carrier=it.source))
    return out


def is_real(sample: Sample) -> bool:
    return sample.group.startswith(("pool/", "pool_planted/", "pool_filler/"))
