"""Task quality by generation on held-out prompt+completion examples: greedy decoding, capped, with progress.

Under ZeRO-3 the model is *not* gathered whole on every rank (that needs the full model's memory per GPU: +14 GB
for a 7B model, out of memory for 70B): DeepSpeed's hooks gather one layer at a time, and generate() keeps the
ranks in step (synced_gpus, set by transformers when ZeRO-3 runs on several ranks).
"""
from __future__ import annotations


def exact_match(model, tokenizer, rows: list[dict], device, log=lambda m: None) -> float | None:
    """Share of rows whose greedy completion equals the reference (whitespace-trimmed)."""
    import torch

    if not rows:
        return None
    hits, every = 0, max(1, len(rows) // 10)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i, r in enumerate(rows, 1):
            enc = tokenizer(str(r["prompt"]), return_tensors="pt").to(device)
            target = str(r["completion"]).strip()
            n_new = len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 2
            out = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            hits += text == target
            if i % every == 0 or i == len(rows):
                log(f"scoring held-out examples by generation: {i}/{len(rows)}")
    if was_training:
        model.train()
    return hits / len(rows)
