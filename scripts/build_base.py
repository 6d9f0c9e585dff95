"""Pretrain the built-in base model (`tiny-base` preset, llama architecture) on the sample language and write it,
with its tokenizer, to src/ftopt/presets/base/tiny-base (safetensors). Deterministic: one thread, fixed seeds,
deterministic kernels; re-running writes the same weights.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/build_base.py [--steps 1500] [--out DIR]

Prints the base's exact match per operator on held-out words (the pretrained ones high, the unseen `back` 0%).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from ftopt.model.build import hf_config
from ftopt.spec import load_model
from ftopt.sweep import sample_task as S

OUT = Path(__file__).resolve().parents[1] / "src/ftopt/presets/base/tiny-base"
IGNORE = -100


def batches(rows: list[dict], tok, batch: int, seed: int):
    """Endless shuffled padded batches; loss on the completion and EOS only (the prompt is given)."""
    rng = random.Random(seed)
    while True:
        rng.shuffle(rows)
        for i in range(0, len(rows) - batch + 1, batch):
            ids, labels = [], []
            for r in rows[i : i + batch]:
                p = tok(r["prompt"])["input_ids"]
                c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                ids.append(p + c)
                labels.append([IGNORE] * len(p) + c)
            n = max(map(len, ids))
            yield (
                torch.tensor([x + [tok.pad_token_id] * (n - len(x)) for x in ids]),
                torch.tensor([y + [IGNORE] * (n - len(y)) for y in labels]),
            )


@torch.no_grad()
def exact_match(model, tok, rows: list[dict]) -> float:
    model.eval()
    hits = 0
    for r in rows:
        enc = tok(r["prompt"], return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
        hits += tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip() == r["completion"]
    model.train()
    return hits / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    from transformers import AutoModelForCausalLM

    tok = S.tokenizer()
    model = AutoModelForCausalLM.from_config(hf_config(load_model("tiny-base"), attn="sdpa"), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    data = batches(S.pretrain_corpus(20_000, seed=0), tok, a.batch, seed=0)
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        x, y = next(data)
        loss = model(input_ids=x, attention_mask=(x != tok.pad_token_id).long(), labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == a.steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for op in (*S.PRETRAIN_OPS, S.FINETUNE_OP):
        print(f"base exact match on held-out '{op}': {exact_match(model, tok, S.examples(op, 64, seed=99)):.0%}")
    model.config.use_cache = True
    model.generation_config.pad_token_id = tok.pad_token_id
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    tok.save_pretrained(a.out)
    size = sum(p.stat().st_size for p in a.out.iterdir())
    print(f"wrote {a.out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
