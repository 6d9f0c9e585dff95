"""README's "FSDP2 beside ZeRO" table: the best fitting candidate per sharding engine, from the predictions (analytic
plan, 8 x A100-80G, seq 2048, micro-batch 1, sdpa, unquantized base, AdamW, the default 10% headroom).

    PYTHONPATH=src python benchmarks/fsdp_vs_zero.py
"""

from __future__ import annotations

from ftopt.planner.plan import plan
from ftopt.spec import Attention, Engine, Optim, Quant, TrainingSetup, load_hardware, load_model

ROWS = [("llama-2-7b", True), ("llama-2-13b", True), ("llama-2-70b", False)]  # (model, full fine-tuning)


def best(model: str, full: bool, engine: Engine):
    hw = load_hardware("a100-80g")
    setup = TrainingSetup(seq_len=2048, micro_batch=1, gpus_per_node=8)
    p = plan(load_model(model), hw, setup, full_only=full, quants=(Quant.NONE,), optims=(Optim.ADAMW,),
             engines=(engine,), what_ifs=False)  # fmt: skip
    fits = [c for c in p.candidates if c.fits and c.combination.attn is Attention.SDPA and (full or c.combination.lora)]
    return fits[0] if fits else None


def cell(e) -> str:
    if e is None:
        return "does not fit"
    gib = e.peak_bytes_per_gpu / 2**30
    return f"{e.combination.label()}: {gib:.1f} GiB, {e.step_seconds:.2f} s/step"


if __name__ == "__main__":
    print("| model | tuning | FSDP2 | ZeRO |\n|---|---|---|---|")
    for model, full in ROWS:
        f, z = best(model, full, Engine.FSDP), best(model, full, Engine.ZERO)
        print(f"| {model} | {'full' if full else 'LoRA r16'} | {cell(f)} | {cell(z)} |")
