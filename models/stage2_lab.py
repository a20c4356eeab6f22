#!/usr/bin/env python3
"""Compare stage-2 designs offline on a ``train_classifier.py --dump-stage2`` file (development only).

    .venv/bin/python models/stage2_lab.py DUMP.npz single:1337 single:1 bag:1337+1+2+3+4 bag:1+2+3:drop=logit

A training run spends most of its time embedding windows; stage 2 itself fits in seconds. The dump
holds stage 2's training rows and, for every validation document, the feature rows of the windows
the cascade embeds, so a stage-2 design is fitted and scored here in seconds with the training
script's own scaler, sample weights and MLP settings. Each design prints ROC-AUC and recall at 1 %
FPR of the validation benign documents per kind (the threshold the training run's model selection
takes, less its floor at the stage-1 screen), and, when the run held a
source out (``--holdout-source``), the same for that source's prompts and for those under 60
characters. Nothing here is shipped or touches the test split.

Designs:

* ``single:SEED``: one MLP of 128 ReLU units, alpha 0.01, early stopping (the training defaults);
* ``bag:SEED+SEED+...``: one such MLP per seed, their probabilities averaged;
* either with ``:drop=BLOCK+BLOCK`` appended: without those feature blocks (``emb``, ``side``,
  ``kind``, ``logit``), e.g. ``single:1337:drop=logit``;
* ``perkind:SEED``: one MLP per kind, each fitted on that kind's rows only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import train_classifier as tc

KINDS = tc.KINDS
EMBEDDING = 384
CODE_GROUPS = ("pool/code_py", "pool/code_js", "pool/code_other")


class Dump:
    """The arrays of a ``--dump-stage2`` file, standardised as the training run does."""

    def __init__(self, path: Path) -> None:
        z = np.load(path, allow_pickle=False)
        X2 = z["X2"]
        mean, scale = X2.mean(0), X2.std(0) + 1e-6
        self.X = (X2 - mean) / scale
        self.y = z["y2"]
        self.weight = z["w2"] * len(z["w2"]) / z["w2"].sum()
        self.kind = z["train_kind"]
        self.val_X = (z["val_X"] - mean) / scale
        self.val_rows = z["val_rows"]
        self.val_fallback = z["val_fallback"]
        self.val_kind, self.val_label = z["val_kind"], z["val_label"]
        self.val_group, self.val_len = z["val_group"], z["val_len"]
        self.starts = np.concatenate([[0], np.cumsum(self.val_rows)])
        self.row_kind = np.repeat(self.val_kind, self.val_rows)
        self.width = X2.shape[1]

    def doc_scores(self, row_scores: np.ndarray) -> np.ndarray:
        """A document's score: its highest window, or the capped stage-1 score when none was embedded."""
        out = np.empty(len(self.val_kind))
        for i in range(len(out)):
            a, b = self.starts[i], self.starts[i + 1]
            out[i] = row_scores[a:b].max() if b > a else self.val_fallback[i]
        return out

    def block(self, name: str) -> list[int]:
        """Column indices of a feature block (embedding, side features, kind one-hot, stage-1 logit)."""
        n = self.width
        return {"emb": list(range(EMBEDDING)), "side": list(range(EMBEDDING, n - 4)),
                "kind": list(range(n - 4, n - 1)), "logit": [n - 1]}[name]


def fit(X: np.ndarray, y: np.ndarray, weight: np.ndarray, seed: int):
    model = tc.stage2_mlp(128, 0.01, seed)
    model.fit(X, y, sample_weight=weight)
    return model


def threshold(dump: Dump, kind: str, scores: np.ndarray) -> float:
    """The training run's union rule: 1 % of the kind's benign validation documents, and for tool
    outputs also of the real source-code files alone (the screen's floor is not applied)."""
    mine = dump.val_kind == kind
    candidates = [tc.threshold_at_fpr(dump.val_label[mine], scores[mine])]
    if kind == "tool_output":
        code = mine & np.isin(dump.val_group, CODE_GROUPS)
        if code.any():
            candidates.append(tc.threshold_at_fpr(dump.val_label[code], scores[code]))
    return max(candidates)


def report(dump: Dump, scores: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for kind in KINDS:
        mine = dump.val_kind == kind
        labels, s = dump.val_label[mine], scores[mine]
        limit = threshold(dump, kind, scores)
        out[kind] = [round(tc.roc_auc(labels, s), 4), round(tc.recall_at(labels, s, limit)[0], 3)]
        held = mine & (dump.val_label == 1) & np.char.startswith(dump.val_group.astype(str), "holdout/")
        if kind == "prompt" and held.any():
            benign, found = s[labels == 0], scores[held]
            out["held_out_source"] = [
                round(tc.roc_auc(np.r_[np.zeros(len(benign)), np.ones(len(found))], np.r_[benign, found]), 4),
                round(float((found >= limit).mean()), 3),
                round(float((scores[held & (dump.val_len < 60)] >= limit).mean()), 3)]
    return out


def design_scores(dump: Dump, design: str) -> np.ndarray:
    name, _, rest = design.partition(":")
    if name in ("single", "bag"):  # a single fit is a bag of one
        seeds, _, dropped_blocks = rest.partition(":drop=")
        dropped = {i for b in dropped_blocks.split("+") if b for i in dump.block(b)}
        keep = [i for i in range(dump.width) if i not in dropped]
        X, val_X = dump.X[:, keep], dump.val_X[:, keep]
        members = [int(s) for s in seeds.split("+")]
        rows = sum(fit(X, dump.y, dump.weight, s).predict_proba(val_X)[:, 1] for s in members) / len(members)
        return dump.doc_scores(rows)
    if name == "perkind":
        rows = np.zeros(len(dump.val_X))
        for kind in KINDS:
            mine = dump.kind == kind
            model = fit(dump.X[mine], dump.y[mine], dump.weight[mine] / dump.weight[mine].mean(), int(rest))
            rows[dump.row_kind == kind] = model.predict_proba(dump.val_X[dump.row_kind == kind])[:, 1]
        return dump.doc_scores(rows)
    raise SystemExit(f"unknown design {design!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", type=Path)
    parser.add_argument("designs", nargs="+")
    args = parser.parse_args()
    dump = Dump(args.dump)
    for design in args.designs:
        started = time.time()
        result = report(dump, design_scores(dump, design))
        print(json.dumps({"design": design, "seconds": round(time.time() - started, 1),
                          "auc_recall_at_1pct": result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
