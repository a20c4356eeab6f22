#!/usr/bin/env python3
"""Window-level data for fine-tuning the MiniLM encoder (models/finetune_encoder.py).

Runs in the project venv (Python 3.13, no torch). Builds the same corpus as
train_classifier.py (synthetic + the real-text pool split by package) and writes the
word-piece ids of labelled windows of the TRAINING split (and, for monitoring only, of the
validation split) to models/.cache/finetune_windows.jsonl. The test split is never read
past the corpus build (its samples are skipped).

Windows are made exactly as serving makes them (detectors/injection.py: 64 pieces, stride 32,
sentence windows for prompts and tool outputs) and labelled with train_classifier's
window_labels (1 = contains most of a planted injection, 0 = clean; ambiguous windows are
dropped). Per training document: every positive window (at most 2) and up to 2 negative
windows chosen with a seeded RNG; prompts of one window contribute that window. Per kind the
number of windows is capped (--per-kind), so the fine-tune sees each kind in a fixed ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python models/finetune_data.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from detectors import injection as inj  # noqa: E402
import synth_data  # noqa: E402
from train_classifier import Featurizer, window_labels  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1337, help="corpus seed (as train_classifier.py)")
    ap.add_argument("--pick-seed", type=int, default=20261206, help="seed of the window sampling")
    ap.add_argument("--per-kind", default="prompt=9000,tool_output=5000,tool_description=3000",
                    help="max training windows per kind")
    ap.add_argument("--val-per-kind", type=int, default=600, help="validation windows per kind (monitoring)")
    ap.add_argument("--out", type=Path, default=HERE / ".cache" / "finetune_windows.jsonl")
    args = ap.parse_args()

    import calibration_pool

    t0 = time.time()
    real_items = calibration_pool.load_pool()
    samples = synth_data.build_corpus(args.seed, 7000, 3000, 1.0, real_items=real_items)
    print(f"[data] {len(samples)} samples ({time.time() - t0:.0f}s)", flush=True)
    fz = Featurizer(HERE, 1, inj.DEFAULT_WINDOW_TOKENS, inj.DEFAULT_STRIDE,
                    sentence_kinds=("prompt", "tool_output"))
    caps = {k: int(v) for k, v in (p.split("=") for p in args.per_kind.split(","))}
    rng = random.Random(args.pick_seed)
    rows = {"train": defaultdict(list), "val": defaultdict(list)}
    for s in samples:
        if s.split not in ("train", "val"):
            continue  # the test split is not touched
        a = fz.analyse(s.text, s.kind)
        wl = window_labels(s, a)
        pos = [i for i in range(len(a.windows)) if wl[i] == 1]
        neg = [i for i in range(len(a.windows)) if wl[i] == 0]
        pick = rng.sample(pos, min(2, len(pos))) + rng.sample(neg, min(2, len(neg)))
        for i in pick:
            w = a.windows[i]
            ids = a.ids[w.tok_start:w.tok_end].tolist()
            if not ids:
                continue
            rows[s.split][s.kind].append({"ids": ids, "label": int(wl[i]), "kind": s.kind, "split": s.split,
                                          "group": s.group, "real": s.group.startswith("pool")})
    n = defaultdict(int)
    with open(args.out, "w", encoding="utf-8") as fh:
        for split, cap_of in (("train", caps), ("val", defaultdict(lambda: args.val_per_kind))):
            for k in inj.KINDS:
                lst = rows[split][k]
                rng.shuffle(lst)
                for r in lst[:cap_of[k]]:
                    fh.write(json.dumps(r) + "\n")
                    n[f"{split}/{k}/{r['label']}"] += 1
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    print(f"[done] {dict(sorted(n.items()))} -> {args.out} sha256_16 {digest} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
