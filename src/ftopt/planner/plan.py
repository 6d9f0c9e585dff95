"""Enumerate every valid combination, predict its memory and time, and recommend one.

The recommendation is derived from the predictions alone: among combinations that fit (device memory less the
--headroom margin, and host RAM) and meet the quality requirement (`full_only`), the fastest predicted; ties within
the time model's error go to fewer moving parts, then more headroom (ftopt.planner.choice). Combinations that fit the GPU
but not the margin are kept as "tight": shown, never chosen. With method=traced the formulas search and the traced
estimator confirms the pick and the what-ifs (ftopt.planner.whatif); each answer says which method gave it.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from ftopt.estimate import Estimate, FallbackCause, Method, TraceFallback, estimate
from ftopt.planner.candidates import DEFAULT_LORA_R, PLAN_QUANTS, combinations, plan_combinations
from ftopt.planner.choice import TIME_MODEL_ERROR, TieBreak, choose_fitting, rejected_by_trace, tie_fraction, tie_text
from ftopt.planner.shortfall import shortfall
from ftopt.planner.whatif import (
    CONFIRM_TRIES,
    Answer,
    LimitKind,
    confirmed_longest_context,
    fewest_gpus,
    longest_context,
    longest_context_and_bound,
    trace_pick,
)
from ftopt.spec import (
    DEFAULT_CURRENCY,
    AdapterDtype,
    Combination,
    Engine,
    HardwareSpec,
    ModelSpec,
    Optim,
    QloraRecipe,
    Quant,
    TrainingSetup,
)
from ftopt.spec.calibration import CalibrationProvenance
from ftopt.spec.errors import FtoptError
from ftopt.spec.hardware import device_words
from ftopt.spec.time_constants import TimeConstants
from ftopt.spec.units import fmt_bytes, fmt_hours, fmt_seconds

__all__ = [
    "DEFAULT_LORA_R",
    "PLAN_QUANTS",
    "Answer",
    "LimitKind",
    "Plan",
    "choose",
    "combinations",
    "fewest_gpus",
    "longest_context",
    "longest_context_and_bound",
    "plan",
]


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    hardware: str
    setup: TrainingSetup
    method: Method
    candidates: list[Estimate] = Field(description="every combination, fitting ones first, by predicted total time")
    recommended: Estimate | None
    reason: str
    max_hours: float | None = None
    cost_per_gpu_hour: float | None = None
    currency: str = Field(DEFAULT_CURRENCY, description="currency of cost_per_gpu_hour and every cost")
    calibration: CalibrationProvenance | None = Field(
        None, description="time-model calibration used; None = uncalibrated"
    )
    time_constants: TimeConstants | None = Field(
        None, description="the time model's constants every candidate's time was computed with, and their provenance"
    )
    host_memory_bytes: int = Field(description="host RAM per node the plan assumed (--host-ram or the preset)")
    longest_context: int | None = Field(None, description="longest seq_len that fits with the recommendation")
    longest_context_bound: LimitKind | None = Field(
        None,
        description="what stops a longer context: memory, the model's position limit, or the run's own longer "
        "--seq-len (requested)",
    )
    fewest_gpus: int | None = Field(None, description="fewest GPUs (of this kind) on which any combination fits")
    on_cpu: bool = Field(False, description="the hardware is a CPU: its processes stand for GPUs, and are called so")
    fewest_gpus_combination: Combination | None = None
    longest_context_method: Method | None = Field(None, description="estimator that gave longest_context")
    fewest_gpus_method: Method | None = Field(None, description="estimator that gave fewest_gpus")
    tie_break: TieBreak | None = Field(None, description="the rule that decided the recommendation")
    shortfall: str | None = Field(None, description="what still does not fit, when something does not")
    fallbacks: dict[Answer, TraceFallback] = Field(
        default_factory=dict, description="answers the trace was asked to confirm and did not: why each is analytic"
    )

    @property
    def per_dataset(self) -> bool:
        """True when the dataset size is known (--dataset-tokens): epochs and totals mean something."""
        return self.setup.dataset_tokens is not None

    def cost(self, e: Estimate) -> float | None:
        """Cost of the whole run in `currency`, or of 1000 samples without a dataset size."""
        if self.cost_per_gpu_hour is None:
            return None
        seconds = e.total_seconds if self.per_dataset else e.seconds_per_1k_samples
        return seconds / 3600 * self.setup.world_size * self.cost_per_gpu_hour

    def to_json(self) -> dict:
        def cand(e: Estimate) -> dict:
            whole = self.per_dataset  # without a dataset size an "epoch" is one step: say null, not a guess
            return {
                **e.combination.key(),
                "sharding": e.combination.sharding,
                "label": e.combination.label(),
                "method": e.method.value,
                "peak_bytes_per_gpu": e.peak_bytes_per_gpu,
                "device_bytes_per_gpu": e.device_bytes_per_gpu,
                "headroom_bytes": e.headroom_bytes,
                "usable_bytes": e.usable_bytes,
                "fits": e.fits,
                "tight": e.tight,
                "epoch_seconds": e.epoch_seconds if whole else None,
                "total_seconds": e.total_seconds if whole else None,
                "step_seconds": e.step_seconds,
                "seconds_per_1k_samples": e.seconds_per_1k_samples,
                "cost": self.cost(e),
                "cost_basis": "run" if whole else "1k samples",
                "host_bytes_per_node": e.cpu_bytes_per_node,
                "breakdown": e.breakdown.model_dump(),
                "trace_fallback": e.trace_fallback.model_dump(mode="json") if e.trace_fallback else None,
            }

        return {
            "model": self.model,
            "hardware": self.hardware,
            "method": self.method.value,
            "setup": self.setup.model_dump(mode="json"),
            "headroom": self.setup.headroom,
            "currency": self.currency,
            "calibration": self.calibration.model_dump(mode="json") if self.calibration else None,
            "time_constants": self.time_constants.model_dump(mode="json") if self.time_constants else None,
            "host_memory_bytes": self.host_memory_bytes,
            "recommended": self.recommended.combination.key() if self.recommended else None,
            "recommended_estimate": self.recommended.to_json() if self.recommended else None,
            "reason": self.reason,
            "tie_break": self.tie_break.model_dump() if self.tie_break else None,
            "answered_by": {
                "recommended": self.recommended.method.value if self.recommended else None,
                "longest_context": self.longest_context_method.value if self.longest_context_method else None,
                "fewest_gpus": self.fewest_gpus_method.value if self.fewest_gpus_method else None,
            },
            "candidates": [cand(e) for e in self.candidates],
            "longest_context": self.longest_context,
            "longest_context_bound": self.longest_context_bound.value if self.longest_context_bound else None,
            "fewest_gpus": self.fewest_gpus,
            "fewest_gpus_combination": self.fewest_gpus_combination.key() if self.fewest_gpus_combination else None,
            "shortfall": self.shortfall,
            "fallbacks": {k.value: v.model_dump(mode="json") for k, v in self.fallbacks.items()},
        }


def _rank_key(e: Estimate):
    """Fitting first, then tight (fits the GPU, not the margin), then the rest; each by predicted time."""
    return (not e.fits, not e.tight, e.total_seconds, -e.headroom_bytes)


def choose(
    estimates: list[Estimate],
    max_hours: float | None,
    world_size: int = 1,
    tie: float = TIME_MODEL_ERROR,
    on_cpu: bool = False,
) -> tuple[Estimate | None, TieBreak, str]:
    """The pick (ftopt.planner.choice), the rule that decided it and the sentence that explains it (`on_cpu`: it
    says process where it would say GPU)."""
    device, devices = device_words(on_cpu)
    pick, c = choose_fitting(estimates, world_size, tie)
    if pick is None:
        tight = [e for e in estimates if e.tight]
        why = "no combination fits in memory"
        if tight:
            why += f" with {tight[0].headroom_fraction:.0%} kept free ({len(tight)} fit the GPU without it: tight)"
        return None, c, why + _rejected_text(estimates)
    took = (
        f"{fmt_seconds(pick.total_seconds)} of training"
        if pick.per_dataset
        else f"{fmt_seconds(pick.seconds_per_1k_samples)} per 1k samples"
    )
    reason = (
        f"fastest combination that fits: {took}, "
        f"{fmt_bytes(pick.device_bytes_per_gpu)} of {fmt_bytes(pick.capacity_bytes)} per {device} by the "
        f"{pick.method.value} estimate ({fmt_bytes(pick.usable_bytes)} usable with {pick.headroom_fraction:.0%} kept free)"
    )
    reason += _rejected_text(estimates) + tie_text(c, device)
    slower_safe = [e for e in estimates if e.fits and e.combination.gc and not pick.combination.gc]
    if not pick.combination.gc and slower_safe:
        reason += "; gradient checkpointing is not needed, so its ~33% recomputation is avoided"
    if max_hours is not None and pick.per_dataset and pick.total_seconds > max_hours * 3600:
        reason += f"; it still exceeds the {fmt_hours(max_hours)} budget: add {devices} or shorten the data"
    if max_hours is not None and not pick.per_dataset:
        reason += f"; the {fmt_hours(max_hours)} budget is not checked without --dataset-tokens"
    return pick, c, reason


def _rejected_text(estimates: list[Estimate]) -> str:
    """The clause naming the picks the trace overturned, each with its traced figure ('' when none)."""
    rejected = rejected_by_trace(estimates)
    if not rejected:
        return ""
    each = ", ".join(
        f"{e.combination.label()} ({fmt_bytes(e.device_bytes_per_gpu)} traced, over the {fmt_bytes(e.usable_bytes)} "
        "usable)"
        for e in rejected
    )
    return f"; the traced estimator set aside what the formulas had picked first: {each}"


def plan(
    model: ModelSpec,
    hw: HardwareSpec,
    setup: TrainingSetup,
    *,
    method: Method | str = Method.ANALYTIC,
    max_hours: float | None = None,
    full_only: bool = False,
    lora_r: int = DEFAULT_LORA_R,
    lora_targets: tuple[str, ...] | None = None,
    adapter_dtype: AdapterDtype | None = None,
    cost_per_gpu_hour: float | None = None,
    currency: str | None = None,
    what_ifs: bool = True,
    quants: tuple[Quant, ...] | None = None,
    optims: tuple[Optim, ...] | None = None,
    engines: tuple[Engine, ...] | None = None,
    recipes: tuple[QloraRecipe, ...] | None = None,
    dora: bool = False,
    rslora: bool = False,
    lora_dropout: float | None = None,
) -> Plan:
    """`hw` as given: apply a calibration (ftopt.planner.calibration_store.calibrated_hardware) or --host-ram before."""
    method = Method(method)
    currency = _checked_currency(max_hours, cost_per_gpu_hour, currency)
    combos = plan_combinations(
        hw,
        setup,
        full_only=full_only,
        lora_r=lora_r,
        lora_targets=lora_targets,
        adapter_dtype=adapter_dtype,
        quants=quants,
        optims=optims,
        engines=engines,
        recipes=recipes,
        dora=dora,
        rslora=rslora,
        lora_dropout=lora_dropout,
    )
    estimates = sorted((estimate(model, hw, setup, c, Method.ANALYTIC) for c in combos), key=_rank_key)
    rec, rule, reason, fallback = _confirmed_choice(model, hw, setup, estimates, method, max_hours)
    estimates.sort(key=_rank_key)
    p = Plan(
        model=model.name,
        hardware=hw.name,
        setup=setup,
        method=method,
        candidates=estimates,
        recommended=rec,
        reason=reason,
        tie_break=rule,
        max_hours=max_hours,
        cost_per_gpu_hour=cost_per_gpu_hour,
        currency=currency,
        calibration=hw.calibration,
        time_constants=hw.time_constants,
        host_memory_bytes=hw.host_memory_bytes,
        on_cpu=hw.is_cpu,
    )
    if fallback is not None:
        p.fallbacks[Answer.RECOMMENDED] = fallback
    if what_ifs:
        _answer_what_ifs(p, model, hw, combos)
    p.shortfall = shortfall(estimates, rec, full_only, hw)
    return p


def _checked_currency(max_hours: float | None, cost_per_gpu_hour: float | None, currency: str | None) -> str:
    """The budget and price checked (one sentence naming a bad value), and the currency to quote them in."""
    if max_hours is not None and not 0 < max_hours < math.inf:  # false for nan too
        raise FtoptError(f"--max-hours must be a positive number of hours, got {max_hours}.")
    if cost_per_gpu_hour is not None and not 0 <= cost_per_gpu_hour < math.inf:
        raise FtoptError(f"--cost-per-gpu-hour must be a price of zero or more, got {cost_per_gpu_hour}.")
    currency = DEFAULT_CURRENCY if currency is None else currency  # None: not given
    if not currency.strip():
        raise FtoptError("--currency is empty; give a currency code such as USD, EUR or JPY.")
    return currency.strip()


def _answer_what_ifs(p: Plan, model: ModelSpec, hw: HardwareSpec, combos: list[Combination]) -> None:
    """The longest context with the recommendation and the fewest GPUs on which any of `combos` fits, into `p`;
    confirmed by the trace when the plan is traced (ftopt.planner.whatif)."""
    confirm = p.method is Method.TRACED
    if p.recommended is not None:
        p.longest_context, p.longest_context_bound, p.longest_context_method, lc_fallback = confirmed_longest_context(
            model, hw, p.setup, p.recommended.combination, confirm
        )
        if lc_fallback is not None:
            p.fallbacks[Answer.LONGEST_CONTEXT] = lc_fallback
    p.fewest_gpus, p.fewest_gpus_combination, p.fewest_gpus_method, fg_fallback = fewest_gpus(
        model, hw, p.setup, combos, p.method, confirm=confirm
    )
    if fg_fallback is not None:
        p.fallbacks[Answer.FEWEST_GPUS] = fg_fallback


def _confirmed_choice(
    model: ModelSpec,
    hw: HardwareSpec,
    setup: TrainingSetup,
    estimates: list[Estimate],
    method: Method,
    max_hours: float | None,
) -> tuple[Estimate | None, TieBreak, str, TraceFallback | None]:
    """Analytic to search (instant), traced to confirm (method=traced): the pick is traced, its traced estimate
    replaces the analytic one in `estimates`, and the choice is made again from what is now known, so the rule and
    the sentence describe the final figures. The pick stands once it is a traced estimate that fits; a pick the
    trace rejects is set aside and the next is traced. The fallback says why the answer is analytic, if it is."""
    tie = tie_fraction(hw.calibration)
    rec, rule, reason = choose(estimates, max_hours, setup.world_size, tie, hw.is_cpu)
    if method is not Method.TRACED:
        return rec, rule, reason, None
    for _ in range(CONFIRM_TRIES):
        if rec is None or rec.method is Method.TRACED:
            return rec, rule, reason, None
        t = trace_pick(model, hw, setup, estimates, rec)
        rec, rule, reason = choose(estimates, max_hours, setup.world_size, tie, hw.is_cpu)
        if t.trace_fallback is not None:  # the trace cannot run this model: the formulas answer, and say why
            return rec, rule, reason, t.trace_fallback
    if rec is None or rec.method is Method.TRACED:
        return rec, rule, reason, None
    return (
        rec,
        rule,
        reason,
        TraceFallback(
            cause=FallbackCause.TRIES_EXHAUSTED,
            message=f"the trace overturned {len(rule.rejected_by_trace)} pick(s) in {CONFIRM_TRIES} tries; "
            f"{rec.combination.label()} is the formulas' pick, not confirmed by the trace",
        ),
    )
