"""The traced step's live storages: each new storage tagged with the category of the phase that made it, counted
until it dies, and the peak of what a rank holds, per phase.

estimate/traced.py runs the step under FakeTensorMode with StorageMode active; every storage an op returns is
added here (no real memory: fake storages still have sizes and die when their last tensor does, weakref.finalize).
Gradients, optimizer states and weights are retagged where the step makes them. Bytes are rounded up to the
allocator's granularity (512 on CUDA) and, optionally, replayed through the caching allocator's rules
(estimate/allocator.Replay).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ftopt.estimate.allocator import Replay

# Backward is split where it leaves the LM head and where it reaches the embedding: at different depths the peak
# falls in different moments (start of backward with every layer's activations vs the embedding's gradients at its
# end), and only a moment's own snapshots extrapolate linearly in the layer count.
PHASE_CATEGORY = {
    "forward": "activations",
    "head": "logits_loss",
    "backward": "temporaries",
    "step": "temporaries",
    "setup": "temporaries",
    "backward-layers": "temporaries",
    "backward-embed": "temporaries",
}


def rank_bytes(snapshot: dict, grad_weight: float, count_states: bool) -> float:
    """Bytes a rank holds for a category snapshot: traced gradients scaled to the rank's share; weights and
    optimizer states only where the trace owns them (DeepSpeed's come from the ZeRO formulas)."""
    metric = sum(v for k, v in snapshot.items() if k != "gradients") + grad_weight * snapshot.get("gradients", 0)
    if not count_states:
        metric -= snapshot.get("weights", 0) + snapshot.get("optimizer_states", 0)
    return metric


@dataclass
class Tracker:
    """Live storages by category; the peak of what the rank holds (rank_bytes) with its category snapshot, overall
    and per phase."""

    grad_weight: float  # share of traced gradients a rank keeps (ZeRO-2/3 partition them)
    count_states: bool  # weights/optimizer states traced (Trainer) or added analytically (DeepSpeed)
    granularity: int  # bytes each storage is rounded up to (the caching allocator's block size; 1 on a CPU)
    phase: str = "setup"
    live: dict = field(default_factory=dict)  # storage key -> [nbytes, category]
    # running bytes and storage count per category, kept as storages come, go and change category: check_peak runs
    # after every op, and summing `live` there made the tracker a tenth of a trace's time
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    peak: float = -1.0
    peak_snapshot: dict = field(default_factory=dict)
    peak_phase: str = ""
    phase_peaks: dict = field(default_factory=dict)  # phase -> (metric, snapshot) at that phase's own peak
    # ZeRO-2 (analytic.zero2_first_reduce_grad_bytes): the rank's gradient partition, allocated whole at the first
    # reduction of a backward and kept until the step; a gradient counts in full until the next one arrives (by
    # then DeepSpeed has copied it into its bucket), after which it is "reduced" and counts no more
    zero2_partition_bytes: int = 0
    partition_live: bool = False
    pending_grad: int | None = None
    # the caching allocator run over the same mallocs and frees (estimate/allocator.py): the check of its closed form
    replay: Replay | None = None

    def on_grad(self, st: torch.UntypedStorage) -> None:
        if self.zero2_partition_bytes:
            if self.pending_grad in self.live:
                self._move(self.live[self.pending_grad], "reduced")
            self.pending_grad, self.partition_live = st._cdata, True
        self.retag(st, "gradients")
        self.check_peak()

    def end_step(self) -> None:
        self.partition_live, self.pending_grad = False, None

    def _size(self, nbytes: int) -> int:
        g = self.granularity
        return -(-nbytes // g) * g if g > 1 else nbytes

    def _count(self, nbytes: int, category: str, sign: int) -> None:
        self.sums[category] = self.sums.get(category, 0) + sign * nbytes
        self.counts[category] = self.counts.get(category, 0) + sign

    def _move(self, entry: list, category: str) -> None:
        self._count(entry[0], entry[1], -1)
        entry[1] = category
        self._count(entry[0], category, 1)

    def add(self, st: torch.UntypedStorage, category: str) -> None:
        key = st._cdata
        if key in self.live:
            return
        self.live[key] = entry = [self._size(st.nbytes()), category]
        self._count(entry[0], category, 1)
        if self.replay is not None:
            self.replay.malloc(key, st.nbytes())
        weakref.finalize(st, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self._count(entry[0], entry[1], -1)
        if self.replay is not None:
            self.replay.free(key)

    def retag(self, st: torch.UntypedStorage, category: str) -> None:
        entry = self.live.get(st._cdata)
        if entry is None:
            self.add(st, category)
        else:
            self._move(entry, category)

    def totals(self) -> dict[str, int]:
        """Live bytes per category (a category appears while it holds a storage)."""
        return {cat: self.sums[cat] for cat, n in self.counts.items() if n}

    def check_peak(self) -> None:
        t = self.totals()
        t.pop("reduced", None)
        if self.partition_live:
            t["grad_partition"] = self.zero2_partition_bytes
        metric = rank_bytes(t, self.grad_weight, self.count_states)
        if metric > self.phase_peaks.get(self.phase, (-1.0,))[0]:
            self.phase_peaks[self.phase] = (metric, t)
        if metric > self.peak:
            self.peak, self.peak_snapshot, self.peak_phase = metric, t, self.phase

    def enter_head(self, hidden: torch.Tensor) -> None:
        """LM head forward begins; backward leaves the head once `hidden` (its input) has its gradient."""
        self.phase = "head"
        self.mark_when_reached(hidden, "backward-layers")

    def mark_when_reached(self, t: torch.Tensor, phase: str) -> None:
        """Switch to `phase` when backward reaches tensor `t` (its gradient is computed)."""
        if isinstance(t, torch.Tensor) and t.requires_grad:
            t.register_hook(lambda _grad: setattr(self, "phase", phase))


class StorageMode(TorchDispatchMode):
    """Registers the storage of every tensor an op returns (inside FakeTensorMode: no real memory)."""

    def __init__(self, tracker: Tracker):
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.tracker.add(t.untyped_storage(), PHASE_CATEGORY[self.tracker.phase])
        self.tracker.check_peak()
        return out
