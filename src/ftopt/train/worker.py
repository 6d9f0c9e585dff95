"""One training process (one rank). Run in-process by `ftopt train`, or per rank by the DeepSpeed launcher:

    python -m deepspeed.launcher.runner --num_gpus 2 src/ftopt/train/worker.py OUT/resolved_config.json
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL = "tiny-llama"
DEFAULT_TRAIN_EXAMPLES = 4000
DEFAULT_EVAL_EXAMPLES = 64
MEMORY_TRACE_STEPS = 2  # on a CPU the allocator-level peak is read over the build and the first steps


def _rank() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _latest_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint-N whose trainer_state.json was written (the Trainer writes it last)."""
    cks = sorted((p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                 key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return str(cks[-1]) if cks else None


def _load_tokenizer(cfg, spec_ref: str | None):
    from ftopt.train.data import default_tokenizer

    src = cfg.model or (spec_ref if spec_ref and Path(spec_ref).is_dir() else None)
    if src is None:
        return default_tokenizer(), "built-in word-level tokenizer"
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        from ftopt.errors import FtoptError

        raise FtoptError(f"No tokenizer could be loaded from {src} ({str(e).splitlines()[0][:120]}); "
                         "add tokenizer files to the model folder.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, src


def _datasets(cfg, tokenizer, log):
    from ftopt.train import data as D

    if cfg.data is None:
        rows = D.default_examples(DEFAULT_TRAIN_EXAMPLES, seed=cfg.seed)
        eval_rows = D.default_examples(DEFAULT_EVAL_EXAMPLES, seed=cfg.seed + 10_000)
        log("data: built-in 'shift letters' task (prompt+completion), "
            f"{len(rows)} training and {len(eval_rows)} held-out examples")
    else:
        rows = D.load_records(cfg.data)
        if cfg.eval_data:
            eval_rows = D.load_records(cfg.eval_data)
        else:
            rows, eval_rows = D.split_eval(rows, cfg.eval_fraction, cfg.seed)
    fmt = D.detect_format(rows, "training data")
    D.detect_format(eval_rows, "evaluation data")
    train = D.tokenize(rows, tokenizer, cfg.seq_len, fmt)
    ev = D.tokenize(eval_rows, tokenizer, cfg.seq_len, fmt)
    if train.truncated:
        log(f"note: {train.truncated} of {len(rows)} training examples were longer than --seq-len {cfg.seq_len} "
            "and were truncated")
    examples = D.pack(train.examples, cfg.seq_len) if cfg.packing else train.examples
    return examples, ev.examples, eval_rows, fmt


def _exact_match(model, tokenizer, rows, device, max_n: int, zero3: bool) -> float | None:
    """Greedy-generate each held-out completion; the share that matches exactly (whitespace-trimmed).
    Under ZeRO-3 every rank gathers the full weights once for the evaluation (GatheredParameters) instead of
    gathering each layer for every generated token: the sample models of a proof of concept fit."""
    import contextlib

    import torch

    rows = rows[:max_n]
    if not rows:
        return None
    gather = contextlib.nullcontext()
    if zero3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    hits = 0
    was_training = model.training
    model.eval()
    with gather, torch.no_grad():
        for r in rows:
            enc = tokenizer(str(r["prompt"]), return_tensors="pt").to(device)
            target = str(r["completion"]).strip()
            n_new = len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 2
            out = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            hits += text == target
    if was_training:
        model.train()
    return hits / len(rows)


def run_worker(cfg) -> dict:  # noqa: C901 - one readable sequence: data, model, train, save, measure
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from ftopt.measure import AllocatorPeak
    from ftopt.spec import load_model
    from ftopt.modeling import build_model
    from ftopt.train.engine import RANK_TIMEOUT_SECONDS, StepRecorder, deepspeed_config

    rank, local_rank, world = _rank()
    out = Path(cfg.output_dir)
    is_main = rank == 0
    log = (lambda m: print(m, flush=True)) if is_main else (lambda m: None)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)

    spec_ref = cfg.random_init or cfg.model or DEFAULT_MODEL
    if cfg.model is None and cfg.random_init is None:
        log(f"model: built-in {DEFAULT_MODEL} (random init, llama architecture)")
    spec = load_model(spec_ref)
    tokenizer, tok_src = _load_tokenizer(cfg, cfg.random_init)
    train_ex, eval_ex, eval_rows, fmt = _datasets(cfg, tokenizer, log)

    # memory: allocator-level peak over build + first steps (CPU), or CUDA's peak counters over the whole run
    cpu_peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    else:
        cpu_peak = AllocatorPeak().start()
    # TrainingArguments first: with ZeRO-3 it registers the DeepSpeed config, so the model is built inside
    # deepspeed.zero.Init and each rank only ever holds its partition (as Hugging Face documents)
    steps_per_epoch = max(1, -(-len(train_ex) // (cfg.micro_batch * cfg.grad_accum * world)))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else int(steps_per_epoch * cfg.epochs)
    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch, per_device_eval_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule, warmup_steps=int(cfg.warmup_ratio * total_steps), seed=cfg.seed,
        bf16=cfg.precision.value == "bf16-mixed", fp16=cfg.precision.value == "fp16-mixed",
        use_cpu=device.type == "cpu", deepspeed=deepspeed_config(cfg) if cfg.combination.uses_deepspeed else None,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, logging_steps=1, report_to=[],
        disable_tqdm=True, include_num_input_tokens_seen="non_padding", ddp_timeout=RANK_TIMEOUT_SECONDS,
        remove_unused_columns=False, dataloader_num_workers=0, eval_strategy="no",
        ddp_backend="gloo" if device.type == "cpu" and world > 1 else None, optim=cfg.combination.optim.hf_name,
    )
    model = build_model(spec, cfg.combination, cfg.precision, device="cpu" if cfg.combination.uses_deepspeed else device,
                        weights_dir=cfg.model, seed=cfg.seed)

    recorder = StepRecorder(out / "steps.jsonl", device, rank)
    progress = _Progress(is_main)

    class _Callback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            progress.start(state.max_steps)
            injected = os.environ.get("FTOPT_INJECT_FAILURE")  # bench tests: a run that fails must not stop a sweep
            if injected == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
            if injected == "crash":
                raise RuntimeError("injected crash")

        def on_step_begin(self, args, state, control, **kw):
            recorder.begin(state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kw):
            recorder.end(state.global_step, state.num_input_tokens_seen)
            if cpu_peak is not None and state.global_step >= MEMORY_TRACE_STEPS:
                cpu_peak.stop()  # idempotent: the first call reads the peak, later ones return it
            if cfg.fail_at_step is not None and state.global_step >= cfg.fail_at_step:
                raise RuntimeError(f"injected failure at step {state.global_step}")

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # logging_steps=1: the loss of the step that just ended
                rec = recorder.flush(logs["loss"])
                if rec is not None:
                    progress.update(state.global_step, rec)

        def on_train_end(self, args, state, control, **kw):
            recorder.flush(None)

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=None)
    trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(train_ex), eval_dataset=_ListDataset(eval_ex),
                      data_collator=collator, callbacks=[_Callback()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar and steps.jsonl replace the printed log dicts
    resume = _latest_complete_checkpoint(out) if cfg.resume else None
    if cfg.resume:
        log(f"resuming from {resume}" if resume else "no complete checkpoint found: starting from the beginning")
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        log(f"interrupted: the last checkpoint in {out} is intact; continue with --resume")
        raise
    finally:
        progress.stop()
    if cpu_peak is not None:
        cpu_peak.stop()

    trainer.save_model(str(out))  # adapter (PEFT) or full model, safetensors; ZeRO-3 weights gathered
    if is_main:
        tokenizer.save_pretrained(str(out))
    ev = trainer.evaluate()
    em = None
    if fmt == "prompt+completion":
        em = _exact_match(trainer.model, tokenizer, eval_rows, device if not cfg.combination.uses_deepspeed else
                          next(trainer.model.parameters()).device, cfg.eval_max_examples,
                          zero3=cfg.combination.zero == 3)
    mem = {"device": device.type}
    if device.type == "cuda":
        mem["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device) - base_alloc
        mem["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    else:
        mem["peak_allocated_bytes"] = cpu_peak.stop()
        mem["measured_over_steps"] = min(MEMORY_TRACE_STEPS, recorder.summary()["steps"])
    summ = recorder.summary()
    rank_metrics = {
        "rank": rank, **mem, **summ,
        "train_loss": result.training_loss, "final_loss": recorder.last_loss,
        "eval_loss": ev.get("eval_loss"), "exact_match": em, "train_seconds": result.metrics.get("train_runtime"),
        "steps_per_epoch": steps_per_epoch,
    }
    (out / f"metrics.rank{rank}.json").write_text(json.dumps(rank_metrics))
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    if not is_main:
        return rank_metrics
    ranks = [json.loads((out / f"metrics.rank{r}.json").read_text()) for r in range(world)]
    metrics = _assemble(cfg, spec, ranks, world, tok_src, fmt)
    from ftopt.io import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    for r in range(world):
        (out / f"metrics.rank{r}.json").unlink(missing_ok=True)
    return metrics


def _assemble(cfg, spec, ranks: list[dict], world: int, tok_src: str, fmt: str) -> dict:
    """metrics.json (schema in docs/metrics-schema.md): measured per rank, predicted beside it."""
    r0 = ranks[0]
    step_s = r0["step_seconds_median"]
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * cfg.seq_len * world
    epoch_s = step_s * r0["steps_per_epoch"] if step_s else None
    measured = {
        "peak_bytes_per_gpu": max(r["peak_allocated_bytes"] for r in ranks),
        "peak_reserved_bytes_per_gpu": max((r.get("peak_reserved_bytes") or 0) for r in ranks) or None,
        "step_seconds": step_s, "epoch_seconds": epoch_s,
        "tokens_per_s": sum((r["tokens_per_s_median"] or 0) for r in ranks),
        "train_loss": r0["train_loss"], "final_loss": r0["final_loss"], "eval_loss": r0["eval_loss"],
        "exact_match": r0["exact_match"], "steps": r0["steps"], "train_seconds": r0["train_seconds"],
    }
    predicted, mfu = _predicted(cfg, spec, world, measured["tokens_per_s"])
    return {"schema": "ftopt.metrics/1", "model": spec.name, "combination": cfg.combination.key(),
            "label": cfg.combination.label(), "precision": cfg.precision.value, "world_size": world,
            "seq_len": cfg.seq_len, "micro_batch": cfg.micro_batch, "grad_accum": cfg.grad_accum,
            "packing": cfg.packing, "data_format": fmt, "tokenizer": tok_src, "tokens_per_step": tokens_per_step,
            "measured": measured, "predicted": predicted, "mfu": mfu, "ranks": ranks}


def _predicted(cfg, spec, world: int, tokens_per_s: float | None) -> tuple[dict, float | None]:
    """Planner's prediction for the same run, for the side-by-side comparison."""
    from ftopt.estimate import predictions
    from ftopt.spec import TrainingSetup, load_hardware

    hw_name = cfg.hardware or ("cpu" if not _cuda() else None)
    if hw_name is None:
        return {}, None
    hw = load_hardware(hw_name)
    setup = TrainingSetup(seq_len=cfg.seq_len, micro_batch=cfg.micro_batch, grad_accum=cfg.grad_accum,
                          precision=cfg.precision, gpus_per_node=world)
    pred = predictions(spec, hw, setup, cfg.combination)
    mfu = None
    flops = pred["analytic"].get("flops_per_step")
    if tokens_per_s and flops:
        # useful FLOPs: FLOPs per token of the planned step times the non-padding tokens each rank processed
        peak = hw.flops_for(cfg.precision.compute_dtype) or hw.flops_for("fp32")
        flops_per_token = flops / (cfg.micro_batch * cfg.seq_len * cfg.grad_accum)
        mfu = flops_per_token * tokens_per_s / world / peak
    return pred, mfu


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _ListDataset:
    """A list of tokenized examples as a map-style dataset (the Trainer only needs len and getitem)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class _Progress:
    """A rich progress bar on rank 0: step, loss, tokens/s, memory."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stdout.isatty()
        self.bar = None

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"))
        self.task = self.bar.add_task("train", total=total, info="")
        self.bar.start()

    def update(self, step: int, rec: dict) -> None:
        if self.bar is None:
            return
        info = f"loss {rec.get('loss', float('nan')):.3f}  {rec['tokens_per_s']:.0f} tok/s"
        if "max_allocated_bytes" in rec:
            info += f"  {rec['max_allocated_bytes'] / 2**30:.1f} GiB"
        self.bar.update(self.task, completed=step, info=info)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def main() -> None:
    from ftopt.errors import FtoptError
    from ftopt.train.engine import TrainConfig

    # the DeepSpeed launcher adds --local_rank=N (also in the environment as LOCAL_RANK, which we read)
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    cfg = TrainConfig(**json.loads(Path(args[0]).read_text()))
    try:
        run_worker(cfg)
    except FtoptError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
