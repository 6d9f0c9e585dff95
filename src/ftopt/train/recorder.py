"""Per-step measurements: loss, wall time, tokens/s and (CUDA) memory, appended to steps.jsonl.

Timing on a GPU: kernels run asynchronously, so host time at a callback is the time to *queue* a step, not to run
it. `StepRecorder` synchronizes the device at both step boundaries; the synchronize costs one round trip per step
(microseconds), far below any real step.

steps.jsonl is written one whole line per `write` (never a partial line after a crash) without an fsync per
step: on a shared disk an fsync can take longer than a small step, and nothing needs the record on disk before the
next checkpoint. The file is fsynced at every checkpoint and at the end, so a resumed run never sees fewer steps
than its checkpoint holds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class StepLog:
    """steps.jsonl: one JSON object per optimizer step, appended by rank 0."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    def append(self, rec: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)  # line-buffered: one write per line
        self._f.write(json.dumps(rec) + "\n")

    def sync(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None

    def truncate_after(self, step: int) -> None:
        """Resuming from checkpoint `step`: drop the records of later steps, which the run will redo."""
        from ftopt.spec.io import atomic_write_text

        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
        return out


class StepRecorder:
    """Times each optimizer step (device-synchronized) and keeps the record until the Trainer logs its loss."""

    def __init__(self, log: StepLog | None, device, rank: int):
        self.log, self.device, self.rank = log, device, rank
        self._t: float | None = None
        self._tokens = 0
        self.pending: dict | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def begin(self, tokens_seen: int) -> None:
        self._sync()
        self._t, self._tokens = time.perf_counter(), tokens_seen

    def end(self, step: int, tokens_seen: int) -> dict:
        """Time and tokens of the step that just ended. The Trainer logs that step's loss only after
        on_step_end, so the record waits in `pending` until `flush` attaches the loss and writes it."""
        self._sync()
        dt = time.perf_counter() - (self._t or time.perf_counter())
        tok = max(0, tokens_seen - self._tokens)
        rec = {"step": step, "rank": self.rank, "seconds": dt, "tokens": tok, "tokens_per_s": tok / dt if dt else 0.0}
        if self.device.type == "cuda":
            import torch

            rec["max_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            rec["max_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        self.pending = rec
        return rec

    def flush(self, loss: float | None) -> dict | None:
        rec, self.pending = self.pending, None
        if rec is None:
            return None
        if loss is not None:
            rec["loss"] = loss
        if self.log is not None:
            self.log.append(rec)
        return rec
