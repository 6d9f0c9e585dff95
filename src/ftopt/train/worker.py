"""One training process (one rank). Run in-process by `ftopt train`, or per rank by ftopt's launcher
(ftopt.train.ranks) or DeepSpeed's (hostfile mode):

    python -m ftopt.train.worker RUN [--trust-remote-code] [--allow-metric-module] [--resume] [--overwrite]

RUN is the run as ftopt's launcher encodes it, or a run.json; the rank's own command line decides trust and what
to do with the output folder (ftopt.train.ranks.RankCommandLine). A rank no launcher started claims the folder at
rank 0, as ftopt's launcher does.

The sequence: data -> TrainingArguments (before the model: under ZeRO-3 they register the DeepSpeed config, so the
model is built inside deepspeed.zero.Init and each rank holds only its partition) -> model -> train (training-only
memory peak) -> save -> evaluate and generate (their own peak) -> metrics gathered over torch.distributed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.errors import Interrupted
from ftopt.train.outputs import latest_complete_checkpoint
from ftopt.train.ranks import end_rank, interrupted_line, rank_run

BASE_QUALITY_FILE = "base_quality.json"  # the step-0 quality, kept for a resumed run (base_quality_at_start)


def _rank() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def training_arguments(spec: RunSpec, device, world: int, total_steps: int, node_local: bool = False):
    from transformers import TrainingArguments

    from ftopt.spec.dsconfig import RANK_TIMEOUT_SECONDS, deepspeed_config
    from ftopt.train.tracking import trainer_report_to

    s, sch, p = spec.setup, spec.schedule, spec.setup.precision.value
    return TrainingArguments(
        output_dir=str(spec.output_dir),
        num_train_epochs=s.epochs,
        max_steps=sch.max_steps,
        per_device_train_batch_size=s.micro_batch,
        per_device_eval_batch_size=s.micro_batch,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=sch.learning_rate,
        lr_scheduler_type=sch.lr_schedule.value,
        warmup_steps=int(sch.warmup_ratio * total_steps),
        weight_decay=sch.weight_decay,
        max_grad_norm=sch.max_grad_norm,
        seed=sch.seed,
        bf16=p in ("bf16-mixed",),
        fp16=p == "fp16-mixed",
        use_cpu=device.type == "cpu",
        deepspeed=deepspeed_config(spec, node_local) if spec.combination.uses_deepspeed else None,
        save_on_each_node=node_local,  # each node's folder gets the checkpoints its ranks resume from
        save_strategy="steps",
        save_steps=sch.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=trainer_report_to(spec.output.report_to),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        ddp_timeout=RANK_TIMEOUT_SECONDS,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        eval_strategy="no",
        ddp_backend="gloo" if device.type == "cpu" and world > 1 else None,
        optim=spec.combination.optim.hf_name,
    )


def run_worker(spec: RunSpec, *, claim: bool, fail_at_step: int | None = None) -> dict:
    """Train one rank; returns metrics.json's content (rank 0) or this rank's measurements. Several ranks first
    agree on the run, the output folder and the checkpoint (ftopt.train.dist); every rank leaves its process group
    before it returns, whatever happened. `claim`: no launcher claimed the output folder, so rank 0 does."""
    import torch

    from ftopt.train import dist

    rank, local_rank, _ = _rank()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = dist.init(device)
    interrupt = dist.Interrupt() if world > 1 else None
    try:
        spec, done, node_local, resume = dist.agree(spec, rank, world, latest_complete_checkpoint, claim=claim)
        if done is not None:
            if rank == 0:
                print(f"--resume: the run in {spec.output_dir} is complete; nothing to train.", file=sys.stderr)
            return done
        return _run(spec, rank, device, world, resume, node_local, interrupt, fail_at_step)
    finally:
        if interrupt is not None:
            interrupt.restore()
        dist.close()


def _run(spec, rank, device, world, resume, node_local, interrupt, fail_at_step) -> dict:
    """One rank's run once the ranks agree: data, train, save, evaluate, metrics. The training peak covers the
    Trainer's construction and the loop (it is closed before evaluation, which keeps its own peak)."""
    import torch

    from ftopt.train.callbacks import TrainingPeak
    from ftopt.train.recorder import StepRecorder

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    torch.manual_seed(spec.schedule.seed)
    model_spec, prep, tok = _data(spec, log)
    steps_log = _steps_log(spec, rank, resume, log)
    steps_per_epoch = prep.steps_per_epoch(spec, world)
    from ftopt.train.metrics import finish, predict

    predicted = predict(spec) if rank == 0 else None  # before the Trainer: see predict
    peak = TrainingPeak(device)
    try:
        trainer, progress, budget = _trainer(
            spec,
            model_spec,
            device,
            world,
            prep,
            steps_per_epoch,
            peak,
            StepRecorder(steps_log, device, rank),
            (fail_at_step, node_local, interrupt),
        )
        base_quality = {}
        if not spec.combination.uses_deepspeed:  # see base_quality_at_start
            m = trainer.model
            at = next(m.parameters()).device
            score = lambda: scored_quality(spec, m, tok.tokenizer, prep.eval_rows, prep.format, at, log)  # noqa: E731
            base_quality = base_quality_at_start(spec, peak, resume, log, rank, score)
        result = _train(trainer, resume, world, interrupt, (progress, steps_log), log, spec.output_dir)
    finally:
        peak.close()
    _stopped(spec, trainer, budget, log)
    written = _save(trainer, tok.tokenizer, spec.output_dir, rank)
    mine = {
        "rank": rank,
        "device": device.type,
        "peak_allocated_bytes": peak.allocated_bytes,
        "peak_reserved_bytes": peak.reserved_bytes,
        "device_used_bytes": peak.device_used_bytes,
        **_evaluated(spec, trainer, device, prep, tok.tokenizer, log),
        "base_quality": base_quality,
        "train_seconds": result.metrics.get("train_runtime"),
        "stopped_by_time_budget": budget.hit,
        "optimizer": _optimizer_name(trainer),
    }
    data = prep.summary.model_dump()
    metrics = finish(spec, mine, world, tok.source, prep.format, steps_per_epoch, predicted, data=data)
    _close_outputs(spec, trainer, rank, written)
    return metrics


def _data(spec, log):
    """The model's spec and the prepared data with its tokenizer. A missing tracker package is reported here,
    after the data but before any model is built: one line, no wasted work."""
    if spec.model.builtin:
        log(f"model: built-in {spec.model.ref} (random init, llama architecture)")
    from ftopt.spec import load_model
    from ftopt.train.prepare import prepare_for
    from ftopt.train.tracking import trainer_report_to

    model_spec = load_model(spec.model.ref)
    prep, tok = prepare_for(spec, model_spec.vocab_size, log)
    trainer_report_to(spec.output.report_to)  # a missing tracker package: one line before any work
    return model_spec, prep, tok


def _steps_log(spec, rank: int, resume, log):
    """Rank 0's steps.jsonl (None on other ranks), cut back to the resumed checkpoint's step: a resumed run redoes
    the steps after it, and their records must not appear twice."""
    from ftopt.train.recorder import StepLog

    steps_log = StepLog(spec.output_dir / "steps.jsonl") if rank == 0 else None
    if spec.output.resume:
        log(f"resuming from {resume}" if resume else "no complete checkpoint found: starting from the beginning")
    if steps_log is not None:
        steps_log.truncate_after(int(resume.name[11:]) if resume else 0)  # a resumed run redoes later steps
    return steps_log


def _train(trainer, resume, world: int, interrupt, closers, log, out):
    """trainer.train, resumed from `resume` where given. `closers` (progress display, steps log) are closed
    whatever happens, so a Ctrl-C leaves a complete steps.jsonl and a clean terminal; the launched rank's Ctrl-C
    handler (`interrupt`) learns when the loop runs, where it may stop at a step boundary."""
    from ftopt.spec.quiet import no_checkpoint_bars, tied_keys_quiet

    progress, steps_log = closers
    if resume:
        tied_keys_quiet(trainer.model)
    try:
        if interrupt is not None:
            interrupt.in_loop = True
        with no_checkpoint_bars():  # one "Writing model shards" bar per run: the final save's
            return trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt:
        if world == 1:  # the command prints it, once (a launcher does so for all its ranks)
            raise Interrupted(interrupted_line(out)) from None
        raise
    finally:
        if interrupt is not None:
            interrupt.in_loop = False
        progress.stop()
        if steps_log is not None:
            steps_log.close()


def _stopped(spec, trainer, budget, log) -> None:
    """How the loop ended early, if it did: a Ctrl-C on a launched rank goes on as KeyboardInterrupt (every rank
    stopped at the same step, with a checkpoint there); --max-hours is a normal end, said in one line."""
    if budget.interrupted:
        raise KeyboardInterrupt  # every rank stopped at the same step, with a checkpoint saved there
    if budget.hit:
        log(
            f"--max-hours {spec.schedule.max_hours:g} reached: stopped at step {trainer.state.global_step} with a "
            "checkpoint; continue with --resume"
        )


def _save(trainer, tokenizer, out, rank: int) -> list[str]:
    """The trained weights and the tokenizer beside them, so the folder loads on its own; the names of the
    tokenizer's files (they vary with the tokenizer; the model's are ftopt.train.manifest.RUN_NAMES)."""
    trainer.save_model(str(out))  # adapter (PEFT) or full model, safetensors; ZeRO-3 weights gathered
    return [Path(f).name for f in tokenizer.save_pretrained(str(out))] if rank == 0 else []


def _evaluated(spec, trainer, device, prep, tokenizer, log) -> dict:
    """Eval loss and task quality of the trained model (see `evaluate`)."""
    held_out = prep.eval_dataset is not None  # --eval-fraction 0: nothing held out
    eval_loss = lambda: trainer.evaluate().get("eval_loss") if held_out else None  # noqa: E731
    rows, fmt = prep.eval_rows, prep.format
    gen_device = next(trainer.model.parameters()).device
    score = lambda: scored_quality(spec, trainer.model, tokenizer, rows, fmt, gen_device, log)  # noqa: E731
    return evaluate(device, eval_loss, score)


def _close_outputs(spec, trainer, rank: int, written: list[str]) -> None:
    """The last writes, after metrics.json: a random-init base's weights (for a run with no Hub weights) and the
    manifest of the files the run wrote (`written`: the tokenizer's, see _save)."""
    out = spec.output_dir
    if not spec.model.weights:
        from ftopt.train.base import save_random_base

        # last: it strips the LoRA layers from the trained model; every rank joins a ZeRO-3 gather
        save_random_base(trainer, out, rank, zero3=spec.combination.zero == 3)
    if rank == 0:
        from ftopt.train.manifest import record

        record(out, written)  # the files this run wrote: --overwrite removes those and nothing else


def _trainer(spec, model_spec, device, world, prep, steps_per_epoch, peak, recorder, stops):
    """`stops`: (injected failure step, node-local checkpoints, the Ctrl-C handler of a launched rank)."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    from ftopt.model.build import build_model
    from ftopt.spec.hub import remote_code_folder, resolve_weights
    from ftopt.train.base import record_hub_base
    from ftopt.train.callbacks import Progress, RunCallback, TimeBudget

    s = spec.setup
    total = spec.schedule.max_steps if spec.schedule.max_steps > 0 else int(steps_per_epoch * s.epochs)
    fail_at_step, node_local, interrupt = stops
    args = training_arguments(spec, device, world, total, node_local)
    weights_dir = (
        resolve_weights(spec.model.ref, spec.model.trust_remote_code)  # a Hub id: the cache's snapshot
        if spec.model.weights
        else None
    )
    code_dir = None  # the repo's own model code, run only when asked (the CLI refused auto_map without the flag)
    if spec.model.trust_remote_code and model_spec.hf_config.get("auto_map"):
        code_dir = weights_dir or remote_code_folder(spec.model.ref)
    model = build_model(
        model_spec,
        spec.combination,
        s.precision,
        device="cpu" if spec.combination.uses_deepspeed else device,
        weights_dir=weights_dir,
        seed=spec.schedule.seed,
        code_dir=code_dir,
    )
    if spec.model.weights:
        record_hub_base(model, spec.model.ref)  # the adapter names the Hub id, not the snapshot folder
    progress, budget = Progress(recorder.rank == 0), TimeBudget(spec.schedule.max_hours, interrupt)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=prep.train_dataset,
        eval_dataset=prep.eval_dataset,
        data_collator=prep.collator,
        callbacks=[RunCallback(recorder, peak, budget, progress, fail_at_step, node_local)],
    )
    trainer.remove_callback(PrinterCallback)  # our progress and steps.jsonl replace the printed log dicts
    return trainer, progress, budget


def evaluate(device, eval_loss, score) -> dict:
    """Eval loss (`eval_loss()`: the engine's, None with nothing held out) and task quality (`score()`: {} where
    none is scored), with their own memory peak on CUDA."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    out = {"eval_loss": eval_loss(), "quality": score(), "eval_peak_allocated_bytes": None}
    if device.type == "cuda":
        out["eval_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device) - base
    return out


def scores_quality(spec, eval_rows, fmt) -> bool:
    """Task quality is scored by generation on prompt+completion data with held-out rows to generate for."""
    return fmt == "prompt+completion" and bool(eval_rows) and spec.data.eval_max_examples > 0


def scored_quality(spec, model, tokenizer, eval_rows, fmt, device, log, synced: bool = False) -> dict:
    """Task quality by generation (ftopt.results.quality) where the data scores it, else {} (not measured). `synced`:
    a sharded model on several ranks, every rank generating in step (ftopt.results.quality.generate)."""
    if not scores_quality(spec, eval_rows, fmt):
        return {}
    from ftopt.results.quality import evaluate_generation

    d = spec.data
    # a training step's rows per generate() call: the run holds a step's activations, more than their KV cache
    return evaluate_generation(
        model,
        tokenizer,
        eval_rows,
        device,
        d.eval_max_examples,
        d.metrics,
        log=log,
        synced=synced,
        batch=spec.setup.micro_batch,
    )


def base_quality_at_start(spec, peak, resume, log, rank: int, score) -> dict:
    """Quality before the first step (step 0, `score()`: {} where none is scored): the end's held-out rows and
    metrics, generated with the KV cache, its memory left out of the training peak. A sweep whose every run
    already scores full marks here has nothing to learn (ftopt.report.decision). Kept in base_quality.json, which a
    resumed run (`resume`: its checkpoint) reads back: a Trainer's model holds the checkpoint's weights once
    training starts. Not under DeepSpeed (the caller skips it): the engine places the model (ZeRO-3: partitions
    it) only when training starts, and generating before that would run on the host."""
    import json

    path = spec.output_dir / BASE_QUALITY_FILE
    if resume is not None and path.is_file():
        return json.loads(path.read_text())
    from ftopt.spec.io import atomic_write_text

    with peak.excluded():
        q = score()
    if q:
        log(f"quality before training (step 0): exact match {q['exact_match']:.1%} on {q['examples']} held-out rows")
    if q and rank == 0:
        atomic_write_text(path, json.dumps(q))
    return q


def _optimizer_name(trainer) -> str:
    """The optimizer that really stepped (DeepSpeedCPUAdam under optimizer offload, AdamW otherwise): the
    DeepSpeed engine's ZeRO optimizer, or the Trainer's accelerate wrapper, each hold it as `.optimizer`."""
    opt = getattr(trainer.model_wrapped, "optimizer", None) or trainer.optimizer
    return type(getattr(opt, "optimizer", opt)).__name__


def main() -> None:
    """One launched rank (ftopt.train.ranks.RankCommandLine). The DeepSpeed launcher adds --local_rank=N (also in
    the environment as LOCAL_RANK)."""
    from ftopt.spec import quiet

    def work() -> dict:
        spec, claim = rank_run(sys.argv[1:], "python -m ftopt.train.worker")
        quiet.install(uses_deepspeed=spec.combination.uses_deepspeed)
        return run_worker(spec, claim=claim)

    end_rank(work)


if __name__ == "__main__":
    main()
