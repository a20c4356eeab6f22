#!/usr/bin/env python3
"""Fit the intent detector's calibration (rules/intent.yaml) on labelled calls.

    .venv/bin/python bench/calibrate_intent.py [--write]

The labelled set is bench/data/intent_pairs.json; tool descriptions come live from the
real servers (bench/mcp_peers.py), as the proxy would see them. Two one-feature logistic
models map cosine similarity to P(call does not fit): task text vs call, and nearest
earlier legitimate call vs call (history). Prints the fit, its ROC AUC and accuracy at
the 0.5 threshold on the same data (the set is small: these are sanity numbers, not a
held-out evaluation), and with --write updates rules/intent.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mcp_peers import fetch_lists, server_commands  # noqa: E402

from detectors.injection import get_classifier  # noqa: E402
from detectors.intent import MiniLmEmbedder, call_text  # noqa: E402


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """Class-balanced logistic fit by Newton's method, P(y=1) = sigmoid(w*x + b).

    Returns (center, slope) with slope = -w. Balancing matters: mismatching pairs
    outnumber fitting ones ten to one, and an unweighted fit flags most legitimate calls.
    """
    weight = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))
    w = b = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(w * x + b)))
        r = weight * (p - y)
        g = np.array([np.sum(r * x) + l2 * w, np.sum(r)])
        s = weight * p * (1 - p)
        h = np.array([[np.sum(s * x * x) + l2, np.sum(s * x)], [np.sum(s * x), np.sum(s) + 1e-9]])
        step = np.linalg.solve(h, g)
        w, b = w - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    slope = -w
    return float(-b / w), float(slope)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="update rules/intent.yaml")
    args = ap.parse_args()
    data = json.loads((ROOT / "bench/data/intent_pairs.json").read_text())
    descriptions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for command in server_commands(Path(tmp)).values():
            for tool in fetch_lists(command)["tools/list"]["result"]["tools"]:
                descriptions[tool["name"]] = tool.get("description") or ""
    emb = MiniLmEmbedder(get_classifier())

    def vec(call: list) -> np.ndarray:
        return emb.embed_texts([call_text(call[0], call[1], descriptions.get(call[0]))])[0]

    tasks = data["tasks"]
    sims_task, y_task, sims_hist, y_hist = [], [], [], []
    for i, task in enumerate(tasks):
        t = emb.embed_texts([task["task"]])[0]
        others = [c for j, other in enumerate(tasks) if j != i for c in other["fits"]] + data["suspicious"]
        for call, mismatch in [(c, 0) for c in task["fits"]] + [(c, 1) for c in others]:
            sims_task.append(float(t @ vec(call)))
            y_task.append(mismatch)
        # History: leave one of the task's calls out, nearest of the rest.
        own = [vec(c) for c in task["fits"]]
        for k, v in enumerate(own):
            rest = [u for m, u in enumerate(own) if m != k]
            if rest:
                sims_hist.append(max(float(u @ v) for u in rest))
                y_hist.append(0)
        for call in others:
            v = vec(call)
            sims_hist.append(max(float(u @ v) for u in own))
            y_hist.append(1)
    out = {}
    for name, xs, ys in (("task", sims_task, y_task), ("history", sims_hist, y_hist)):
        x, y = np.array(xs), np.array(ys)
        center, slope = fit_logistic(x, y)
        p = 1 / (1 + np.exp(-slope * (center - x)))
        out[name] = {
            "center": round(center, 4), "slope": round(slope, 3), "n": int(len(x)), "mismatch_share": round(float(y.mean()), 3),
            "auc": round(auc(-x, y), 4), "accuracy_at_0.5": round(float(np.mean((p >= 0.5) == (y == 1))), 4),
        }
        for cut in (0.5, 0.8, 0.9):
            out[name][f"recall_at_{cut}"] = round(float(np.mean(p[y == 1] >= cut)), 4)
            out[name][f"false_positive_rate_at_{cut}"] = round(float(np.mean(p[y == 0] >= cut)), 4)
    print(json.dumps(out, indent=2))
    if args.write:
        import yaml

        path = ROOT / "rules/intent.yaml"
        doc = yaml.safe_load(path.read_text())
        for name in ("task", "history"):
            doc["calibration"][name] = {"center": out[name]["center"], "slope": out[name]["slope"]}
            doc["fit"][name] = {k: v for k, v in out[name].items() if k not in ("center", "slope")}
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
