"""The measured decision: which successful run meets the user's quality bar at the lowest cost, whether that cost
difference is beyond noise, what the tie-breaks were, and whether the measurement confirms the plan's pick.

Cost basis. Without a target, or when the PoC ran what the target runs (its GPU, its model, its GPU count),
GPU-seconds per epoch as measured: the median step time over the steady steps, a two-process run paying for two
GPUs. When the PoC differs in any of these, PoC seconds say little about the target (a CPU's ranking of attention
kernels is not an A100's; a small model's is not a large one's): the choice among the runs that met the bar goes by
the calibrated projected GPU-hours on the target instead (ftopt.report.projection.poc_differences).

Noise. Each run's step time has a spread (interquartile range of its steady steps, ftopt.results.rows); two runs whose
spreads overlap are a tie, broken by quality, then measured peak memory, then the plan's prediction on the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ftopt.planner.choice import TIME_MODEL_ERROR
from ftopt.report.pooling import Pool, combination_key, pool
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import ResultRow, parse_rows
from ftopt.spec import Combination
from ftopt.spec.errors import FtoptError

QUALITY_TOLERANCE = 0.05  # without a user target: eval loss within 5% of the sweep's best (stated as such)
# A first logged training loss below this (nats per token) means the base already predicts the task: the sweep's
# issue example started at 0.00025, a model that has learned a task typically ends above 0.05.
NEAR_ZERO_LOSS = 0.01
# Quality metrics scored in [0, 1] (ftopt.results.quality: exact match, token F1, ROUGE-L F-measure, label accuracy), so 1
# is full marks; a user metric has no known top and a loss no full marks.
BOUNDED_METRICS = ("exact_match", "token_f1", "rouge_l", "label_accuracy")
FULL_MARKS = 1.0 - 1e-9  # a mean over rows of 0/1 scores is exactly 1.0 at full marks; the margin is float rounding


Band = tuple[float, float, float]  # (low, median, high) cost


def start_metric(target: QualityTarget) -> str:
    """The metric whose step-0 score says whether there was anything to learn: the target's when it has full
    marks (BOUNDED_METRICS), else exact match."""
    return target.metric if target.metric in BOUNDED_METRICS else "exact_match"


def full_marks_at_start(ok: list[ResultRow], target: QualityTarget) -> list[ResultRow]:
    """The runs scored before their first step when every one of them (at least one) already had full marks on
    start_metric; else []. Runs without a step-0 score (DeepSpeed runs, older files) say nothing either way: they
    fine-tune the same base on the same held-out rows."""
    metric = start_metric(target)
    scored = [r for r in ok if metric in r.measured.base_quality]
    if scored and all(r.measured.base_quality[metric] >= FULL_MARKS for r in scored):
        return scored
    return []


class Basis(str, Enum):
    MEASURED = "measured"  # PoC GPU-seconds per epoch (the PoC ran on the target's hardware, or no target given)
    PROJECTED = "projected"  # calibrated projected GPU-hours on the target hardware


class Why(str, Enum):
    """Why the measured pick is not the plan's pick."""

    QUALITY = "quality"  # the plan's pick missed the quality bar
    UNMEASURED = "unmeasured"  # the plan's pick did not measure the bar's metric: neither met nor missed
    FAILED = "failed"  # the plan's pick did not finish (oom, error, timeout)
    SLOWER = "slower"  # measured slower beyond noise
    TIE = "tie"  # tied within noise, the tie-break chose the other


def cost_band(r: ResultRow) -> tuple[float, float, float] | None:
    """(low, median, high) GPU-seconds per epoch: the step time's spread x steps per epoch x GPUs."""
    m = r.measured
    s = m.stats() if m else None
    per = m.steps_per_epoch if m else None
    if s is None or per is None:
        return None
    k = per * r.gpus
    return s.low * k, s.median * k, s.high * k


def epoch_seconds(r: ResultRow) -> float:
    return (r.measured.epoch_seconds if r.measured else None) or float("inf")


def gpu_seconds(r: ResultRow) -> float:
    """GPU-seconds per epoch: wall time x processes (GPUs) the run used."""
    return epoch_seconds(r) * r.gpus


def predicted_gpu_seconds(r: ResultRow) -> float:
    """The plan's GPU-seconds per epoch for this run, from the prediction stored beside the measurement."""
    p = r.predicted.best()
    per = r.measured.steps_per_epoch if r.measured else (r.run.setup.steps_per_epoch() if r.run else None)
    if p is None or p.step_seconds is None or per is None:
        return float("inf")
    return p.step_seconds * per * r.gpus


@dataclass
class Decision:
    target: QualityTarget
    target_given: bool  # False: derived from the sweep (best eval loss within 5%), and the report says so
    best: ResultRow | None  # the cheapest run that met the target; None when no run met it
    met: list[ResultRow]  # every successful run that met the target
    ok: list[ResultRow]
    closest: ResultRow | None  # the run nearest the target (the best on its metric)
    learned: bool  # False: every run scored 0 on a higher-is-better metric (nothing of the task was learned)
    nothing_to_learn: bool = False  # every run started at a near-zero loss: the base already knew the task
    full_marks_at_start: list[ResultRow] = field(default_factory=list)  # scored before training, all at full marks
    basis: Basis = Basis.MEASURED
    # A projection has no measured spread: two projected costs closer than the time model's stated error on the
    # target are a tie, the band `plan` ties its candidates in (ftopt.report.projection.target_tie)
    projected_tie: float = TIME_MODEL_ERROR
    projected_because: list = field(default_factory=list)  # projection.Difference: how the PoC is not the target
    tied: list[ResultRow] = field(default_factory=list)  # other runs within noise of the cheapest
    tie_break: str | None = None  # quality | memory | plan: what decided among tied runs
    plan_pick: ResultRow | None = None  # the run the planner predicts cheapest
    why: Why | None = None  # None: the measurement confirmed the plan's pick
    fastest: ResultRow | None = None  # the fastest run on the recommended run's GPU count (the time trade-off)
    top: ResultRow | None = None  # the best-scoring run, when it scores better than the recommendation
    failed: list[str] = field(default_factory=list)
    pools: dict[tuple, Pool] = field(default_factory=dict)  # successful repeats per combination, pooled

    @property
    def confirmed(self) -> bool:
        return self.best is not None and self.why is None

    def band(self, r: ResultRow) -> Band | None:
        """The run's cost band with its combination's repeats pooled (ftopt.report.pooling)."""
        p = self.pools.get(combination_key(r))
        return p.band() if p is not None else cost_band(r)

    def pooled(self) -> list[Pool]:
        """The successful combinations that ran more than once."""
        return [p for p in self.pools.values() if p.repeats > 1]


def _derived_target(ok: list[ResultRow]) -> QualityTarget:
    best_loss = min((r.measured.eval_loss for r in ok), default=0.0)
    return QualityTarget(
        metric="eval_loss", op="<=", value=round(best_loss * (1 + QUALITY_TOLERANCE), 4), source="derived"
    )


def check_metric(target: QualityTarget, ok: list[ResultRow]) -> None:
    """A target on a metric no successful run measured is the user's mistake, not a run that 'did not meet' it."""
    if ok and all(r.measured.value(target.metric) is None for r in ok):
        have = sorted({"eval_loss", "perplexity", *(k for r in ok for k in r.measured.quality if k != "examples")})
        raise FtoptError(
            f"--quality-target names the metric '{target.metric}', which no run measured; "
            f"the runs have: {', '.join(have)}."
        )


def decide(
    rows: list[ResultRow] | list[dict],
    target: QualityTarget | None = None,
    projected: dict[str, float] | None = None,
    plan_combination: Combination | None = None,
    projected_tie: float = TIME_MODEL_ERROR,
) -> Decision:
    """Among successful runs meeting the target, the cheapest: by measured GPU-seconds with noise, or (when
    `projected` maps run keys to projected GPU-hours on other target hardware, candidate runs only) by projection.
    The plan's pick is `plan_combination` (the planner's choice on the target) when given, else the run whose
    stored prediction is cheapest. `projected_tie`: projected costs within this fraction are a tie."""
    rows = parse_rows(rows)
    ok = [r for r in rows if r.ok and r.measured.eval_loss is not None]
    failed = [f"{r.label} ({r.status.value})" for r in rows if not r.ok]
    given = target is not None
    target = target or _derived_target(ok)
    check_metric(target, ok)
    sign = 1 if target.higher_is_better else -1
    scored = [r for r in ok if r.measured.value(target.metric) is not None]
    quality = lambda r: sign * (r.measured.value(target.metric) or 0)  # noqa: E731 - higher is better
    learned = not (target.higher_is_better and scored and all(quality(r) <= 0 for r in scored))
    starts = [r.measured.first_loss for r in ok]
    d = Decision(
        target=target,
        target_given=given,
        best=None,
        met=[r for r in ok if target.met(r.measured)],
        ok=ok,
        closest=max(scored, key=quality, default=None),
        learned=learned,
        nothing_to_learn=bool(ok) and all(s is not None and s < NEAR_ZERO_LOSS for s in starts),
        full_marks_at_start=full_marks_at_start(ok, target),
        basis=Basis.PROJECTED if projected is not None else Basis.MEASURED,
        projected_tie=projected_tie,
        failed=failed,
        pools={combination_key(p.rows[0]): p for p in pool(ok)},
    )
    band = _bands(d.met, projected, projected_tie)
    plan_cost = (lambda r: projected.get(r.key, float("inf"))) if projected is not None else predicted_gpu_seconds
    if band:
        _choose(d, band, quality, plan_cost)
    _plan_pick(d, rows, plan_cost, plan_combination)
    if d.best is not None:
        same_gpus = [p for p in d.pools.values() if p.rows[0].gpus == d.best.gpus and p.band() is not None]
        d.fastest = min(same_gpus, key=lambda p: p.band()[1]).representative if same_gpus else None
        if d.closest is not None and quality(d.closest) > quality(d.best) + 1e-9:
            d.top = d.closest
    return d


def _bands(met: list[ResultRow], projected: dict[str, float] | None, tie: float) -> list[tuple[ResultRow, Band]]:
    """Each candidate combination (its repeats pooled, one representative run) with its cost band: the pooled
    measured spread, or the projection up to `tie` above it."""
    out = []
    for p in pool(met):
        r = p.representative
        if projected is not None:
            c = projected.get(r.key)  # absent: does not fit the target's memory
            # (c, c, c x (1 + tie)): two bands overlap exactly when one cost is within `tie` of the other
            b = (c, c, c * (1 + tie)) if c is not None else None
        else:
            b = p.band()
        if b is not None:
            out.append((r, b))
    return out


def _choose(d: Decision, band: list[tuple[ResultRow, Band]], quality, plan_cost) -> None:
    """The cheapest by median; every run whose band overlaps its band is tied with it; among the tied, the best
    quality, then the smallest measured peak, then the plan's cheapest prediction wins (then the lower median)."""
    _, (lo, _, hi) = min(band, key=lambda rb: rb[1][1])
    tied = [(r, b) for r, b in band if b[0] <= hi and lo <= b[2]]
    keys = (
        ("quality", lambda r: -quality(r)),
        ("memory", lambda r: r.measured.peak_bytes_per_gpu),
        ("plan", plan_cost),
    )
    rank = lambda rb: tuple(f(rb[0]) for _, f in keys) + (rb[1][1],)  # noqa: E731
    best = min(tied, key=rank)[0]
    d.best = best
    d.tied = [r for r, _ in tied if r is not best]
    if d.tied:
        runner = min(((r, b) for r, b in tied if r is not best), key=rank)[0]
        d.tie_break = next((name for name, f in keys if f(runner) != f(best)), None)


def _plan_pick(d: Decision, rows: list[ResultRow], plan_cost, combination: Combination | None) -> None:
    """The run of the combination the planner picks (any outcome), and why the measurement differs."""
    if combination is not None:
        same = [r for r in rows if r.combination == combination]
        d.plan_pick = next((r for r in same if r.ok), same[0] if same else None)
    else:
        finite = [r for r in rows if plan_cost(r) != float("inf")]
        d.plan_pick = min(finite, key=plan_cost, default=None)
    p, b = d.plan_pick, d.best
    if p is None or b is None or (p.combination == b.combination and p.gpus == b.gpus):
        return
    same = [r for r in rows if r.combination == p.combination and r.gpus == p.gpus]
    if not any(r.ok for r in same):
        d.why = Why.FAILED
    elif not any(r in d.met for r in same):
        measured = any(r.ok and r.measured.value(d.target.metric) is not None for r in same)
        d.why = Why.QUALITY if measured else Why.UNMEASURED
    elif any(r in d.tied for r in same):
        d.why = Why.TIE
    else:
        d.why = Why.SLOWER


def standing(target: QualityTarget, r: ResultRow) -> str:
    """A run against the bar, as a text key (report.text): met, not_met, or not_measured where the run has no
    figure for the metric (no held-out rows to generate for, or a run scored before its engine scored quality):
    such a run neither met nor missed the bar. "-" for a run that did not finish."""
    if not r.ok or r.measured is None:
        return "-"
    if r.measured.value(target.metric) is None:
        return "not_measured"
    return "met" if target.met(r.measured) else "not_met"


def unmeasured(d: Decision) -> list[ResultRow]:
    """The successful runs without a figure for the target's metric."""
    return [r for r in d.ok if r.measured.value(d.target.metric) is None]


def memory_techniques(r: ResultRow, T: dict) -> list[str]:
    """The memory techniques of a run's combination in the report's language (`T`: report.text); attention kind
    is not one, it is listed apart. A 4-bit base is QLoRA (its LoRA included), an int8 base says so beside LoRA."""
    from ftopt.spec import Offload, Optim, Quant

    c, t = r.combination, []
    if c.quant.four_bit:
        t.append(T["tech_qlora"].format(quant=c.quant.value.upper(), r=c.lora_r))
    elif c.lora_r:
        t.append(T["tech_lora"].format(r=c.lora_r))
    if c.quant is Quant.INT8:
        t.append(T["tech_int8"])
    if c.optim is not Optim.ADAMW:
        t.append(T[f"tech_{c.optim.name.lower()}"])
    if c.gc:
        t.append(T["tech_gc"])
    if c.zero:
        t.append(f"ZeRO-{c.zero}")
    if c.uses_fsdp:
        t.append(T[f"tech_fsdp_{c.fsdp.name.lower()}"])
    if c.offload is not Offload.NONE:
        t.append(T[f"tech_offload_{c.offload.value}"])
    return t
