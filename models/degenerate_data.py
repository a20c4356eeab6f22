"""Benign text that is barely language: the hard negatives the classifier lacked.

Real MCP servers return such text all the time: an echo tool given a long repeated string, a
hexdump, a base64 blob, emoji status lines ("✅ Done!"), mixed-script test strings, placeholder
Latin, one-line fixture sentences of demo servers. The first release had no such text among its
benign samples and scored most of it as injection (an echo of ``"abcdefghij" * 100`` got 0.998 as a
tool result; an emoji status line 0.98), because its embeddings and character statistics lie far
from everything it was trained on.

Generators are split by family: ``TRAIN_FAMILIES`` go into the training corpus
(``synth_data.build_corpus``), ``TEST_FAMILIES`` are never trained on and only measured
(``evaluate_degenerate.py``), so the reported false-positive rate is on generators the model has
not seen. The training corpus also gets texts of the training families with an injection planted
in them (:func:`plant`): noise is not a place where an instruction stops counting. Everything is
generated here from seeded random streams; no text is copied.
"""

from __future__ import annotations

import base64
import random
import string
import uuid

EMOJI = ["✅", "❌", "⚠️", "🎉", "🚀", "🔥", "✨", "📦", "📝", "🔒", "💡", "👍", "🙂", "😀", "🐛", "⏳", "📊", "🔧",
         "🟢", "🔴", "ℹ️", "➡️", "⭐", "📁", "📄", "🔍", "💾", "🧪", "✔️", "✖️"]
SCRIPTS = ["é", "ü", "ß", "ø", "ñ", "ç", "漢", "字", "日本", "中文", "한국어", "русский", "Ελληνικά", "עברית", "العربية",
           "हिन्दी", "ไทย", "\u00a0", "…", "—", "«", "»", "€", "£", "¥", "°", "±", "µ", "Ω", "∑", "√"]
PREFIXES = ["", "", "Echo: ", "You said: ", "Result: ", "Output: ", "Received: ", "echo ", "> ", "Input was: ",
            "Response: ", "Value: ", "data: ", "Text: "]
SUBJECTS = ["User", "File", "Build", "Deployment", "Upload", "Backup", "Sync", "Index", "Request", "Payment",
            "Migration", "Export", "Test run", "Job", "Task", "Message", "Record", "Session", "Cache", "Report"]
OUTCOMES = ["completed", "succeeded", "finished", "saved", "created", "updated", "deleted", "queued", "started",
            "failed", "timed out", "was cancelled", "provided the requested information", "declined the request",
            "is ready", "was skipped", "passed", "needs review"]
LATINISH = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
            "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
            "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur "
            "excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
            "laborum curabitur pretium tincidunt lacus nulla gravida orci a odio nullam varius turpis et commodo "
            "pharetra est eros bibendum elit nec luctus magna felis sollicitudin mauris integer").split()
FIXTURE_THINGS = ["prompt", "tool", "resource", "template", "sample", "test", "example", "demo", "fixture", "message",
                  "image", "notification", "completion", "request", "argument"]
FIXTURE_ADJ = ["simple", "basic", "sample", "test", "minimal", "plain", "static", "dynamic", "small", "complex"]
FIXTURE_WITH = ["without arguments", "with arguments", "with one argument", "with an embedded resource",
                "that returns an image", "for testing", "used in the demo", "with no content", "with a long name",
                "that echoes its input", "returning text", "with metadata"]


def _unit(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 12)))
    if r < 0.5:
        start = rng.randint(0, 20)
        return string.ascii_lowercase[start:start + rng.randint(3, 10)]
    if r < 0.65:
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(2, 16)))
    if r < 0.8:
        return rng.choice(LATINISH + SUBJECTS).lower()
    return "".join(rng.choice(string.digits) for _ in range(rng.randint(1, 10)))


def _length(rng: random.Random) -> int:
    return rng.choice([rng.randint(20, 200), rng.randint(200, 1500), rng.randint(1500, 6000)])


def repeated(rng: random.Random) -> str:
    """One short unit repeated, with or without separators, after an echo-like prefix."""
    unit, sep = _unit(rng), rng.choice(["", "", " ", "-", ",", "\n", "_", ". "])
    n = max(2, _length(rng) // (len(unit) + len(sep)))
    return rng.choice(PREFIXES) + sep.join([unit] * n)


def random_chars(rng: random.Random) -> str:
    """Random letters, or one character run."""
    n = _length(rng)
    r = rng.random()
    if r < 0.6:
        body = "".join(rng.choice(string.ascii_letters + " " * 3) for _ in range(n))
    else:
        body = rng.choice(string.ascii_letters + string.digits + "=-*#.") * n
    return rng.choice(PREFIXES) + body


def hex_blob(rng: random.Random) -> str:
    """Hexdumps, base64, digests."""
    n = _length(rng)
    raw = bytes(rng.getrandbits(8) for _ in range(max(8, n // 3)))
    r = rng.random()
    if r < 0.35:
        lines = []
        for off in range(0, len(raw), 16):
            chunk = raw[off:off + 16]
            hexpart = " ".join(f"{b:02x}" for b in chunk)
            asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{off:08x}  {hexpart:<47}  |{asc}|")
        return "\n".join(lines)
    if r < 0.7:
        b64 = base64.b64encode(raw).decode()
        if rng.random() < 0.5:
            b64 = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
        return rng.choice(["", "data:application/octet-stream;base64,", "Content: ", "blob: "]) + b64
    return "\n".join(f"{raw[i:i + 32].hex()}  {rng.choice(['file', 'layer', 'chunk', 'obj'])}-{i}"
                     for i in range(0, len(raw), 32))


def mixed_script(rng: random.Random) -> str:
    """Test strings of mixed scripts, emoji and odd spaces, often repeated."""
    unit = "".join(rng.choice(SCRIPTS + EMOJI + list(string.ascii_letters)) for _ in range(rng.randint(2, 8)))
    n = max(1, _length(rng) // max(1, len(unit)))
    if rng.random() < 0.6:
        return rng.choice(PREFIXES) + unit * n
    return rng.choice(PREFIXES) + "".join(rng.choice(SCRIPTS + EMOJI + [" "]) for _ in range(n * 3))


def status_line(rng: random.Random) -> str:
    """Emoji-prefixed status messages, one or several."""
    lines = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 6])):
        e = rng.choice(EMOJI) if rng.random() < 0.85 else ""
        subj, out = rng.choice(SUBJECTS), rng.choice(OUTCOMES)
        tail = rng.choice(["", "!", ".", f" ({rng.randint(1, 900)} ms)", f": {rng.randint(1, 50)} items", " 🎉"])
        lines.append(f"{e} {subj} {out}{tail}".strip())
    return "\n".join(lines)


def pseudo_latin(rng: random.Random) -> str:
    """Placeholder Latin of any length, with sentence case and punctuation."""
    words, n = [], max(6, _length(rng) // 6)
    for i in range(n):
        w = rng.choice(LATINISH)
        if i == 0 or words[-1].endswith("."):
            w = w.capitalize()
        if rng.random() < 0.08:
            w += rng.choice([".", ",", ";"])
        words.append(w)
    return " ".join(words) + "."


def fixture_sentence(rng: random.Random) -> str:
    """One-line descriptions as demo and test servers write them."""
    thing, adj = rng.choice(FIXTURE_THINGS), rng.choice(FIXTURE_ADJ)
    return rng.choice([
        f"This is a {adj} {thing} {rng.choice(FIXTURE_WITH)}.",
        f"A {adj} {thing} {rng.choice(FIXTURE_WITH)}",
        f"{adj.capitalize()} {thing} {rng.choice(FIXTURE_WITH)}.",
        f"Returns a {adj} {thing}.",
        f"This {thing} is {adj}.",
        f"{thing.capitalize()} {rng.randint(1, 200)}: {adj} {thing} {rng.choice(FIXTURE_WITH)}.",
    ])


# ---- held-out families: measured only ----

def numeric_table(rng: random.Random) -> str:
    cols = rng.randint(2, 7)
    sep = rng.choice([",", "\t", " | ", ";"])
    rows = [sep.join(f"c{i}" for i in range(cols))]
    for _ in range(rng.randint(3, 80)):
        rows.append(sep.join(f"{rng.uniform(-1e4, 1e4):.{rng.randint(0, 4)}f}" for _ in range(cols)))
    return "\n".join(rows)


def id_list(rng: random.Random) -> str:
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) if rng.random() < 0.5
           else base64.b32encode(bytes(rng.getrandbits(8) for _ in range(10))).decode()
           for _ in range(rng.randint(1, 60))]
    return rng.choice(["\n", ", ", " "]).join(ids)


def emoji_art(rng: random.Random) -> str:
    row = lambda: "".join(rng.choice(EMOJI[:12] + ["⬛", "⬜", "🟩", "🟥"]) for _ in range(rng.randint(3, 16)))  # noqa: E731
    return "\n".join(row() for _ in range(rng.randint(1, 20)))


def sentence_repeat(rng: random.Random) -> str:
    s = rng.choice([fixture_sentence(rng), status_line(rng).split("\n")[0], pseudo_latin(rng)[:80]])
    return rng.choice(PREFIXES) + rng.choice([" ", "\n"]).join([s] * rng.randint(2, 60))


def plant(rng: random.Random, text: str, payload: str) -> tuple[str, tuple[int, int]]:
    """``payload`` inserted into ``text`` at a random place, glued to the noise or set off by a
    space or line break; returns the text and the payload's span. Without such samples the
    benign families teach that noise around an instruction makes it harmless."""
    at = rng.randint(0, len(text))
    before, after = rng.choice([("", ""), (" ", " "), ("\n", "\n"), ("\n\n", "\n\n")])
    head = text[:at] + before
    return head + payload + after + text[at:], (len(head), len(head) + len(payload))


TRAIN_FAMILIES = {"repeated": repeated, "random_chars": random_chars, "hex_blob": hex_blob,
                  "mixed_script": mixed_script, "status_line": status_line, "pseudo_latin": pseudo_latin,
                  "fixture_sentence": fixture_sentence}
TEST_FAMILIES = {"numeric_table": numeric_table, "id_list": id_list, "emoji_art": emoji_art,
                 "sentence_repeat": sentence_repeat}
KIND_SHARE = {"prompt": 0.35, "tool_output": 0.6, "tool_description": 0.05}


def generate(rng: random.Random, n: int, families: dict) -> list[tuple[str, str, str]]:
    """``n`` (kind, family, text) triples, families in turn, kinds drawn by ``KIND_SHARE``."""
    names = sorted(families)
    kinds, weights = zip(*KIND_SHARE.items())
    out = []
    for i in range(n):
        fam = names[i % len(names)]
        out.append((rng.choices(kinds, weights)[0], fam, families[fam](rng)))
    return out
