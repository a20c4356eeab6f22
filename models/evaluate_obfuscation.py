#!/usr/bin/env python3
"""What spelling out leetspeak and letter-by-letter words (``normalize.deobfuscated_segments``)
buys and costs, through the product's code path (``InjectionDetector``, as the proxy and
``mcpfw detect`` run it), with and without it. Chooses nothing.

* recall: payloads of the held-out *test* injection families (never trained on), obfuscated
  by rules written here (leetspeak of some letters; letters spaced by " ", "-" or "."; words
  apart), alone and inside benign synthetic documents of the test carriers, as tool outputs
  and as prompts;
* false positives: every benign test-split text (the real pool's test part: code, docs,
  licences, changelogs, JSON, prose; the synthetic test benign documents), whether any
  region was rewritten, and whether a text flagged with the rewriting was not flagged
  without it.

    .venv/bin/python models/evaluate_obfuscation.py [--n 400] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

LEET = {"o": "0", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7"}


def leet(rng: random.Random, text: str) -> str:
    rate = rng.uniform(0.4, 0.9)
    return "".join(LEET[c.lower()] if c.lower() in LEET and rng.random() < rate else c for c in text)


def spaced(rng: random.Random, text: str) -> str:
    sep = rng.choice([" ", "-", ".", "_"])
    gap = {" ": "  ", "-": " ", ".": " ", "_": " "}[sep]
    words = [w for w in text.split() if w]
    if rng.random() < 0.5:
        words = [w.upper() for w in words]
    return gap.join(sep.join(ch for ch in w if ch.isalnum()) for w in words)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="obfuscated payloads per style")
    ap.add_argument("--seed", type=int, default=20261208)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    started = time.time()

    import calibration_pool
    import real_data
    import synth_data

    from detectors.injection import InjectionClassifier
    from firewall.detection_enrichers import injection as detection_enrichers  # (where the detector reads it)

    meta = json.loads((HERE / "injection_classifier.json").read_text())
    samples = synth_data.build_corpus(meta.get("seed", 1337), meta.get("n_tool_outputs", 7000),
                                      meta.get("n_descriptions", 3000), real_items=calibration_pool.load_pool())
    clf = InjectionClassifier(HERE)
    with_it = detection_enrichers.InjectionDetector(clf)
    without = detection_enrichers.InjectionDetector(clf)
    without_segments = detection_enrichers.deobfuscated_segments

    def flagged(detector, kind: str, text: str, rewrite: bool) -> bool:
        detection_enrichers.deobfuscated_segments = without_segments if rewrite else (lambda text, words: [])
        try:
            return any(a[1] == "injection" for a in detector._score_all(kind, text))
        finally:
            detection_enrichers.deobfuscated_segments = without_segments

    rng = random.Random(args.seed)
    carriers = [s for s in samples if s.split == "test" and s.kind == "tool_output" and s.label == 0
                and not real_data.is_real(s) and len(s.text) < 6000]
    report: dict = {"recall": {}, "benign": {}}
    for style, obfuscate in (("leet", leet), ("spaced", spaced)):
        for setting in ("tool_output alone", "tool_output in a document", "prompt"):
            hits = {"without": 0, "with": 0}
            for _ in range(args.n):
                family = rng.choice(sorted(synth_data.TO_TEST_FAMILIES))
                payload = obfuscate(rng, synth_data.make_payload(rng, family, "doc"))
                kind = "prompt" if setting == "prompt" else "tool_output"
                text = payload
                if setting == "tool_output in a document":
                    doc = rng.choice(carriers).text
                    at = doc.rfind("\n", 0, rng.randint(0, len(doc))) + 1
                    text = doc[:at] + payload + "\n" + doc[at:]
                hits["without"] += flagged(without, kind, text, False)
                hits["with"] += flagged(with_it, kind, text, True)
            report["recall"][f"{style} / {setting}"] = {k: round(v / args.n, 4) for k, v in hits.items()}
            print(style, setting, report["recall"][f"{style} / {setting}"], flush=True)
    for kind in ("tool_output", "prompt"):
        benign = [s for s in samples if s.split == "test" and s.kind == kind and s.label == 0]
        rewritten = newly = 0
        for s in benign:
            if clf.words and detection_enrichers.deobfuscated_segments(s.text, clf.words):
                rewritten += 1
                newly += flagged(with_it, kind, s.text, True) and not flagged(without, kind, s.text, False)
        report["benign"][kind] = {"n": len(benign), "rewritten": rewritten, "newly_flagged": newly}
        print("benign", kind, report["benign"][kind], flush=True)
    report["seconds"] = round(time.time() - started, 1)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
