"""The order a sweep runs in: one run after another, or one-process runs side by side on a machine with cores to
spare.

A CPU sweep gives every process one thread, standing for one GPU (ftopt.sweep.bench). With `slots` = 2, two
one-process runs share the machine at a time and a run of two processes runs alone, so the machine carries two
one-thread processes throughout: each run sees the same load whichever kind it is, and the sweep takes about half
the time of the one-process runs. A run of more processes than `slots` also runs alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from ftopt.train.ranks import signals_interrupt

T = TypeVar("T")
R = TypeVar("R")


def run_in_order(
    items: Iterable[T],
    run: Callable[[T, set[subprocess.Popen]], R],
    processes: Callable[[T], int],
    slots: int,
    on_start: Callable[[T], None],
    on_done: Callable[[T, R], None],
) -> None:
    """`run(item, procs)` for each item, started in order: up to `slots` one-process items at once; an item of
    several processes waits until nothing else runs and runs alone. `on_start` and `on_done` are called on this
    thread. `run` adds the subprocesses it starts to `procs`: on Ctrl-C or an error here, every one still running
    is stopped with its process group before the exception goes on."""
    procs: set[subprocess.Popen] = set()
    running: dict[Future, T] = {}

    def settle(until: int) -> None:
        while len(running) > until:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                on_done(running.pop(f), f.result())

    # SIGTERM (kill, a CI job's cancel, Slurm's scancel) as Ctrl-C: its default ends this process at once, and the
    # runs, each in a session of its own, would train on as orphans that no results line ever records
    with signals_interrupt(signal.SIGTERM), ThreadPoolExecutor(max_workers=max(1, slots)) as pool:
        try:
            for item in items:
                alone = processes(item) > 1 or slots <= 1
                settle(0 if alone else slots - 1)
                on_start(item)
                running[pool.submit(run, item, procs)] = item
                if alone:
                    settle(0)
            settle(0)
        except BaseException:
            for p in list(procs):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise
