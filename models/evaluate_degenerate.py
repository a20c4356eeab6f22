#!/usr/bin/env python3
"""False positives of the classifier on benign text that is barely language.

Scores, with the serving code and the shipped thresholds (nothing is chosen here):

* ``held_out``: the families of ``degenerate_data.TEST_FAMILIES`` (numeric tables, id lists,
  emoji art, a sentence repeated), never in the training corpus;
* ``train_families``: fresh draws (another seed) of ``TRAIN_FAMILIES``, the families trained on;
* ``planted_held_out``: texts of the held-out families with a payload of the classifier's
  held-out *test* injection families planted in them (glued to the noise or set off): the
  recall on injections hidden in such noise, which the benign families must not buy off;
* ``real_outputs``: texts real MCP servers used in this project's tests return or list (echoes of
  long inputs, elicitation results, prompt texts of server-everything, a hexdump), each with the
  kind it is scored as. These are where the problem was found, and the training families were
  written after them, so they are in-distribution now: a regression check, not a held-out result.

For each kind it prints the recall on the planted set, the false-positive rate at the
shipped threshold and the highest score, and the false-positive rate of each family (all
kinds together).

    .venv/bin/python models/evaluate_degenerate.py [--models-dir DIR] [--n 600] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import degenerate_data  # noqa: E402
import synth_data  # noqa: E402
from detectors.injection import InjectionClassifier  # noqa: E402


def real_outputs() -> list[tuple[str, str, str]]:
    hexdump = "\n".join(f"{i:08x}: " + " ".join(f"{(i * 7 + j) % 256:02x}" for j in range(16)) for i in range(0, 512, 16))
    return [
        ("tool_output", "echo_long", "Echo: " + "abcdefghij" * 100),
        ("tool_output", "echo_mixed_script", "Echo: " + "a😀é漢\u00a0b" * 200),
        ("tool_output", "echo_digits", "Echo: " + "0123456789" * 200),
        ("tool_output", "elicitation_result", "✅ User provided the requested information!"),
        ("tool_output", "elicitation_declined", "❌ User declined to provide the requested information."),
        ("tool_output", "hexdump", hexdump),
        ("tool_output", "sum", "The sum of 2 and 3 is 5."),
        ("prompt", "simple_prompt", "This is a simple prompt without arguments."),
        ("prompt", "lorem", "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
                            "incididunt ut labore et dolore magna aliqua."),
        ("tool_description", "echo_tool", "Echoes back the input"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=HERE)
    ap.add_argument("--n", type=int, default=600, help="texts per generated set")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    clf = InjectionClassifier(args.models_dir)
    sets = {
        "held_out": degenerate_data.generate(random.Random(args.seed), args.n, degenerate_data.TEST_FAMILIES),
        "train_families": degenerate_data.generate(random.Random(args.seed + 1), args.n,
                                                   degenerate_data.TRAIN_FAMILIES),
        "real_outputs": real_outputs(),
    }
    prng = random.Random(args.seed + 2)
    planted = []
    for kind, fam, text in degenerate_data.generate(prng, args.n, degenerate_data.TEST_FAMILIES):
        payload = synth_data.make_payload(prng, prng.choice(sorted(synth_data.TO_TEST_FAMILIES)), "doc")
        planted.append((kind, fam, degenerate_data.plant(prng, text, payload)[0]))
    report: dict = {"thresholds": clf.thresholds}
    found: dict[str, list] = defaultdict(list)
    for kind, fam, text in planted:
        found[kind].append(clf.score(text, kind).label == "injection")
    report["planted_held_out"] = {k: {"n": len(v), "recall": round(sum(v) / len(v), 4)} for k, v in sorted(found.items())}
    print("planted_held_out", json.dumps(report["planted_held_out"]))
    for name, items in sets.items():
        per_kind: dict[str, list] = defaultdict(list)
        per_family: dict[str, list] = defaultdict(list)
        worst: dict[str, tuple[float, str]] = {}
        for kind, fam, text in items:
            r = clf.score(text, kind)
            per_kind[kind].append(r.label == "injection")
            per_family[fam].append(r.label == "injection")
            if r.score > worst.get(kind, (-1.0, ""))[0]:
                worst[kind] = (r.score, fam)
            if name == "real_outputs":
                report.setdefault("real_scores", {})[fam] = round(r.score, 4)
        report[name] = {k: {"n": len(v), "fpr": round(sum(v) / len(v), 4), "max_score": round(worst[k][0], 4),
                            "max_family": worst[k][1]} for k, v in sorted(per_kind.items())}
        if name != "real_outputs":
            report[name]["by_family"] = {f: round(sum(v) / len(v), 4) for f, v in sorted(per_family.items())}
        print(name, json.dumps(report[name]))
    print("real_scores", json.dumps(report["real_scores"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
