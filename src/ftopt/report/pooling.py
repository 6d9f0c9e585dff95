"""Repeats of one combination (`ftopt bench --repeat N`) as one candidate: their steady step times pooled into one
median and interquartile range, so that a combination is never "tied" with its own repeat and N runs count as
N times the evidence of one.

Each repeat leaves out its own warm-up steps (ftopt.results.rows.WARMUP_STEPS, stored per run); rows written before
per-step times were kept (ftopt.sweep.bench/1-2) contribute their stored median as one sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ftopt.results.rows import ResultRow, StepStats, step_stats


def combination_key(r: ResultRow) -> tuple[str, str, str, int]:
    """What makes runs repeats of each other: the same combination with the same settings (the run's identity:
    model, data, setup, schedule; bench/1's sweep flags) on the same number of processes. A results file may hold
    one combination under other settings too (bench reruns it when they change): those are not repeats."""
    settings = r.run.identity() if r.run else (r.legacy_sweep or {})
    return r.label, r.combination.model_dump_json(), json.dumps(settings, sort_keys=True, default=str), r.gpus


@dataclass(frozen=True)
class Pool:
    """The successful repeats of one combination and their pooled step-time statistics."""

    rows: tuple[ResultRow, ...]
    stats: StepStats

    @property
    def repeats(self) -> int:
        return len(self.rows)

    @property
    def representative(self) -> ResultRow:
        """The repeat whose own median is nearest the pooled one: it stands for the combination in the text."""
        return min(self.rows, key=lambda r: abs(_median(r) - self.stats.median))

    def band(self) -> tuple[float, float, float] | None:
        """(low, median, high) GPU-seconds per epoch: pooled spread x steps per epoch x GPUs."""
        r = self.representative
        per = r.measured.steps_per_epoch
        if per is None:
            return None
        k = per * r.gpus
        return self.stats.low * k, self.stats.median * k, self.stats.high * k


def _median(r: ResultRow) -> float:
    s = r.measured.stats()
    return s.median if s else float("inf")


def _steady(r: ResultRow) -> list[float]:
    m = r.measured
    if m.step_times:
        return m.step_times[m.warmup_steps :] or m.step_times[-1:]
    return [m.step_seconds] if m.step_seconds else []


def pool(rows: list[ResultRow]) -> list[Pool]:
    """The successful rows grouped by combination_key (first-seen order), each group's steady steps pooled."""
    groups: dict[tuple[str, int], list[ResultRow]] = {}
    for r in rows:
        if r.ok:
            groups.setdefault(combination_key(r), []).append(r)
    out = []
    for g in groups.values():
        times = [t for r in g for t in _steady(r)]
        s = step_stats(times, warmup=0)
        if s is not None:
            warmup = max(r.measured.warmup_steps for r in g) if any(r.measured.step_times for r in g) else 0
            out.append(Pool(tuple(g), s.model_copy(update={"warmup": warmup})))
    return out
