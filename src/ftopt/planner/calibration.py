"""The time-model fit: per-hardware constants fitted from measured runs (`ftopt bench`), checked leave-one-out on
combinations the fit did not see, with the constants that sit on a bound named.

Storing, merging and applying fits is ftopt/planner/calibration_store.py; nothing here reads or writes the cache.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydantic import BaseModel, Field

from ftopt.spec.calibration import MFU_AT_BOUND
from ftopt.spec.errors import FtoptError

# A point's step time is the median of its steady steps (warm-up left out): with fewer than 3 that median is a mean
# of one or two steps, which one slow step on a shared machine moves by its whole excess; with 3 it ignores that step.
# `bench --max-steps 4` (2 warm-up steps) leaves 2.
MIN_STEADY_STEPS = 3


class _Steps(Protocol):
    @property
    def steps(self) -> int | None: ...


P = TypeVar("P", bound=_Steps)


def short_reason(steps: int | None) -> str | None:
    """Why a point with `steps` steady steps behind it is too short to fit on (None: it is not, or not recorded)."""
    if steps is None or steps >= MIN_STEADY_STEPS:
        return None
    return f"{steps} measured step{'' if steps == 1 else 's'}, fewer than {MIN_STEADY_STEPS} (raise --max-steps)"


def fit_worthy(points: list[P]) -> tuple[list[P], list[P]]:
    """(the points a fit stands on, the points it leaves out): a point on fewer than MIN_STEADY_STEPS steady steps
    stays out while a longer one remains, so a smoke bench added to measured runs neither moves their fit nor fails
    its checks. With only short points the fit stands on them, and its fewest steps then keep it from being applied."""
    kept = [p for p in points if short_reason(p.steps) is None]
    if not kept:
        return list(points), []
    return kept, [p for p in points if short_reason(p.steps) is not None]


# ---- fitting the time model to measured runs ------------------------------------------------------------------------
# Model (estimate/time.py), per optimizer step:
#   measured_seconds = ideal_seconds / mfu + kernels * seconds_per_kernel + fixed_step_seconds (+ zero_step_seconds[stage])
# where ideal_seconds = FLOPs / peak FLOP/s and kernels = dispatched operators, both predicted for the run.


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else float("nan")


@dataclass(frozen=True)
class TimePoint:
    """One combination's measurement: the median over its repeats, so that a held-out combination has no twin
    left in the fit."""

    label: str
    ideal_seconds: float  # FLOPs / peak FLOP/s
    kernels: int | None  # dispatched operators per step (None: results written before ftopt counted them)
    zero: int
    measured_seconds: float
    gpus: int = 1  # processes of the run
    runs: int = 1  # measurements merged into measured_seconds
    fsdp: str = "none"  # FSDP2 mode (Fsdp value) of the run; its engine cost is fitted like a ZeRO stage's
    steps: int | None = None  # steady steps behind measured_seconds, over its runs (None: a run without step times)

    @property
    def plain(self) -> bool:
        """Neither engine: the runs mfu and the overheads are fitted on."""
        return self.zero == 0 and self.fsdp == "none"


@dataclass(frozen=True)
class TimeModel:
    mfu: float
    seconds_per_kernel: float
    fixed_step_seconds: float
    zero_step_seconds: dict[int, float]
    fsdp_step_seconds: dict[str, float] = field(default_factory=dict)

    def predict(self, p: TimePoint) -> float:
        return (
            p.ideal_seconds / self.mfu
            + (p.kernels or 0) * self.seconds_per_kernel
            + self.fixed_step_seconds
            + self.zero_step_seconds.get(p.zero, 0.0)
            + self.fsdp_step_seconds.get(p.fsdp, 0.0)
        )

    def at_bound(self) -> list[str]:
        """The constants the bounded fit pinned to a bound: mfu at 100% means the runs cannot tell the FLOP rate
        apart from the overheads (too few or too similar runs), an overhead at 0 that the fit found none."""
        out = []
        if self.mfu >= 1.0 - 1e-9:
            out.append(MFU_AT_BOUND)
        if self.seconds_per_kernel <= 0.0:
            out.append("per-operator cost at 0")
        if self.fixed_step_seconds <= 0.0:
            out.append("fixed per-step cost at 0")
        return out


def fit_time_model(points: list[tuple[float, int | None, float]]) -> tuple[float, float, float]:
    """Least squares of t = x / mfu + k * seconds_per_kernel + fixed over (x, k, t) points, with mfu <= 1 and
    both overheads >= 0 (bounded least squares by enumerating which bounds are active: 3 unknowns, 8 cases).
    Among equally good fits the one with fewer free constants wins. Returns (mfu, seconds_per_kernel, fixed)."""
    import numpy as np  # lazy: plan/estimate load calibrations without fitting

    if not points:
        raise FtoptError("No successful runs to calibrate the time model with.")
    use_kernels = all(k is not None for _, k, _ in points)
    a = np.array([[x, float(k or 0), 1.0] for x, k, _ in points])  # (n, 3): columns x, k, 1
    t = np.array([p[2] for p in points])
    lower = np.array([1.0, 0.0, 0.0])  # 1/mfu >= 1, seconds_per_kernel >= 0, fixed >= 0
    best: tuple[float, int, np.ndarray] | None = None
    for free in itertools.product((True, False), repeat=3):
        if (free[1] and not use_kernels) or sum(free) > len(points):
            continue
        free_mask = np.array(free)
        coef = lower.copy()
        if free_mask.any():  # the others sit at their bound
            target = t - a[:, ~free_mask] @ lower[~free_mask]
            coef[free_mask], *_ = np.linalg.lstsq(a[:, free_mask], target, rcond=None)
        if np.any(coef < lower - 1e-12):
            continue
        rank = (round(float(np.sum((a @ coef - t) ** 2)), 15), sum(free))
        if best is None or rank < best[:2]:
            best = (*rank, coef)
    assert best is not None  # every constant at its bound is always feasible
    slope, per_kernel, fixed = best[2]
    return float(1.0 / max(slope, 1.0)), float(max(per_kernel, 0.0)), float(max(fixed, 0.0))


def _fit(points: list[TimePoint]) -> TimeModel:
    """mfu and the overheads from the plain (ZeRO 0) runs; each ZeRO stage's engine cost as its median residual."""
    plain = [p for p in points if p.plain] or points
    mfu, per_kernel, fixed = fit_time_model([(p.ideal_seconds, p.kernels, p.measured_seconds) for p in plain])
    base = TimeModel(mfu, per_kernel, fixed, {})
    extra: dict[int, float] = {}
    for z in sorted({p.zero for p in points if p.zero}):
        res = sorted(p.measured_seconds - base.predict(p) for p in points if p.zero == z)
        extra[z] = max(0.0, res[len(res) // 2])
    fsdp: dict[str, float] = {}  # FSDP2's engine cost per mode, the same way (its runs have zero == 0)
    for f in sorted({p.fsdp for p in points if p.fsdp != "none"}):
        res = sorted(p.measured_seconds - base.predict(p) for p in points if p.fsdp == f)
        fsdp[f] = max(0.0, res[len(res) // 2])
    return TimeModel(mfu, per_kernel, fixed, extra, fsdp)


class HeldOut(BaseModel):
    label: str
    predicted_seconds: float
    measured_seconds: float


# Two combinations whose measured step times differ by less than this are a tie for ranking purposes: repeats of
# one combination on a shared 2-core machine differ by up to ~10% (benchmarks in README, `ftopt bench --repeat`).
RANK_TIE_FRACTION = 0.10


def ordered_pairs(predicted: list[float], measured: list[float], tie: float = RANK_TIE_FRACTION) -> tuple[int, int]:
    """(pairs the prediction orders like the measurement, pairs compared): only pairs whose measured times differ by
    more than `tie`, since the order of near-ties is decided by noise."""
    agree = total = 0
    for i in range(len(measured)):
        for j in range(i + 1, len(measured)):
            lo, hi = sorted((measured[i], measured[j]))
            if hi - lo <= tie * lo:
                continue
            total += 1
            agree += (predicted[i] - predicted[j]) * (measured[i] - measured[j]) > 0
    return agree, total


class CalibrationFit(BaseModel):
    mfu: float
    seconds_per_kernel: float
    fixed_step_seconds: float
    zero_step_seconds: dict[int, float]
    fsdp_step_seconds: dict[str, float] = Field(default_factory=dict)
    fit_runs: int
    combinations: int = Field(description="distinct combinations (repeats are merged by their median)")
    holdout_runs: int = Field(description="combinations predicted by a fit that excluded them (leave-one-out)")
    holdout_median_abs_error: float | None
    holdout_worst_abs_error: float | None
    spearman_rho: float | None
    pairs_ordered: int = Field(0, description="held-out pairs, apart by more than RANK_TIE_FRACTION, ordered right")
    pairs_compared: int = 0
    holdout: list[HeldOut] = Field(default_factory=list)
    at_bound: list[str] = Field(default_factory=list, description="constants the bounded fit pinned to a bound")
    left_out: list[str] = Field(
        default_factory=list, description="measured points the fit left out, each with why (fit_worthy)"
    )


def time_points(rows: list, hw) -> tuple[list[TimePoint], int]:
    """Successful runs (ftopt.results.rows.ResultRow) with predicted FLOPs, merged per combination and process count
    (median step time)."""
    from ftopt.results.rows import parse_rows
    from ftopt.spec import Precision

    groups: dict[tuple, list] = {}
    for r in parse_rows(rows):
        pred = r.predicted.analytic
        if r.ok and r.measured.step_seconds and pred is not None and pred.flops_per_step:
            groups.setdefault((r.combination, r.gpus), []).append(r)
    points = []
    for runs in groups.values():
        r = runs[0]
        # results lines carry their run specification; lines written before ftopt.bench/2 carried "sweep"
        precision = r.run.setup.precision if r.run else Precision((r.legacy_sweep or {}).get("precision", "fp32"))
        peak = hw.flops_for(precision.compute_dtype) or hw.flops_for("fp32")
        pred = r.predicted.analytic
        points.append(
            TimePoint(
                r.label,
                pred.flops_per_step / peak,
                pred.kernels_per_step,
                r.combination.zero,
                statistics.median(x.measured.step_seconds for x in runs),
                gpus=r.gpus,
                runs=len(runs),
                fsdp=r.combination.fsdp.value,
                steps=_steady_steps(runs),
            )
        )
    return points, sum(len(v) for v in groups.values())


def _steady_steps(runs: list) -> int | None:
    """Steady steps measured over these runs (ResultRow), None when one of them kept only its median."""
    steps = [r.measured.stats().steps for r in runs]
    return None if 0 in steps else sum(steps)


def calibrate(rows: list[dict], hw) -> CalibrationFit:
    """Fit the time model on successful runs of hardware `hw` (the fit-worthy ones) and check it on combinations it
    did not see."""
    pts, _ = time_points(rows, hw)
    used, short = fit_worthy(pts)
    return calibrate_points(used).model_copy(
        update={"left_out": [f"{p.label}: {short_reason(p.steps)}" for p in short]}
    )


def calibrate_points(pts: list[TimePoint]) -> CalibrationFit:
    """Fit on merged points as given (the callers pick them: fit_worthy) and check each by leave-one-out: predicted by
    a fit on all the others, when another point of its ZeRO stage (and, for a ZeRO stage, a plain one) remains to
    calibrate it."""
    if not pts:
        raise FtoptError("No successful runs to calibrate the time model with.")
    n_runs = sum(p.runs for p in pts)
    model = _fit(pts)
    held: list[HeldOut] = []
    for i, p in enumerate(pts):
        rest = pts[:i] + pts[i + 1 :]
        same = any(q.zero == p.zero and q.fsdp == p.fsdp for q in rest)
        if not same or (not p.plain and not any(q.plain for q in rest)):
            continue
        held.append(
            HeldOut(label=p.label, predicted_seconds=_fit(rest).predict(p), measured_seconds=p.measured_seconds)
        )
    errs = sorted(abs(h.predicted_seconds - h.measured_seconds) / h.measured_seconds for h in held)
    pred, meas = [h.predicted_seconds for h in held], [h.measured_seconds for h in held]
    rho = spearman(pred, meas) if len(held) >= 3 else None
    agree, compared = ordered_pairs(pred, meas)
    return CalibrationFit(
        mfu=model.mfu,
        seconds_per_kernel=model.seconds_per_kernel,
        fixed_step_seconds=model.fixed_step_seconds,
        zero_step_seconds=model.zero_step_seconds,
        fsdp_step_seconds=model.fsdp_step_seconds,
        fit_runs=n_runs,
        combinations=len(pts),
        holdout_runs=len(held),
        holdout_median_abs_error=statistics.median(errs) if errs else None,
        holdout_worst_abs_error=errs[-1] if errs else None,
        spearman_rho=rho,
        pairs_ordered=agree,
        pairs_compared=compared,
        holdout=held,
        at_bound=model.at_bound(),
    )
