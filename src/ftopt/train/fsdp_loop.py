"""The training loop of an FSDP2 rank: the Hugging Face Trainer's step (transformers 5, trainer.py
`_inner_training_loop`) in the few lines `fully_shard` needs, recorded with the same StepRecorder/TrainingPeak/
Progress as the Trainer runs. Point by point, with the Trainer's source for each:

- Optimizer: torch.optim.AdamW(fused=True), the Trainer's `adamw_torch_fused` (Optim.ADAMW.hf_name); betas
  (0.9, 0.999) and eps 1e-8 are TrainingArguments' adam_* defaults and torch's. Weight decay is the run's
  (`Schedule.weight_decay`, TrainingArguments' 0.0), on the parameters Trainer.get_decay_parameter_names names
  (not biases, not norms), the others in a group without decay (Trainer.create_optimizer).
- Schedule: transformers.get_scheduler with warmup int(warmup_ratio x total) steps (the warmup_steps the Trainer
  worker passes), stepped once per optimizer step and not after a step the loss scaler skipped
  (`if not self.accelerator.optimizer_step_was_skipped: self.lr_scheduler.step()`).
- Loss over gradient accumulation and ranks: each micro-batch's token losses summed and divided by the label
  tokens of the whole step, every micro-batch on every rank (`num_items_in_batch`, counted over labels[..., 1:]
  for a causal LM; `average_tokens_across_devices=True` is the default), times the world size because FSDP2's
  reduce-scatter averages gradients over the ranks as DDP does (Trainer.compute_loss multiplies by
  num_processes). So a step's gradient is that of the mean token loss over the global batch, however the tokens
  fall into micro-batches; the logged loss is that mean. A model whose forward takes no loss kwargs gets the
  Trainer's fallback: each micro-batch's mean loss divided by the accumulation steps.
- Clipping: clip_grad_norm_ to `Schedule.max_grad_norm` (TrainingArguments' 1.0), none at 0.
- fp16-mixed: torch.amp.GradScaler, as the Trainer's fp16 (accelerate's GradScaler): the loss is scaled before
  backward, the gradients unscaled before clipping, and a step with inf/NaN gradients skipped. It works on FSDP2's
  DTensor gradients: DTensor dispatches the unscale kernel to `found_inf_reduce_handler`
  (torch/distributed/tensor/_dispatch.py), which all-reduces the overflow flag over the mesh, so every rank skips
  the same steps (torchtitan's docs/fsdp.md: "GradScaler ... works with FSDP2").
- Data: a DistributedSampler per rank, reshuffled per epoch (set_epoch) with the run's seed. The Trainer's
  accelerate-prepared loader shards one seeded random order instead: the same distribution of batches, another
  order, so a Trainer and an FSDP2 run of one spec see different batches at a given step.
- Tokens seen: the non-padding tokens (attention_mask), summed over ranks (include_num_input_tokens_seen=
  "non_padding"); checkpoints every --save-steps, --max-hours and resume as the Trainer worker's.
"""

from __future__ import annotations

import inspect
import os
import time


class FsdpLoop:
    def __init__(self, spec, model, prep, device, rank: int, world: int, total: int, peak, interrupt=None):
        """`interrupt`: ftopt.train.dist.Interrupt, a Ctrl-C the launcher forwarded (None with one rank)."""
        import torch
        from torch.utils.data import DataLoader, DistributedSampler
        from transformers import get_scheduler

        from ftopt.spec import Precision
        from ftopt.train.callbacks import Progress, TimeBudget
        from ftopt.train.recorder import StepLog, StepRecorder

        self.spec, self.model, self.prep, self.device = spec, model, prep, device
        self.rank, self.world, self.total, self.peak = rank, world, total, peak
        sch, s = spec.schedule, spec.setup
        self.optimizer = torch.optim.AdamW(param_groups(model, sch.weight_decay), lr=sch.learning_rate, fused=True)
        self.scaler = torch.amp.GradScaler(device.type) if s.precision is Precision.FP16_MIXED else None
        self.loss_kwargs = accepts_loss_kwargs(model)
        self.scheduler = get_scheduler(
            sch.lr_schedule.value, self.optimizer, int(sch.warmup_ratio * total), num_training_steps=total
        )
        self.sampler = DistributedSampler(prep.train_dataset, world, rank, shuffle=True, seed=sch.seed)
        self.loader = DataLoader(prep.train_dataset, s.micro_batch, sampler=self.sampler, collate_fn=prep.collator)
        self.steps_log = StepLog(spec.output_dir / "steps.jsonl") if rank == 0 else None
        self.recorder = StepRecorder(self.steps_log, device, rank)
        self.progress, self.budget = Progress(rank == 0), TimeBudget(sch.max_hours, interrupt)
        self.interrupt = interrupt
        self.step, self.tokens_seen, self.seconds = 0, 0, 0.0

    def _resume(self, log, ck) -> None:
        """From checkpoint `ck`: the one rank 0 chose for every rank (ftopt.train.dist.agree), or None."""
        from ftopt.train.fsdp_engine import load_checkpoint

        if self.spec.output.resume:
            log(f"resuming from {ck}" if ck else "no complete checkpoint found: starting from the beginning")
        if ck is not None:
            st = load_checkpoint(ck, self.model, self.optimizer)
            self.step, self.tokens_seen = st["global_step"], st["num_input_tokens_seen"]
            self.scheduler.load_state_dict(st["scheduler"])
            if self.scaler is not None and "scaler" in st:
                self.scaler.load_state_dict(st["scaler"])
        if self.steps_log is not None:
            self.steps_log.truncate_after(self.step)  # a resumed run redoes later steps

    def _batches(self):
        """Micro-batches from the current position: epochs reshuffle (set_epoch); a resumed run skips what the
        checkpointed steps consumed."""
        per_epoch = len(self.loader)
        done = self.step * self.spec.setup.grad_accum
        epoch, skip = divmod(done, per_epoch) if per_epoch else (0, 0)
        while True:
            self.sampler.set_epoch(epoch)
            for i, batch in enumerate(self.loader):
                if i >= skip:
                    yield {k: v.to(self.device) for k, v in batch.items()}
            epoch, skip = epoch + 1, 0

    def train(self, log, resume=None) -> bool:
        """Steps from checkpoint `resume` until `total`, --max-hours or Ctrl-C (every rank stops after the same
        step, with a checkpoint); returns whether the time budget stopped the run (`budget.interrupted`: Ctrl-C)."""
        self._resume(log, resume)
        fail_at = _injected_failure_step()
        batches = self._batches()
        interrupt = self.interrupt
        self.progress.start(self.total, self.step)
        t0 = time.perf_counter()
        if interrupt is not None:
            interrupt.in_loop = True
        try:
            while self.step < self.total:
                loss = self._one_step(batches)
                if fail_at is not None and self.step >= fail_at:
                    raise RuntimeError(f"injected failure at step {self.step}")
                hit = self.budget.due()
                if hit or self.step % self.spec.schedule.save_steps == 0 or self.step == self.total:
                    self._checkpoint()
                if hit:
                    return self.budget.hit
                del loss
        finally:
            if interrupt is not None:
                interrupt.in_loop = False
            self.progress.stop()
            self.seconds = time.perf_counter() - t0
            if self.steps_log is not None:
                self.steps_log.close()
        return False

    def _one_step(self, batches) -> float:
        import torch
        import torch.distributed as dist

        self.recorder.begin(self.tokens_seen)
        micro = [next(batches) for _ in range(self.spec.setup.grad_accum)]  # the Trainer's get_batch_samples
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (the step's loss on this rank, tokens)
        for batch, loss in zip(micro, self._losses(micro)):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            mask = batch.get("attention_mask")
            tokens = mask.sum().item() if mask is not None else batch["input_ids"].numel()  # non-padding
            total += torch.tensor([loss.item(), tokens], dtype=torch.float64, device=self.device)
        self._optimizer_step()
        dist.all_reduce(total)  # the Trainer logs the mean over ranks of each rank's loss; its token count is global
        self.step += 1
        self.tokens_seen += int(total[1].item())
        rec = self.recorder.end(self.step, self.tokens_seen)
        self.peak.after_step(self.step)
        rec = self.recorder.flush(total[0].item() / self.world)
        self.progress.update(self.step, rec)
        return rec["loss"]

    def _losses(self, micro: list[dict]):
        """Each micro-batch's share of the step's loss, scaled as the Trainer scales it (module docstring)."""
        if not self.loss_kwargs:
            ga = len(micro)
            for batch in micro:
                yield self.model(**batch).loss / ga
            return
        items = label_tokens(micro, self.device)
        for batch in micro:
            yield self.model(**batch, num_items_in_batch=items).loss * self.world

    def _optimizer_step(self) -> None:
        """Unscale (fp16), clip, step; the schedule advances unless the loss scaler skipped the step."""
        import torch

        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.spec.schedule.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.spec.schedule.max_grad_norm)
        skipped = False
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale  # a backoff: inf/NaN gradients, no step (accelerate's test)
        else:
            self.optimizer.step()
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _checkpoint(self) -> None:
        from ftopt.train.fsdp_engine import prune_checkpoints, save_checkpoint

        if self.steps_log is not None:
            self.steps_log.sync()  # a checkpoint never holds more steps than steps.jsonl
        folder = self.spec.output_dir / f"checkpoint-{self.step}"
        state = {
            "global_step": self.step,
            "num_input_tokens_seen": self.tokens_seen,
            "scheduler": self.scheduler.state_dict(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()  # floats and ints: the loss scale and its growth tracker
        save_checkpoint(folder, self.model, self.optimizer, state, self.rank)
        if self.rank == 0:
            prune_checkpoints(self.spec.output_dir)

    def eval_loss(self, dataset) -> float | None:
        """The Trainer's eval loss: per batch the token-weighted mean over every rank's share (num_items_in_batch
        of that batch, as Trainer.prediction_step counts it), then the mean over batches. Every rank runs the same
        number of batches: DistributedSampler pads to a multiple of the world size."""
        if dataset is None:
            return None
        import torch
        import torch.distributed as dist
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=False)
        loader = DataLoader(dataset, self.spec.setup.micro_batch, sampler=sampler, collate_fn=self.prep.collator)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (loss sum, batches x ranks)
        self.model.eval()
        with torch.no_grad():
            for batch in loader:
                (loss,) = self._losses([{k: v.to(self.device) for k, v in batch.items()}])
                total += torch.tensor([loss.item(), 1.0], dtype=torch.float64, device=self.device)
        self.model.train()
        dist.all_reduce(total)
        return (total[0] / total[1]).item() if total[1] else None


def param_groups(model, weight_decay: float) -> list[dict]:
    """The trainable parameters in the Trainer's two groups: decay on what Trainer.get_decay_parameter_names
    names, none on biases and norms. That method reads only its `model` argument; calling it unbound keeps its
    name patterns the Trainer's own."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]


def accepts_loss_kwargs(model) -> bool:
    """Whether the model's forward takes `num_items_in_batch`, decided as the Trainer decides it: the base model's
    `accepts_loss_kwargs`, else a **kwargs in its forward's signature."""
    from transformers.trainer_utils import unwrap_peft_model

    base = unwrap_peft_model(model)
    flag = getattr(base, "accepts_loss_kwargs", None)
    if flag is not None:
        return bool(flag)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(base.forward).parameters.values())


def label_tokens(micro: list[dict], device):
    """The label tokens a causal LM predicts in the step's micro-batches on every rank: labels[..., 1:] that are
    not -100 (the Trainer's _get_num_items_in_batch), summed over the micro-batches and all-reduced over ranks."""
    import torch
    import torch.distributed as dist

    n = sum(int(b["labels"][..., 1:].ne(-100).sum()) for b in micro)
    items = torch.tensor(n, dtype=torch.int64, device=device)
    dist.all_reduce(items)
    return items


def _injected_failure_step() -> int | None:
    """Tests crash a run mid-way with FTOPT_INJECT_FAILURE=step:N (the Trainer path's injection, ftopt.train
    .callbacks, names oom/crash at the start; a crash after a checkpoint is what resume needs)."""
    v = os.environ.get("FTOPT_INJECT_FAILURE", "")
    return int(v[5:]) if v.startswith("step:") and v[5:].isdigit() else None
