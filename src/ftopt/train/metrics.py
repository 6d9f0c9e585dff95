"""metrics.json (schema in docs/metrics-schema.md): the run's measurements over the whole run, gathered from every
rank over torch.distributed (no shared filesystem needed), with the planner's prediction beside them."""

from __future__ import annotations

import json
import statistics

from ftopt.results.quality import perplexity
from ftopt.results.rows import METRICS_SCHEMA, WARMUP_STEPS, step_stats
from ftopt.spec import RunSpec


def _gather(mine: dict, world: int) -> list[dict]:
    if world == 1:
        return [mine]
    import torch.distributed as dist

    ranks: list = [None] * world
    dist.all_gather_object(ranks, mine)
    return sorted(ranks, key=lambda r: r["rank"])


def _steps_summary(steps: list[dict]) -> dict:
    """Every step's time, their median and tokens/s over the whole run (a resumed run included) with the
    WARMUP_STEPS warm-up steps left out (ftopt.results.rows says why), the first, mean and last training loss."""
    steady = steps[WARMUP_STEPS:] or steps[-1:]
    losses = [s["loss"] for s in steps if "loss" in s]
    stats = step_stats([s["seconds"] for s in steps])
    return {
        "step_times": [s["seconds"] for s in steps],
        "step_seconds": stats.median if stats else None,
        "tokens_per_s_rank0": statistics.median(s["tokens_per_s"] for s in steady) if steady else None,
        "train_loss": sum(losses) / len(losses) if losses else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": len(steps),
    }


def finish(
    spec: RunSpec,
    mine: dict,
    world: int,
    tok_src: str,
    fmt: str,
    steps_per_epoch: int,
    predicted: dict | None,
    data: dict | None = None,
) -> dict:
    """Gather the ranks' measurements; rank 0 assembles and writes metrics.json (with `predicted`, from
    `predict`) and returns it."""
    from ftopt.spec.io import atomic_write_text
    from ftopt.train.recorder import StepLog

    ranks = _gather(mine, world)
    if mine["rank"] != 0:
        return mine
    steps = StepLog(spec.output_dir / "steps.jsonl").read()
    summ = _steps_summary(steps)
    metrics = _run_fields(spec, world, tok_src, fmt, steps_per_epoch) | {
        "measured": _measured(ranks, steps, summ, steps_per_epoch),
        "predicted": predicted,
        "mfu": _mfu(spec, predicted, summ["tokens_per_s_rank0"]),
        "ranks": ranks,
        "data": data,
    }
    atomic_write_text(spec.output_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _measured(ranks: list[dict], steps: list[dict], summ: dict, steps_per_epoch: int) -> dict:
    """metrics.json's `measured`: memory is the worst rank's (the GPU that runs out first decides whether a
    setup fits); loss, quality and the time-budget stop are rank 0's, the rank that logs and evaluates."""
    r0 = ranks[0]
    return {
        "peak_bytes_per_gpu": max(r["peak_allocated_bytes"] or 0 for r in ranks),
        "peak_reserved_bytes_per_gpu": max((r["peak_reserved_bytes"] or 0) for r in ranks) or None,
        "device_used_bytes_per_gpu": max((r["device_used_bytes"] or 0) for r in ranks) or None,
        "eval_peak_bytes_per_gpu": max((r["eval_peak_allocated_bytes"] or 0) for r in ranks) or None,
        "step_seconds": summ["step_seconds"],
        "step_times": summ["step_times"],
        "warmup_steps": WARMUP_STEPS,
        "epoch_seconds": summ["step_seconds"] * steps_per_epoch if summ["step_seconds"] else None,
        # Trainer's num_input_tokens_seen is gathered over all ranks, so rank 0's step records are already global
        "tokens_per_s": summ["tokens_per_s_rank0"],
        "train_loss": summ["train_loss"],
        "first_loss": summ["first_loss"],
        "final_loss": summ["final_loss"],
        "eval_loss": r0["eval_loss"],
        "perplexity": perplexity(r0["eval_loss"]),
        "quality": r0["quality"],
        "exact_match": r0["quality"].get("exact_match"),
        "base_quality": r0.get("base_quality") or {},
        "steps": summ["steps"],
        "train_seconds": sum(st["seconds"] for st in steps),
        "stopped_by_time_budget": r0["stopped_by_time_budget"],
    }


def _run_fields(spec: RunSpec, world: int, tok_src: str, fmt: str, steps_per_epoch: int) -> dict:
    """metrics.json's description of the run (what was trained, on what shape), written first so a reader of the
    file meets the setup before the figures."""
    s = spec.setup
    return {
        "schema": METRICS_SCHEMA,
        "run": spec.to_json(),
        "model": spec.model.ref,
        "combination": spec.combination.key(),
        "label": spec.combination.label(),
        "precision": s.precision.value,
        "world_size": world,
        "seq_len": s.seq_len,
        "micro_batch": s.micro_batch,
        "grad_accum": s.grad_accum,
        "packing": s.packing,
        "data_format": fmt,
        "tokenizer": tok_src,
        "tokens_per_step": s.micro_batch * s.grad_accum * s.seq_len * world,
        "steps_per_epoch": steps_per_epoch,
    }


def predict(spec: RunSpec) -> dict:
    """The planner's prediction for this very run. Rank 0 computes it before the Trainer exists: under ZeRO-3
    the Trainer's DeepSpeed config turns every model construction into a collective `zero.Init`, so the traced
    estimator's build on rank 0 alone would wait for the other ranks forever."""
    from ftopt.estimate import predictions
    from ftopt.spec import load_model

    return predictions(load_model(spec.model.ref), spec.hardware, spec.setup, spec.combination)


def _mfu(spec: RunSpec, pred: dict, tokens_per_s: float | None) -> float | None:
    """Useful-FLOP MFU: FLOPs per token of the planned step times the non-padding tokens processed per second per
    rank, over the hardware's peak."""
    hw, s = spec.hardware, spec.setup
    flops = pred["analytic"].get("flops_per_step")
    if not (tokens_per_s and flops):
        return None
    peak = hw.flops_for(s.precision.compute_dtype) or hw.flops_for("fp32")
    flops_per_token = flops / (s.micro_batch * s.seq_len * s.grad_accum)  # flops_per_step is per GPU
    return flops_per_token * tokens_per_s / s.world_size / peak
