#!/usr/bin/env python3
"""Measure what the product reports for tool descriptions on the held-out test split.

For a tool description the firewall has two detectors: the poisoning rules
(``rules/poisoning.yaml``, which the default policy acts on) and the injection classifier
(``detectors.poisoning.classifier``, off by default). ``mcpfw detect`` reports both at once: its
score is the higher of the classifier's score and the rules' strongest evidence (high 1.0,
medium 0.5, low 0.2), its label ``poisoned`` on a high-severity hit. This script scores the
test documents of kind ``tool_description`` (the synthetic test split, and the real texts of
the pool's test part with and without a planted test-family payload: the same documents
``calibrate_thresholds.py`` measures the classifier on) through that code path
(``firewall.detect_cli.DetectRunner``) and reports, per set:

* the rules alone, as the default policy reads them (a hit of high severity, or medium hits
  in two categories): recall and false-positive rate;
* ``mcpfw detect``'s combined score: ROC-AUC and recall at 1 % false positives on the test
  benign documents themselves (a yardstick, not an operating point), and recall and false
  positives of its label (``poisoned``, or ``injection`` at the shipped classifier threshold).

Nothing is chosen here: every threshold is the shipped one. The real pool depends on the
installed packages; the report prints its digest (``calibration_pool.manifest``).

    .venv/bin/python models/evaluate_detect.py [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from calibrate_thresholds import rate, roc_auc, threshold_at_fpr  # noqa: E402

MEDIUM_CATEGORIES = 2  # data.mcpfw.config.detectors.poisoning.medium_categories (default bundle)


def rules_poisoned(findings: dict) -> bool:
    """The default policy's reading of the poisoning evidence (rules/poisoning.rego)."""
    hits = [h for item in (findings.get("poisoning") or {}).get("items", []) for h in item["hits"]]
    if any(h["severity"] == "high" for h in hits):
        return True
    return len({h["category"] for h in hits if h["severity"] == "medium"}) >= MEDIUM_CATEGORIES


def measure(pos: list[dict], neg: list[dict]) -> dict:
    out: dict = {"n_pos": len(pos), "n_neg": len(neg)}
    if not pos or not neg:
        return out
    rp = np.asarray([r["rules"] for r in pos], float)
    rn = np.asarray([r["rules"] for r in neg], float)
    sp = np.asarray([r["score"] for r in pos])
    sn = np.asarray([r["score"] for r in neg])
    lp = np.asarray([r["label"] != "benign" for r in pos], float)
    ln = np.asarray([r["label"] != "benign" for r in neg], float)
    y = np.concatenate([np.ones(len(sp)), np.zeros(len(sn))])
    out["rules_recall"] = round(float(rp.mean()), 4)
    out["rules_fpr"] = round(float(rn.mean()), 4)
    out["detect_roc_auc"] = round(roc_auc(y, np.concatenate([sp, sn])), 4)
    out["detect_recall_at_1pct_test_fpr"] = round(rate(sp, threshold_at_fpr(sn, 0.01)), 4)
    out["detect_label_recall"] = round(float(lp.mean()), 4)
    out["detect_label_fpr"] = round(float(ln.mean()), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the report (JSON) here")
    args = ap.parse_args()
    started = time.time()

    import calibration_pool
    import real_data
    import synth_data

    from firewall.config import load_config
    from firewall.detect_cli import DetectRunner

    meta = json.loads((HERE / "injection_classifier.json").read_text())
    pool = calibration_pool.load_pool()
    manifest = calibration_pool.manifest(pool)
    samples = synth_data.build_corpus(meta.get("seed", 1337), meta.get("n_tool_outputs", 7000),
                                      meta.get("n_descriptions", 3000), real_items=pool)
    test = [s for s in samples if s.split == "test" and s.kind == "tool_description"]
    runner = DetectRunner(load_config(None))
    scored: dict[str, dict[int, list[dict]]] = {"synthetic": {0: [], 1: []}, "real": {0: [], 1: []}}
    for s in test:
        out = runner.run({"text": s.text, "kind": "tool_description"})
        part = "real" if real_data.is_real(s) else "synthetic"
        scored[part][s.label].append({"score": out["score"], "label": out["label"],
                                      "rules": rules_poisoned(out["findings"]), "group": s.group})
    both = {label: scored["synthetic"][label] + scored["real"][label] for label in (0, 1)}
    report = {
        "kind": "tool_description",
        "pool_sha256_16": manifest["sha256_16_all"],
        "classifier_threshold": meta["thresholds"]["tool_description"],
        "synthetic_test": measure(scored["synthetic"][1], scored["synthetic"][0]),
        "real_test": measure(scored["real"][1], scored["real"][0]),
        "all_test": measure(both[1], both[0]),
        "seconds": round(time.time() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
