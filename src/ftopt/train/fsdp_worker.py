"""One FSDP2 rank (see ftopt.train.fsdp_engine for why ftopt drives `fully_shard` itself):

    python -m ftopt.train.fsdp_worker RUN [--trust-remote-code] [--allow-metric-module] [--resume] [--overwrite]

started per rank by ftopt's launcher (ftopt.train.ranks, as the Trainer worker is) or by torchrun (`plan --export`'s
torchrun.sh, RUN = run.json). Either way the rank's own command line decides trust and what to do with the output
folder (ftopt.train.ranks.RankCommandLine); under torchrun rank 0 claims the folder, as ftopt's launcher does.

The sequence mirrors the Trainer worker's: data -> model (LoRA, GC) -> fully_shard -> step-0 quality -> AdamW ->
steps (steps.jsonl, the training-only memory peak from the shared helper) -> distributed checkpoints -> unsharded
save -> eval loss and quality -> metrics.json with the prediction beside the measurement.

Quality is scored at step 0 and at the end (ftopt.train.fsdp_quality: on a plain copy gathered to rank 0, or by
the sharded model on every rank in step where rank 0's GPU cannot hold the whole model).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError


def run_fsdp_worker(spec: RunSpec, *, claim: bool) -> dict:
    """Train one FSDP2 rank; returns metrics.json's content (rank 0) or this rank's measurements. The ranks join,
    agree and end as the Trainer worker's do (ftopt.train.dist), one rank included: FSDP2 needs its group. `claim`:
    no launcher claimed the output folder (torchrun), so rank 0 does, for every rank (ftopt.train.dist.agree)."""
    import torch

    from ftopt.train import dist
    from ftopt.train.outputs import latest_complete_checkpoint

    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() and not spec.hardware.is_cpu else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = dist.init(device, always=True)
    interrupt = dist.Interrupt() if world > 1 else None
    try:
        spec, done, node_local, resume = dist.agree(spec, rank, world, latest_complete_checkpoint, claim=claim)
        if done is not None:
            return done
        if node_local:
            raise FtoptError(
                f"--fsdp on several nodes needs one output folder every node shares ({spec.output_dir} is not): "
                "its checkpoints hold each rank's shards, and resume reads them all."
            )
        return _run(spec, device, rank, world, resume, interrupt)
    finally:
        if interrupt is not None:
            interrupt.restore()
        dist.close()


def _run(spec: RunSpec, device, rank: int, world: int, resume, interrupt) -> dict:
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    from ftopt.spec import load_model
    from ftopt.train.callbacks import TrainingPeak
    from ftopt.train.fsdp_engine import shard_model
    from ftopt.train.fsdp_loop import FsdpLoop
    from ftopt.train.fsdp_quality import quality
    from ftopt.train.metrics import finish, predict
    from ftopt.train.prepare import prepare_for
    from ftopt.train.worker import base_quality_at_start, evaluate

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    torch.manual_seed(spec.schedule.seed)
    model_spec = load_model(spec.model.ref)
    prep, tok = prepare_for(spec, model_spec.vocab_size, log)
    steps_per_epoch = prep.steps_per_epoch(spec, world)
    total = spec.schedule.max_steps if spec.schedule.max_steps > 0 else int(steps_per_epoch * spec.setup.epochs)
    predicted = predict(spec) if rank == 0 else None
    # The same helper as every run (CUDA counters, or the CPU allocator's events). The full model is built on the
    # host and fully_shard copies each rank's shard out of it: on a GPU that build never touches the device, so the
    # counters start before it; on a CPU the allocator would count the host build, which is not training memory,
    # so its peak starts after sharding, over the shards' resident bytes (resident_bytes).
    peak, resident = (TrainingPeak(device), 0) if device.type == "cuda" else (None, 0)
    try:
        build = lambda: _build(spec, model_spec)  # noqa: E731 - again for the copy quality may be generated with
        model = build()
        shard_model(model, spec, init_device_mesh(device.type, (world,)))
        if peak is None:
            resident, peak = resident_bytes(model), TrainingPeak(device)
        # before the checkpoint is loaded (FsdpLoop.train), so always the step-0 weights: no file to read back
        score = lambda: quality(spec, model, build, tok.tokenizer, prep, device, log)  # noqa: E731
        q0 = base_quality_at_start(spec, peak, None, log, rank, score)
        loop = FsdpLoop(spec, model, prep, device, rank, world, total, peak, interrupt)
        budget_hit = loop.train(log, resume)
    finally:
        if peak is not None:
            peak.close()
    if loop.budget.interrupted:
        raise KeyboardInterrupt  # every rank stopped at the same step, with a checkpoint saved there
    peak.read()
    written = _save(spec, model, tok.tokenizer, rank)
    ev = evaluate(device, lambda: loop.eval_loss(prep.eval_dataset), score)
    mine = _rank_record(rank, device, resident, peak, ev, q0, loop, budget_hit)
    metrics = finish(spec, mine, world, tok.source, prep.format, steps_per_epoch, predicted, prep.summary.model_dump())
    if rank == 0:
        from ftopt.train.manifest import record

        record(spec.output_dir, written)  # the files this run wrote: --overwrite removes those and nothing else
    return metrics


def _rank_record(rank: int, device, resident: int, peak, ev: dict, q0: dict, loop, budget_hit: bool) -> dict:
    """This rank's measurements for metrics.json's `ranks` (ftopt.train.metrics.finish), keyed as the Trainer
    worker's. `resident`: the shards' bytes where the peak counters started after sharding (a CPU run, see _run)."""
    return {
        "rank": rank,
        "device": device.type,
        "engine": "fsdp2",
        "peak_allocated_bytes": resident + peak.allocated_bytes,
        "peak_reserved_bytes": peak.reserved_bytes,
        "device_used_bytes": peak.device_used_bytes,
        **ev,
        "base_quality": q0,
        "train_seconds": loop.seconds,
        "stopped_by_time_budget": budget_hit,
        "optimizer": type(loop.optimizer).__name__,
    }


def resident_bytes(model) -> int:
    """Bytes of the storages behind the model's parameters and buffers (each rank's padded shards after
    fully_shard: FSDPParam keeps one padded local tensor per parameter), each storage counted once."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        local = t.to_local() if hasattr(t, "to_local") else t
        st = local.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _build(spec: RunSpec, model_spec):
    from ftopt.model.build import build_model
    from ftopt.spec.hub import remote_code_folder, resolve_weights
    from ftopt.train.base import record_hub_base

    weights_dir = resolve_weights(spec.model.ref, spec.model.trust_remote_code) if spec.model.weights else None
    code_dir = None
    if spec.model.trust_remote_code and model_spec.hf_config.get("auto_map"):
        code_dir = weights_dir or remote_code_folder(spec.model.ref)
    # built on the host; fully_shard moves each rank's shard to the mesh's device and frees the rest
    model = build_model(
        model_spec,
        spec.combination,
        spec.setup.precision,
        device="cpu",
        weights_dir=weights_dir,
        seed=spec.schedule.seed,
        code_dir=code_dir,
    )
    if spec.model.weights:
        record_hub_base(model, spec.model.ref)
    return model


def _save(spec: RunSpec, model, tokenizer, rank: int) -> list[str]:
    """The unsharded result in the Trainer's layout: an adapter (and, on a random-init base, the base under
    out/base) or the full model, safetensors; every rank joins the gathers, rank 0 writes. Returns the names of
    the tokenizer's files (which vary with the tokenizer; the model's are ftopt.train.manifest.RUN_NAMES)."""
    from ftopt.train.base import BASE_FOLDER, _point_adapter_at, _save_gathered
    from ftopt.train.fsdp_engine import full_state_dict

    state = full_state_dict(model)
    if rank != 0:
        return []
    out = spec.output_dir
    if hasattr(model, "peft_config"):
        adapters = {k: v for k, v in state.items() if ".lora_" in k}
        model.save_pretrained(str(out), state_dict=adapters, safe_serialization=True)
        if not spec.model.weights:
            folder = (out / BASE_FOLDER).resolve()
            _save_gathered(model.get_base_model().config, state, folder)
            _point_adapter_at(out, folder)
    else:
        model.save_pretrained(str(out), state_dict=state, safe_serialization=True)
    return [Path(f).name for f in tokenizer.save_pretrained(str(out))]


def main() -> None:
    from ftopt.spec import quiet
    from ftopt.train.ranks import end_rank, rank_run

    def work() -> dict:
        spec, claim = rank_run(sys.argv[1:], "python -m ftopt.train.fsdp_worker")
        quiet.install()
        return run_fsdp_worker(spec, claim=claim)

    end_rank(work)


if __name__ == "__main__":
    main()
