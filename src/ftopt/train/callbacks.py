"""The Trainer callback of `ftopt train`: step timing, the training-only memory peak, a clean stop at
`--max-hours`, and a progress bar. Kept apart from the worker so the sequence there stays readable."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from transformers import TrainerCallback

from ftopt.results.measure import EXCLUDED_SCOPE

MEMORY_TRACE_STEPS = 2  # on a CPU the allocator-level peak is read over the build and the first steps


class TrainingPeak:
    """Peak memory of the *training* phase, read before evaluation and generation can raise it.

    CUDA: max_memory_allocated/reserved since the counters were reset before the model was built.
    CPU: the allocator-level peak (profiler memory events) over the build and the first MEMORY_TRACE_STEPS steps;
    the profiler is stopped then, because it slows every later step."""

    def __init__(self, device):
        import torch

        self.device = device
        self._floor = (0, 0)  # CUDA: (allocated, reserved) peaks before an excluded span reset the counters
        self.allocated_bytes: int | None = None
        self.reserved_bytes: int | None = None
        self.device_used_bytes: int | None = None  # CUDA: what nvidia-smi shows (context, NCCL, reserve included)
        self._cpu = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self._base = torch.cuda.memory_allocated(device)
        else:
            from ftopt.results.measure import AllocatorPeak

            self._cpu = AllocatorPeak().start()

    @contextmanager
    def excluded(self):
        """A span that is not training (the step-0 quality generation): its memory is left out of the peak. CPU: a
        profiler scope the reading skips (ftopt.results.measure.EXCLUDED_SCOPE). CUDA: the peaks so far are kept, the
        span's cached blocks released and the counters reset after it."""
        import torch

        if self._cpu is not None:
            with torch.profiler.record_function(EXCLUDED_SCOPE):
                yield
            return
        torch.cuda.synchronize(self.device)
        a, r = torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)
        self._floor = (max(self._floor[0], a), max(self._floor[1], r))
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def after_step(self, step: int) -> None:
        if self._cpu is not None and step >= MEMORY_TRACE_STEPS:
            self._cpu.stop_recording()  # the events are read after training (read()), outside the timed loop

    def read(self) -> None:
        """Idempotent: the first call after training fixes the figures."""
        if self.allocated_bytes is not None:
            return
        if self._cpu is not None:
            self.allocated_bytes = self._cpu.stop()
            return
        import torch

        torch.cuda.synchronize(self.device)
        self.allocated_bytes = max(torch.cuda.max_memory_allocated(self.device), self._floor[0]) - self._base
        self.reserved_bytes = max(torch.cuda.max_memory_reserved(self.device), self._floor[1])
        free, total = torch.cuda.mem_get_info(self.device)
        # the caching allocator keeps its peak segments until empty_cache(), so the device's use at the end of
        # training is its peak use: reserved memory plus CUDA context and NCCL buffers outside the allocator
        self.device_used_bytes = total - free

    def close(self) -> None:
        """Stop the CPU profiler whatever happened: a profiler left running crashes the interpreter at exit."""
        if self._cpu is not None and self.allocated_bytes is None:
            self.allocated_bytes = self._cpu.stop()


class TimeBudget:
    """Stops training at a checkpoint once `max_hours` have passed, or on Ctrl-C forwarded to the ranks
    (ftopt.train.dist.Interrupt). All ranks must stop at the same step, so they vote: rank 0's clock and any
    rank's Ctrl-C, reduced by MAX (one tiny collective per step, only with a budget or several ranks)."""

    def __init__(self, max_hours: float | None, interrupt=None):
        self.max_seconds = max_hours * 3600 if max_hours else None
        self.interrupt = interrupt
        self.t0 = time.monotonic()
        self.hit = False
        self.interrupted = False

    def due(self) -> bool:
        if self.max_seconds is None and self.interrupt is None:
            return False
        import torch
        import torch.distributed as dist

        over = self.max_seconds is not None and time.monotonic() - self.t0 >= self.max_seconds
        asked = self.interrupt is not None and self.interrupt.asked
        if dist.is_available() and dist.is_initialized():
            from ftopt.train.dist import collective_device

            flags = torch.tensor([int(over and dist.get_rank() == 0), int(asked)], device=collective_device())
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            over, asked = bool(flags[0].item()), bool(flags[1].item())
        self.hit = self.hit or over
        self.interrupted = self.interrupted or asked
        return over or asked


class RunCallback(TrainerCallback):
    def __init__(self, recorder, peak: TrainingPeak, budget: TimeBudget, progress, fail_at_step=None, node_local=False):
        self.recorder, self.peak, self.budget, self.progress = recorder, peak, budget, progress
        self.fail_at_step, self.node_local = fail_at_step, node_local

    def on_train_begin(self, args, state, control, **kw):
        self.progress.start(state.max_steps, state.global_step)
        # bench and launcher tests: a run that fails must not stop a sweep; "oom@1" fails rank 1 only
        injected, _, only = os.environ.get("FTOPT_INJECT_FAILURE", "").partition("@")
        if only and only != os.environ.get("RANK", "0"):
            injected = ""
        if injected == "oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        if injected == "crash":
            raise RuntimeError("injected crash")

    def on_step_begin(self, args, state, control, **kw):
        self.recorder.begin(state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kw):
        self.recorder.end(state.global_step, state.num_input_tokens_seen)
        self.peak.after_step(state.global_step)
        if self.fail_at_step is not None and state.global_step >= self.fail_at_step:
            raise RuntimeError(f"injected failure at step {state.global_step}")
        if self.budget.due():
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:  # logging_steps=1: the loss of the step that just ended
            rec = self.recorder.flush(logs["loss"])
            if rec is not None:
                self.progress.update(state.global_step, rec)

    def on_save(self, args, state, control, **kw):
        if self.recorder.log is not None:
            self.recorder.log.sync()  # a checkpoint never holds more steps than steps.jsonl
        ck = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        tag = f"global_step{state.global_step}"
        if self.node_local and args.should_save and os.path.isdir(os.path.join(ck, tag)):
            # DeepSpeed writes the 'latest' tag file on global rank 0 only; a node with its own folder needs its own
            with open(os.path.join(ck, "latest"), "w") as f:
                f.write(tag)

    def on_train_end(self, args, state, control, **kw):
        self.recorder.flush(None)
        self.peak.read()


class Progress:
    """A rich progress bar on rank 0 when stderr is a terminal; otherwise a line every 10% (logs, CI, --json)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.total = 0
        self._next = 0

    def start(self, total: int, done: int = 0) -> None:
        self.total, self._next = total, done + max(1, total // 10)
        self._t0, self._done0 = time.monotonic(), done  # the ETA: this session's mean step time
        if not self.enabled or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task("train", total=total, completed=done, info="")
        self.bar.start()

    def update(self, step: int, rec: dict) -> None:
        info = f"loss {rec.get('loss', float('nan')):.3f}  {rec['tokens_per_s']:.0f} tok/s"
        if "max_allocated_bytes" in rec:
            info += f"  {rec['max_allocated_bytes'] / 2**30:.1f} GiB"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and step >= self._next:
            self._next = step + max(1, self.total // 10)
            per_step = (time.monotonic() - self._t0) / max(1, step - self._done0)
            eta = f"  ETA {per_step * (self.total - step) / 60:.1f} min"
            print(f"step {step}/{self.total}: {info}{eta}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
