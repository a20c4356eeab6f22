#!/usr/bin/env python3
"""Choose the injection classifier's per-kind decision thresholds on real benign text, and
evaluate the artefacts on the held-out test split.

Scores, with the model in the default cascade mode (``InjectionClassifier()``, the serving
code), the validation and test splits of the corpus (``synth_data``, same seed and sizes as
the shipped run) together with the real-text pool (``calibration_pool.py``), split by
package (``real_data.py``): its *calibration* part is validation (benign texts plus copies
with planted validation-family injections), its *test* part is test (benign texts plus
copies with planted test-family injections); its *train* part is not scored here. Per kind
the threshold is the smallest one at which

* at most ``--fpr`` (1 %) of the benign validation documents (synthetic + the real
  calibration part) are flagged, and
* for ``tool_output``, at most ``--fpr`` of the calibration part's source-code files on
  their own (``code_py``, ``code_js``, ``code_other``): source files read through a
  filesystem / git server are the common real case, so the mix must not hide them;

and never below the stage-1 screen. The test split (synthetic and real) is only measured.

    .venv/bin/python models/calibrate_thresholds.py --evaluate-only   # measure the thresholds in the artefact
    .venv/bin/python models/calibrate_thresholds.py                   # choose, report, write nothing
    .venv/bin/python models/calibrate_thresholds.py --write           # also update injection_classifier.json
                                                                       # ("thresholds" only) and metrics.json
    .venv/bin/python models/calibrate_thresholds.py --models-dir DIR --evaluate-only --only-real-test \\
        --out report.json                                             # another model on the real test part

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


_WORKER: "inj.InjectionClassifier | None" = None


def _worker_init(models_dir: str, mode: str):
    global _WORKER
    _WORKER = inj.InjectionClassifier(models_dir, mode=mode, cache_size=0, thresholds=NO_EARLY_ACCEPT)


def _worker_score(job: tuple[str, str]) -> tuple[float, int]:
    r = _WORKER.score(job[0], job[1])
    return r.score, r.embedded_windows


def _digest(text: str, kind: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, person=kind.encode()[:16]).hexdigest()


class Scorer:
    """Serving-path scores (``InjectionClassifier``, early accept off), cached; ``score_all`` spreads
    the uncached texts over ``workers`` processes of one onnxruntime thread each."""

    def __init__(self, models_dir: Path, mode: str = "cascade", use_cache: bool = True, workers: int = 1):
        self.models_dir, self.mode, self.workers = models_dir, mode, workers
        self._clf = None
        self.key = model_key(models_dir, mode)
        self.use_cache = use_cache
        self.cache: dict[str, list] = {}
        if use_cache and CACHE.is_file():
            data = json.loads(CACHE.read_text())
            self.cache = data.get(self.key, {})
        self.n_new = 0

    def __call__(self, text: str, kind: str) -> tuple[float, int]:
        h = _digest(text, kind)
        hit = self.cache.get(h)
        if hit is not None:
            return hit[0], hit[1]
        if self._clf is None:
            self._clf = inj.InjectionClassifier(self.models_dir, mode=self.mode, cache_size=0, thresholds=NO_EARLY_ACCEPT)
        r = self._clf.score(text, kind)
        self.cache[h] = [r.score, r.embedded_windows]
        self.n_new += 1
        if self.use_cache and self.n_new % 2000 == 0:
            self.save()
        return r.score, r.embedded_windows

    def score_all(self, jobs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        todo = {}
        for text, kind in jobs:
            h = _digest(text, kind)
            if h not in self.cache and h not in todo:
                todo[h] = (text, kind)
        if todo and self.workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            keys = list(todo)
            # longest first, so the pool does not wait for one big text at the end
            keys.sort(key=lambda h: -len(todo[h][0]))
            with ctx.Pool(self.workers, initializer=_worker_init, initargs=(str(self.models_dir), self.mode)) as pool:
                for n, (h, res) in enumerate(zip(keys, pool.imap(_worker_score, [todo[h] for h in keys], chunksize=8))):
                    self.cache[h] = [res[0], res[1]]
                    self.n_new += 1
                    if self.use_cache and self.n_new % 5000 == 0:
                        self.save()
        return [self(text, kind) for text, kind in jobs]

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
                    help="only measure the thresholds in the artefact (validation, test, the pool's parts)")
    ap.add_argument("--only-real-test", action="store_true",
                    help="with --evaluate-only: score only the real test part (benign + planted); e.g. for an old model")
    ap.add_argument("--full-docs", type=int, default=0,
                    help="first N synthetic test documents per kind also scored in mode='full'; 0: skip")
    ap.add_argument("--write", action="store_true", help="write the new thresholds and the calibration metrics")
    ap.add_argument("--out", type=Path, help="also write the report (JSON) here")
    ap.add_argument("--rule", choices=("per-set", "union"), default="per-set",
                    help="per-set: <= fpr on the synthetic validation benign documents AND on the real calibration "
                         "part (each alone); union: <= fpr on the two together")
    ap.add_argument("--workers", type=int, default=2, help="scoring processes (one onnxruntime thread each)")
    ap.add_argument("--before", type=Path,
                    help="a report written with --out for the previous release (--only-real-test); its numbers are "
                         "kept in metrics.json next to this calibration")
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    t_start = time.time()

    import synth_data
    import calibration_pool
    import real_data

    meta_path = args.models_dir / inj.CLASSIFIER_META
    meta_text = meta_path.read_text()
    meta = json.loads(meta_text)
    shipped = {k: float(v) for k, v in meta["thresholds"].items()}  # in the artefact now
    screens = {k: float(v) for k, v in meta["screen_thresholds"].items()}
    metrics_path = args.models_dir / "metrics.json"
    old_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    # "training" = the thresholds the training run chose (validation + real calibration part)
    before = {k: float(v) for k, v in old_metrics.get("val_thresholds", shipped).items()}

    pool = calibration_pool.load_pool()
    pool_manifest = calibration_pool.manifest(pool)
    print(f"[pool] {pool_manifest['totals']} ({time.time() - t_start:.0f}s)", flush=True)
    samples = synth_data.build_corpus(meta.get("seed", 1337), meta.get("n_tool_outputs", 7000),
                                      meta.get("n_descriptions", 3000), real_items=pool)
    synth_vt = {(s.kind, s.text) for s in samples if s.split in ("val", "test") and not real_data.is_real(s)}
    clash = sum((p.kind, p.text) in synth_vt for p in pool)
    assert clash == 0, f"{clash} pool texts are also synthetic validation/test texts"
    samples = [s for s in samples if s.split in ("val", "test")]
    if args.only_real_test:
        samples = [s for s in samples if s.split == "test" and real_data.is_real(s)]
    print(f"[data] {len(samples)} validation/test documents ({time.time() - t_start:.0f}s)", flush=True)

    scorer = Scorer(args.models_dir, "cascade", use_cache=not args.no_cache, workers=args.workers)
    t0 = time.time()
    S = scorer.score_all([(s.text, s.kind) for s in samples])
    scorer.save()
    print(f"[score] {len(S)} documents in {time.time() - t0:.0f}s ({scorer.n_new} new)", flush=True)

    def sel(split, kind, label, real=None, groups=None):
        return np.asarray([sc for (sc, _), s in zip(S, samples)
                           if s.split == split and s.kind == kind and s.label == label
                           and (real is None or real_data.is_real(s) == real)
                           and (groups is None or s.group in groups)])

    code_groups = {f"pool/{src}" for src in POOL_TOOL_OUTPUT_CODE}

    # ---- choose ------------------------------------------------------------------
    chosen, rule = {}, {}
    if not args.evaluate_only:
        for k in KINDS:
            if args.rule == "union":
                cands = {"validation+pool": threshold_at_fpr(sel("val", k, 0), args.fpr)}
            else:  # each benign validation set on its own: the easy synthetic set cannot subsidise the real one
                cands = {"validation:synthetic": threshold_at_fpr(sel("val", k, 0, real=False), args.fpr),
                         "validation:real": threshold_at_fpr(sel("val", k, 0, real=True), args.fpr)}
            if k == "tool_output":
                cands["pool:code"] = threshold_at_fpr(sel("val", k, 0, groups=code_groups), args.fpr)
            cands["screen"] = screens[k] + 1e-6
            which = max(cands, key=cands.get)
            chosen[k] = cands[which]
            rule[k] = {"binding": which, "candidates": {c: _r(v, 10) for c, v in cands.items()}}
            print(f"[thresholds] {k}: {chosen[k]:.10f} (binding: {which}; training run {before[k]:.10f}, "
                  f"in the artefact {shipped[k]:.10f})", flush=True)
    new = chosen if not args.evaluate_only else shipped

    # ---- measure -----------------------------------------------------------------
    def by_group(split, k, thr, real):
        by = defaultdict(list)
        for (sc, _), s in zip(S, samples):
            if s.split == split and s.kind == k and real_data.is_real(s) == real:
                by[_group_key(s)].append(sc >= thr)
        return {g: [_r(np.mean(v), 4), len(v)] for g, v in sorted(by.items())}

    def by_source(split, k, thr, label, prefix):
        by = defaultdict(list)
        for (sc, _), s in zip(S, samples):
            if s.split == split and s.kind == k and s.label == label and s.group.startswith(prefix):
                by[s.carrier].append(sc >= thr)
        return {g: [_r(np.mean(v), 4), len(v)] for g, v in sorted(by.items())}

    report = {}
    for k in KINDS:
        ti, tb = sel("test", k, 1, real=False), sel("test", k, 0, real=False)
        ri, rb = sel("test", k, 1, real=True), sel("test", k, 0, real=True)
        e = {"test_synthetic_n_pos": len(ti), "test_synthetic_n_neg": len(tb),
             "test_real_n_planted": len(ri), "test_real_n_benign": len(rb)}
        if len(ti) and len(tb):
            y = np.concatenate([np.ones(len(ti)), np.zeros(len(tb))])
            e["test_synthetic_roc_auc"] = _r(roc_auc(y, np.concatenate([ti, tb])))
            e["test_synthetic_recall_at_1pct_test_fpr"] = _r(rate(ti, threshold_at_fpr(tb, 0.01)))
        if len(ri) and len(rb):
            y = np.concatenate([np.ones(len(ri)), np.zeros(len(rb))])
            e["test_real_roc_auc"] = _r(roc_auc(y, np.concatenate([ri, rb])))
            ai, ab = np.concatenate([ti, ri]), np.concatenate([tb, rb])
            y = np.concatenate([np.ones(len(ai)), np.zeros(len(ab))])
            e["test_all_roc_auc"] = _r(roc_auc(y, np.concatenate([ai, ab])))
            e["test_all_recall_at_1pct_test_fpr"] = _r(rate(ai, threshold_at_fpr(ab, 0.01)))
        for name, thr in (("training", before[k]), ("shipped", new[k])):
            x = {"threshold": _r(thr, 10),
                 "test_synthetic_recall": _r(rate(ti, thr)), "test_synthetic_fpr": _r(rate(tb, thr)),
                 "test_real_planted_recall": _r(rate(ri, thr)), "test_real_fpr": _r(rate(rb, thr)),
                 "val_synthetic_recall": _r(rate(sel("val", k, 1, real=False), thr)),
                 "val_synthetic_fpr": _r(rate(sel("val", k, 0, real=False), thr)),
                 "val_real_planted_recall": _r(rate(sel("val", k, 1, real=True), thr)),
                 "val_real_fpr": _r(rate(sel("val", k, 0, real=True), thr)),
                 "test_real_fpr_by_source": by_source("test", k, thr, 0, "pool/"),
                 "test_real_planted_recall_by_source": by_source("test", k, thr, 1, "pool_planted/"),
                 "val_real_fpr_by_source": by_source("val", k, thr, 0, "pool/"),
                 "test_synthetic_flag_rate_by_group": by_group("test", k, thr, False),
                 "test_real_flag_rate_by_group": by_group("test", k, thr, True)}
            e[name] = x
        report[k] = e
        short = {n: {kk: v for kk, v in e[n].items() if not isinstance(v, dict)} for n in ("training", "shipped")}
        print(f"[{k}] {json.dumps({kk: v for kk, v in e.items() if not isinstance(v, dict)})}", flush=True)
        print(f"[{k}] {json.dumps(short)}", flush=True)
        print(f"[{k}] shipped: real test FPR by source {e['shipped']['test_real_fpr_by_source']}", flush=True)
        print(f"[{k}] shipped: real planted recall by source {e['shipped']['test_real_planted_recall_by_source']}",
              flush=True)
        print(f"[{k}] shipped: synthetic test flag rate by group {e['shipped']['test_synthetic_flag_rate_by_group']}",
              flush=True)

    # ---- full mode on the same synthetic test subsample as train_classifier.py ------
    full = {}
    if args.full_docs > 0 and not args.only_real_test:
        t0 = time.time()
        fscorer = Scorer(args.models_dir, "full", use_cache=not args.no_cache, workers=args.workers)
        counts = defaultdict(int)
        sub = []
        for s in samples:
            if s.split != "test" or real_data.is_real(s) or counts[s.kind] >= args.full_docs:
                continue
            counts[s.kind] += 1
            sub.append(s)
        fs = fscorer.score_all([(s.text, s.kind) for s in sub])
        fscorer.save()
        for k in KINDS:
            pos = np.asarray([sc for (sc, _), s in zip(fs, sub) if s.kind == k and s.label == 1])
            neg = np.asarray([sc for (sc, _), s in zip(fs, sub) if s.kind == k and s.label == 0])
            y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
            full[k] = {"n_pos": len(pos), "n_neg": len(neg), "roc_auc": _r(roc_auc(y, np.concatenate([pos, neg]))),
                       "shipped": {"recall": _r(rate(pos, new[k])), "fpr": _r(rate(neg, new[k]))}}
        print(f"[full] {json.dumps(full)} ({time.time() - t0:.0f}s)", flush=True)

    result = {
        "what": "thresholds chosen on validation benign documents (synthetic + the real pool's calibration part, "
                "split by package) with the serving code; test split (synthetic + the real pool's test part with "
                "planted test-family injections) measured only",
        "rule": (f"per kind: smallest threshold with FPR <= {args.fpr} on the synthetic validation benign documents "
                 f"and <= {args.fpr} on the real calibration part, each on its own" if args.rule == "per-set" else
                 f"per kind: smallest threshold with FPR <= {args.fpr} on validation benign (synthetic + real "
                 "calibration part together)")
                + f"; tool_output also <= {args.fpr} on the calibration part's source-code files alone; never below "
                  "the screen",
        "thresholds_training_run": before, "thresholds_shipped": {k: float(new[k]) for k in KINDS},
        "binding": rule, "pool": pool_manifest,
        "pool_split": {"seed": real_data.SPLIT_SEED, "parts": "train:cal:test = 2:1:1 of the packages"},
        "kinds": report, "full_mode_test_subsample": full,
    }
    if args.before:
        prev = json.loads(args.before.read_text())
        result["previous_release_on_real_test"] = {
            "what": "the release given with --before, scored on the same real test part at its own thresholds",
            "thresholds": prev["thresholds_shipped"],
            "kinds": {k: {"test_real_roc_auc": e.get("test_real_roc_auc"),
                          **{x: e["shipped"][x] for x in ("test_real_planted_recall", "test_real_fpr",
                                                          "test_real_fpr_by_source", "test_real_planted_recall_by_source")}}
                      for k, e in prev["kinds"].items()}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.evaluate_only or not args.write:
        print(f"[done] nothing written to the artefacts ({time.time() - t_start:.0f}s)", flush=True)
        return 0

    # ---- write -------------------------------------------------------------------
    # only the "thresholds" object of the metadata changes; the rest stays byte-identical
    block = re.search(r'  "thresholds": \{\n(.*?)\n  \},', meta_text, re.S)
    assert block, "thresholds block not found"
    body = ",\n".join(f'    "{k}": {json.dumps(float(new[k]))}' for k in meta["thresholds"])
    meta_path.write_text(meta_text[:block.start(1)] + body + meta_text[block.end(1):])
    assert json.loads(meta_path.read_text())["thresholds"] == {k: float(new[k]) for k in meta["thresholds"]}
    old_metrics["calibration"] = result
    metrics_path.write_text(json.dumps(old_metrics, indent=2) + "\n")
    print(f"[write] {meta_path.name} thresholds, {metrics_path.name} calibration ({time.time() - t_start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
