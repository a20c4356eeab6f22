#!/usr/bin/env python3
"""Re-choose the injection classifier's per-kind decision thresholds on real benign text, and
evaluate the shipped artefacts on the held-out test split without retraining.

Scores, with the shipped model in the default cascade mode (``InjectionClassifier()``, the
serving code), the validation and test splits of the training corpus (``synth_data``, same
seed and sizes as the shipped run) and the calibration pool of real benign texts
(``calibration_pool.py``). Per kind the new threshold is the smallest one at which

* at most ``--fpr`` (1 %) of the benign validation documents together with the pool of
  that kind are flagged, and
* for ``tool_output``, at most ``--fpr`` of the pool's source-code files on their own
  (``code_py``, ``code_js``, ``code_other``): source files read through a filesystem / git
  server are the common real case, so the mix of the pool must not hide them;

and never below the stage-1 screen. The test split is only measured, never used to choose.

    .venv/bin/python models/calibrate_thresholds.py --evaluate-only   # test metrics at the shipped thresholds
    .venv/bin/python models/calibrate_thresholds.py                   # choose, report, write nothing
    .venv/bin/python models/calibrate_thresholds.py --write           # also update injection_classifier.json
                                                                       # ("thresholds" only) and metrics.json

Document scores are the maximum over the embedded windows with early accept switched off
(thresholds above 1 while scoring), so one scoring pass serves every threshold: with early
accept the label at a threshold is the same, only the reported score can be lower. Scores
are cached in models/.cache/calibration_scores.json (gitignored), keyed by the model files,
detectors/injection.py and the text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from detectors import injection as inj  # noqa: E402

KINDS = inj.KINDS
CACHE = HERE / ".cache" / "calibration_scores.json"
NO_EARLY_ACCEPT = {k: 2.0 for k in KINDS}
POOL_TOOL_OUTPUT_CODE = ("code_py", "code_js", "code_other")


# --------------------------------------------------------------------------
# metrics (same definitions as train_classifier.py)
# --------------------------------------------------------------------------

def threshold_at_fpr(neg: np.ndarray, fpr: float = 0.01) -> float:
    """Smallest threshold flagging at most ``fpr`` of ``neg`` (score >= thr flags);
    identical to train_classifier.threshold_at_fpr on the benign items."""
    neg = np.sort(np.asarray(neg, dtype=np.float64))[::-1]
    k = int(np.floor(fpr * len(neg)))
    if k >= len(neg):
        return float(neg[-1])
    return float(np.nextafter(neg[k], np.inf))


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half (equals sklearn.metrics.roc_auc_score)."""
    y = np.asarray(y)
    s = np.asarray(s, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[y == 1].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def rate(scores, thr) -> float:
    scores = np.asarray(scores)
    return float((scores >= thr).mean()) if len(scores) else float("nan")


# --------------------------------------------------------------------------
# scoring with the serving code, cached
# --------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_key(models_dir: Path, mode: str) -> str:
    """Identity of everything a score depends on (the thresholds are not: early accept is off)."""
    meta = json.loads((models_dir / inj.CLASSIFIER_META).read_text())
    meta.pop("thresholds", None)
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for f in (inj.CLASSIFIER_NPZ, inj.ONNX_FILE, inj.TOKENIZER_FILE, inj.RULES_FILE):
        h.update(_sha(models_dir / f).encode())
    h.update(_sha(Path(inj.__file__)).encode())
    h.update(mode.encode())
    return h.hexdigest()[:16]


class Scorer:
    def __init__(self, models_dir: Path, mode: str = "cascade", use_cache: bool = True):
        self.clf = inj.InjectionClassifier(models_dir, mode=mode, cache_size=0, thresholds=NO_EARLY_ACCEPT)
        self.key = model_key(models_dir, mode)
        self.use_cache = use_cache
        self.cache: dict[str, list] = {}
        if use_cache and CACHE.is_file():
            data = json.loads(CACHE.read_text())
            self.cache = data.get(self.key, {})
        self.n_new = 0

    def __call__(self, text: str, kind: str) -> tuple[float, int]:
        h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, person=kind.encode()[:16]).hexdigest()
        hit = self.cache.get(h)
        if hit is not None:
            return hit[0], hit[1]
        r = self.clf.score(text, kind)
        self.cache[h] = [r.score, r.embedded_windows]
        self.n_new += 1
        if self.use_cache and self.n_new % 2000 == 0:
            self.save()
        return r.score, r.embedded_windows

    def save(self):
        if not self.use_cache:
            return
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
        data[self.key] = self.cache
        tmp = CACHE.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(CACHE)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def _group_key(s) -> str:
    return s.group.split("+")[-1] if s.label else "benign:" + s.group


def _r(x, n=4):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=HERE)
    ap.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate per kind (and per pool source)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="only measure the shipped thresholds on validation / test (and the pool, unless --no-pool)")
    ap.add_argument("--no-pool", action="store_true", help="with --evaluate-only: skip the calibration pool")
    ap.add_argument("--full-docs", type=int, default=500,
                    help="first N test documents per kind also scored in mode='full' (as train_classifier.py); 0: skip")
    ap.add_argument("--write", action="store_true", help="write the new thresholds and the calibration metrics")
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    t_start = time.time()

    import synth_data
    import calibration_pool

    meta_path = args.models_dir / inj.CLASSIFIER_META
    meta_text = meta_path.read_text()
    meta = json.loads(meta_text)
    shipped = {k: float(v) for k, v in meta["thresholds"].items()}  # in the artefact now
    screens = {k: float(v) for k, v in meta["screen_thresholds"].items()}
    metrics_path = args.models_dir / "metrics.json"
    old_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    # "before" = the thresholds the training run chose on validation (what shipped until the calibration),
    # so a re-run after --write still compares against them
    before = {k: float(v) for k, v in old_metrics.get("val_thresholds", shipped).items()}

    samples = synth_data.build_corpus(meta.get("seed", 1337), meta.get("n_tool_outputs", 7000), meta.get("n_descriptions", 3000))
    samples = [s for s in samples if s.split in ("val", "test")]
    print(f"[data] {len(samples)} validation/test documents ({time.time() - t_start:.0f}s)", flush=True)
    pool = [] if (args.evaluate_only and args.no_pool) else calibration_pool.build_pool()
    pool_manifest = calibration_pool.manifest(pool) if pool else None
    if pool:
        print(f"[pool] {pool_manifest['totals']} ({time.time() - t_start:.0f}s)", flush=True)
        # the pool must not contain a validation / test text
        vt = {(s.kind, s.text) for s in samples}
        clash = sum((p.kind, p.text) in vt for p in pool)
        assert clash == 0, f"{clash} pool texts are also validation/test texts"

    scorer = Scorer(args.models_dir, "cascade", use_cache=not args.no_cache)
    t0 = time.time()
    S = [scorer(s.text, s.kind) for s in samples]
    print(f"[score] validation/test in {time.time() - t0:.0f}s ({scorer.n_new} new)", flush=True)
    t0 = time.time()
    P = [scorer(p.text, p.kind) for p in pool]
    print(f"[score] pool in {time.time() - t0:.0f}s", flush=True)
    scorer.save()

    def sel(split, kind, label):
        return np.asarray([sc for (sc, _), s in zip(S, samples) if s.split == split and s.kind == kind and s.label == label])

    def pool_scores(kind, sources=None):
        return np.asarray([sc for (sc, _), p in zip(P, pool) if p.kind == kind and (sources is None or p.source in sources)])

    # ---- choose ------------------------------------------------------------------
    chosen, rule = {}, {}
    if pool:
        for k in KINDS:
            union = np.concatenate([sel("val", k, 0), pool_scores(k)])
            cands = {"validation+pool": threshold_at_fpr(union, args.fpr)}
            if k == "tool_output":
                cands["pool:code"] = threshold_at_fpr(pool_scores(k, set(POOL_TOOL_OUTPUT_CODE)), args.fpr)
            cands["screen"] = screens[k] + 1e-6
            which = max(cands, key=cands.get)
            chosen[k] = cands[which]
            rule[k] = {"binding": which, "candidates": {c: _r(v, 8) for c, v in cands.items()}}
            print(f"[thresholds] {k}: {chosen[k]:.8f} (binding: {which}; training run {before[k]:.4f}, "
                  f"in the artefact {shipped[k]:.8f})", flush=True)
    new = chosen if (pool and not args.evaluate_only) else shipped

    # cross-fitted pool FPR: thresholds chosen with half the pool's packages, measured on the other half
    crossfit = {}
    if pool and not args.evaluate_only:
        fold = np.asarray([int(hashlib.sha256(calibration_pool.package_of_origin(p.origin).encode()).hexdigest(), 16) % 2
                           for p in pool])
        kinds_arr = np.asarray([p.kind for p in pool])
        src_arr = np.asarray([p.source for p in pool])
        ps_all = np.asarray([sc for sc, _ in P])
        for k in KINDS:
            flagged, total = 0, 0
            code_flagged, code_total = 0, 0
            per_fold_thr = []
            for f in (0, 1):
                fit = (kinds_arr == k) & (fold != f)
                held = (kinds_arr == k) & (fold == f)
                cands = [threshold_at_fpr(np.concatenate([sel("val", k, 0), ps_all[fit]]), args.fpr), screens[k] + 1e-6]
                if k == "tool_output":
                    cands.append(threshold_at_fpr(ps_all[fit & np.isin(src_arr, POOL_TOOL_OUTPUT_CODE)], args.fpr))
                t = max(cands)
                per_fold_thr.append(t)
                flagged += int((ps_all[held] >= t).sum())
                total += int(held.sum())
                code = held & np.isin(src_arr, POOL_TOOL_OUTPUT_CODE)
                code_flagged += int((ps_all[code] >= t).sum())
                code_total += int(code.sum())
            crossfit[k] = {"fpr_held_out_packages": _r(flagged / max(1, total)), "n": total,
                           "thresholds_by_fold": [_r(t, 8) for t in per_fold_thr]}
            if k == "tool_output":
                crossfit[k]["code_fpr_held_out_packages"] = _r(code_flagged / max(1, code_total))
                crossfit[k]["code_n"] = code_total
        print(f"[crossfit] {json.dumps(crossfit)}", flush=True)

    # ---- measure -----------------------------------------------------------------
    report = {}
    for k in KINDS:
        vb, vi = sel("val", k, 0), sel("val", k, 1)
        tb, ti = sel("test", k, 0), sel("test", k, 1)
        y = np.concatenate([np.ones(len(ti)), np.zeros(len(tb))])
        s_ = np.concatenate([ti, tb])
        e = {
            "test_n_pos": len(ti), "test_n_neg": len(tb), "test_roc_auc_rescored": _r(roc_auc(y, s_)),
            "test_recall_at_1pct_fpr_rescored": _r(rate(ti, threshold_at_fpr(tb, 0.01))),
        }
        for name, thr in (("before", before[k]), ("after", new[k])):
            e[name] = {
                "threshold": _r(thr, 8),
                "test_recall": _r(rate(ti, thr)), "test_fpr": _r(rate(tb, thr)),
                "val_recall": _r(rate(vi, thr)), "val_fpr": _r(rate(vb, thr)),
            }
            if pool:
                e[name]["pool_fpr"] = _r(rate(pool_scores(k), thr))
                e[name]["pool_fpr_by_source"] = {src: [_r(rate(pool_scores(k, {src}), thr)), len(pool_scores(k, {src}))]
                                                 for src in sorted({p.source for p in pool if p.kind == k})}
                e[name]["validation_plus_pool_fpr"] = _r(rate(np.concatenate([vb, pool_scores(k)]), thr))
            by = defaultdict(list)
            for (sc, _), s in zip(S, samples):
                if s.split == "test" and s.kind == k:
                    by[_group_key(s)].append(sc >= thr)
            e[name]["test_flag_rate_by_group"] = {g: [_r(np.mean(v), 3), len(v)] for g, v in sorted(by.items())}
        report[k] = e
        print(f"[{k}] test AUC {e['test_roc_auc_rescored']}  before {json.dumps({x: v for x, v in e['before'].items() if x not in ('test_flag_rate_by_group', 'pool_fpr_by_source')})}", flush=True)
        print(f"[{k}]               after  {json.dumps({x: v for x, v in e['after'].items() if x not in ('test_flag_rate_by_group', 'pool_fpr_by_source')})}", flush=True)
        if pool:
            print(f"[{k}] pool FPR by source after: {e['after']['pool_fpr_by_source']}", flush=True)
        print(f"[{k}] test flag rate by group after: {e['after']['test_flag_rate_by_group']}", flush=True)

    # ---- full mode on the same test subsample as train_classifier.py --------------
    full = {}
    if args.full_docs > 0:
        t0 = time.time()
        fscorer = Scorer(args.models_dir, "full", use_cache=not args.no_cache)
        counts = defaultdict(int)
        res = defaultdict(lambda: ([], []))
        for s in samples:
            if s.split != "test" or counts[s.kind] >= args.full_docs:
                continue
            counts[s.kind] += 1
            res[s.kind][s.label].append(fscorer(s.text, s.kind)[0])
        fscorer.save()
        for k in KINDS:
            neg, pos = (np.asarray(x) for x in res[k])
            y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
            full[k] = {"n_pos": len(pos), "n_neg": len(neg), "roc_auc": _r(roc_auc(y, np.concatenate([pos, neg]))),
                       "before": {"recall": _r(rate(pos, before[k])), "fpr": _r(rate(neg, before[k]))},
                       "after": {"recall": _r(rate(pos, new[k])), "fpr": _r(rate(neg, new[k]))}}
        print(f"[full] {json.dumps(full)} ({time.time() - t0:.0f}s)", flush=True)

    if args.evaluate_only or not args.write:
        print(f"[done] nothing written ({time.time() - t_start:.0f}s)", flush=True)
        return 0

    # ---- write -------------------------------------------------------------------
    # only the "thresholds" object of the metadata changes; the rest stays byte-identical
    block = re.search(r'  "thresholds": \{\n(.*?)\n  \},', meta_text, re.S)
    assert block, "thresholds block not found"
    body = ",\n".join(f'    "{k}": {json.dumps(float(new[k]))}' for k in meta["thresholds"])
    meta_path.write_text(meta_text[:block.start(1)] + body + meta_text[block.end(1):])
    assert json.loads(meta_path.read_text())["thresholds"] == {k: float(new[k]) for k in meta["thresholds"]}

    old_metrics["calibration"] = {
        "what": "thresholds re-chosen on validation benign + a pool of real benign texts (models/calibrate_thresholds.py); "
                "the model is unchanged; test split measured only",
        "rule": f"per kind: smallest threshold with FPR <= {args.fpr} on validation benign + pool; tool_output also "
                f"<= {args.fpr} on the pool's source-code files alone; never below the screen",
        "thresholds_before": before, "thresholds_after": {k: float(new[k]) for k in KINDS},
        "binding": rule, "pool": pool_manifest, "crossfit_pool_fpr": crossfit,
        "kinds": report, "full_mode_test_subsample": full,
    }
    metrics_path.write_text(json.dumps(old_metrics, indent=2) + "\n")
    print(f"[write] {meta_path.name} thresholds, {metrics_path.name} calibration ({time.time() - t_start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
