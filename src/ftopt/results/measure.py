"""The one memory/time measurement helper, shared by `ftopt train`, `ftopt bench` and the benchmarks.

Memory is measured at the allocator, independently of the traced estimator:
  CUDA: torch.cuda.max_memory_allocated() (and max_memory_reserved) over the span, minus what was allocated
        before it.
  CPU:  the PyTorch profiler's memory events (`profile_memory=True`), which c10's CPU allocator reports for every
        allocation and free with its size and address. Their running sum over the span is the bytes the run added;
        its maximum is the peak. This counts real buffers of the real run (no FakeTensors, no dispatch-level
        bookkeeping), so it is an independent check of the tracer, which never allocates.
        One correction (`ledger_peak`): c10's ProfiledCPUMemoryReporter reports a free only on a thread where the
        profiler is active (memoryProfilingEnabled() reads thread-local state), so a tensor whose last reference
        dies on another thread (gloo's worker threads drop finished collectives' tensors: DeepSpeed's ZeRO-3
        all-gather buffers, zero.Init's broadcasts) stays "live" in a plain running sum for the rest of the run.
        The allocator cannot hand out an address that is still allocated, so an allocation at an address the
        ledger still holds proves the earlier block was freed unseen: it is retired then (at the latest possible
        moment, so the reading stays an upper bound). tests/test_measure.py shows both halves.
        A second (`retire_unseen_clones`): gloo's reduce-scatter clone, whose address may never come back, is freed
        when its reduce-scatter has returned (GLOO_REDUCE_SCATTER_OPS says why that is when it dies).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

# A profiler scope whose allocations and frees the CPU reading leaves out (a span inside a measured run that is not
# part of what is measured: `ftopt train`'s step-0 quality generation). Its events nest under the scope's event in
# the profiler's event tree, so they are skipped with it; a block allocated inside and freed after it is therefore
# freed unseen, which lowers the reading by that block only (generation frees its KV cache before it returns).
EXCLUDED_SCOPE = "ftopt.excluded"
# Kineto, the profiler's backend, prints "USDT:... profiler_start" and "... profiler_stop" on stderr at every start
# and stop (torch 2.13's kineto, SyncActivityProfilerHandler.cpp): markers for an external USDT trace collector,
# logged at its highest severity (USDT = 5), which the threshold torch sets (ERROR = 4) lets through. Its one setting
# is KINETO_LOG_LEVEL, read once per process when the first profiler starts; only a threshold above USDT hides
# them, and it hides kineto's own ERROR lines with them. A KINETO_LOG_LEVEL the user set is kept.
KINETO_QUIET_LEVEL = "6"


@dataclass
class MemoryReading:
    device: str
    peak_allocated_bytes: int = 0  # peak added over the span
    peak_reserved_bytes: int | None = None  # CUDA only: the caching allocator's reserve
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class AllocatorPeak:
    """CPU allocator-level peak between start() and stop(): the running sum of the profiler's memory events.
    A class rather than only a context manager because `ftopt train` stops it mid-run, after the first steps."""

    def __init__(self):
        from torch.profiler import ProfilerActivity, profile

        os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET_LEVEL)  # before this process's first profiler starts
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
        self.peak_bytes: int | None = None
        self._stopped = False

    def start(self) -> AllocatorPeak:
        self._prof.start()
        return self

    def stop_recording(self) -> None:
        """Stop recording now and read the events later (`stop`): reading walks every recorded event (the model
        build's included) in Python, work that does not belong inside a timed training loop."""
        if not self._stopped:
            self._prof.stop()
            self._stopped = True

    def stop(self) -> int:
        if self.peak_bytes is None:
            self.stop_recording()
            self.peak_bytes = ledger_peak(cpu_allocation_events(self._prof))
        return self.peak_bytes


# gloo has no reduce-scatter of its own: ProcessGroupGloo::reduce_scatter_tensor_coalesced (torch 2.13,
# torch/csrc/distributed/c10d/ProcessGroupGloo.cpp; `_reduce_scatter_base` calls it) clones the input, all-reduces
# the clone on a gloo worker thread and copies this rank's chunk out when the caller waits. The clone's last
# reference dies with whichever of the caller's Work and the worker's lets go last; when it is the worker's, the
# free is never reported and the address ledger would hold the clone until its address comes back, which may be
# never (measured on a two-process FSDP2 step: 4 of 8 layers' clones stayed "live" on one rank, +96 MiB, none on
# the other). Allocations inside these ops are that clone.
GLOO_REDUCE_SCATTER_OPS = frozenset({"c10d::_reduce_scatter_base_", "c10d::reduce_scatter_tensor_coalesced_"})


def cpu_allocation_events(prof) -> list[tuple[int, int, int]]:
    """(time ns, address, bytes: + allocated, - freed) of every CPU allocator event a profiler recorded, in time
    order (the event tree carries the address; the flat event list does not), except those under EXCLUDED_SCOPE,
    with the frees of gloo's reduce-scatter clones that went unseen put back (`retire_unseen_clones`)."""
    from torch._C._profiler import _EventType

    out: list[tuple[int, int, int, int, tuple[int, int] | None]] = []
    stack = [(ev, None) for ev in prof.profiler.kineto_results.experimental_event_tree()]
    while stack:
        ev, collective = stack.pop()
        if ev.tag == _EventType.Allocation:
            f = ev.extra_fields
            if f.device.type == "cpu":
                out.append((ev.start_time_ns, f.ptr, f.alloc_size, ev.start_tid, collective))
        elif ev.name != EXCLUDED_SCOPE:
            if ev.name in GLOO_REDUCE_SCATTER_OPS:
                collective = (ev.start_tid, ev.end_time_ns)
            stack.extend((c, collective) for c in reversed(ev.children))  # depth first, in recorded order
    out.sort(key=lambda e: e[0])  # stable: same-time events keep their recorded order
    return retire_unseen_clones(out)


def retire_unseen_clones(events: list[tuple[int, int, int, int, tuple[int, int] | None]]) -> list[tuple[int, int, int]]:
    """(time, address, bytes) from (time, address, bytes, thread, (issuing thread, end time) of the gloo
    reduce-scatter that allocated it, or None): a clone whose free was not reported is freed just before the next
    allocation the issuing thread makes after that reduce-scatter returned. Every caller on ftopt's CPU paths waits
    for it there (FSDP2's foreach_reduce and DeepSpeed's reduce_scatter_coalesced pass async_op=False), so by then
    the clone has served its purpose; the worker drops its reference as it finishes the collective."""
    frees: dict[int, list[int]] = {}  # address -> positions of its events, to find a reported free
    for i, (_t, ptr, _n, _tid, _c) in enumerate(events):
        frees.setdefault(ptr, []).append(i)
    extra: list[tuple[int, int, int, int]] = []  # (time, position it goes before, address, -bytes)
    for i, (_t, ptr, nbytes, _tid, collective) in enumerate(events):
        if collective is None or nbytes <= 0:
            continue
        later = [j for j in frees[ptr] if j > i]
        if later and events[later[0]][2] < 0:  # the next event at this address is its free: reported
            continue
        tid, end = collective
        nxt = next(
            (j for j in range(i + 1, len(events)) if events[j][3] == tid and events[j][0] > end and events[j][2] > 0),
            None,
        )
        if nxt is not None:
            extra.append((events[nxt][0], nxt, ptr, -nbytes))
    keyed = [(t, 2 * i + 1, ptr, n) for i, (t, ptr, n, _tid, _c) in enumerate(events)]
    keyed += [(t, 2 * j, ptr, n) for t, j, ptr, n in extra]
    return [(t, ptr, n) for t, _k, ptr, n in sorted(keyed)]


def ledger_peak(events: list[tuple[int, int, int]]) -> int:
    """Peak live bytes over (time, address, +/-bytes) events, by address: an allocation at an address still held
    retires the block held there first (it was freed on a thread the profiler does not see, see the module doc)."""
    held: dict[int, int] = {}
    live = peak = 0
    for _t, ptr, nbytes in events:
        if nbytes > 0:
            live += nbytes - held.pop(ptr, 0)
            held[ptr] = nbytes
            peak = max(peak, live)
        else:  # as reported (a block from before the span counts too, as in a plain running sum)
            live += nbytes
            held.pop(ptr, None)
    return peak


@contextmanager
def track_memory(device: str | torch.device = "cpu"):
    """`with track_memory(dev) as r: ...` fills r with the peak bytes the block added, and its wall time."""
    dev = torch.device(device)
    reading = MemoryReading(device=dev.type)
    t0 = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        base_reserved = torch.cuda.memory_reserved(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            yield reading
        finally:
            torch.cuda.synchronize(dev)
            reading.peak_allocated_bytes = torch.cuda.max_memory_allocated(dev) - base
            reading.peak_reserved_bytes = torch.cuda.max_memory_reserved(dev) - base_reserved
            reading.seconds = time.perf_counter() - t0
    else:
        tracker = AllocatorPeak().start()
        try:
            yield reading
        finally:
            reading.seconds = time.perf_counter() - t0
            reading.peak_allocated_bytes = tracker.stop()
