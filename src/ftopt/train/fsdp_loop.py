"""The training loop of an FSDP2 rank: the Trainer's semantics (AdamW, the LR schedule with warmup, gradient
clipping at 1.0, a DistributedSampler per epoch, checkpoints every --save-steps, --max-hours, resume) in the few
lines `fully_shard` needs, recorded with the same StepRecorder/TrainingPeak/Progress as the Trainer runs."""

from __future__ import annotations

import os
import time

MAX_GRAD_NORM = 1.0  # TrainingArguments.max_grad_norm's default, so FSDP2 and Trainer runs clip alike


class FsdpLoop:
    def __init__(self, spec, model, prep, device, rank: int, world: int, total: int, peak, interrupt=None):
        """`interrupt`: ftopt.train.dist.Interrupt, a Ctrl-C the launcher forwarded (None with one rank)."""
        import torch
        from torch.utils.data import DataLoader, DistributedSampler
        from transformers import get_scheduler

        from ftopt.train.callbacks import Progress, TimeBudget
        from ftopt.train.recorder import StepLog, StepRecorder

        self.spec, self.model, self.prep, self.device = spec, model, prep, device
        self.rank, self.world, self.total, self.peak = rank, world, total, peak
        sch, s = spec.schedule, spec.setup
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=sch.learning_rate)
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

        ga = self.spec.setup.grad_accum
        self.recorder.begin(self.tokens_seen)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (loss sum over micro-batches, tokens)
        for _ in range(ga):
            batch = next(batches)
            loss = self.model(**batch).loss
            (loss / ga).backward()
            mask = batch.get("attention_mask")
            tokens = mask.sum().item() if mask is not None else batch["input_ids"].numel()  # non-padding
            total += torch.tensor([loss.item(), tokens], dtype=torch.float64, device=self.device)
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(total)  # the Trainer's logged loss is the mean over ranks; its token count is global
        self.step += 1
        self.tokens_seen += int(total[1].item())
        rec = self.recorder.end(self.step, self.tokens_seen)
        self.peak.after_step(self.step)
        rec = self.recorder.flush(total[0].item() / (ga * self.world))
        self.progress.update(self.step, rec)
        return rec["loss"]

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
        save_checkpoint(folder, self.model, self.optimizer, state, self.rank)
        if self.rank == 0:
            prune_checkpoints(self.spec.output_dir)

    def eval_loss(self, dataset) -> float | None:
        """Mean loss over the held-out rows, each rank its share (every rank runs the same number of batches:
        DistributedSampler pads to a multiple of the world size)."""
        if dataset is None:
            return None
        import torch
        import torch.distributed as dist
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=False)
        loader = DataLoader(dataset, self.spec.setup.micro_batch, sampler=sampler, collate_fn=self.prep.collator)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (loss sum, batches)
        self.model.eval()
        with torch.no_grad():
            for batch in loader:
                out = self.model(**{k: v.to(self.device) for k, v in batch.items()})
                total += torch.tensor([out.loss.item(), 1.0], dtype=torch.float64, device=self.device)
        self.model.train()
        dist.all_reduce(total)
        return (total[0] / total[1]).item() if total[1] else None


def _injected_failure_step() -> int | None:
    """Tests crash a run mid-way with FTOPT_INJECT_FAILURE=step:N (the Trainer path's injection, ftopt.train
    .callbacks, names oom/crash at the start; a crash after a checkpoint is what resume needs)."""
    v = os.environ.get("FTOPT_INJECT_FAILURE", "")
    return int(v[5:]) if v.startswith("step:") and v[5:].isdigit() else None
