"""Which fitting combination the plan recommends, and which rule decided it.

The fastest predicted combination wins unless others are tied with it on time, where "tied" means within the time
model's stated error: its held-out step-time error when a calibration measured one, else TIME_MODEL_ERROR. Among
tied candidates the one with fewer moving parts wins, then the one with more memory headroom. One rule stands
outside the tie: a sharding engine (DeepSpeed ZeRO or FSDP2) on one GPU partitions nothing across GPUs; what it
changes there (its own 16-bit model cast, host offload) buys memory at the price of an engine, a launcher and, with
offload, host traffic. So it is recommended only when nothing without one fits (then offload is what makes the run
fit).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from ftopt.estimate import Estimate, Method
from ftopt.spec import Attention, Combination, Offload, Optim, Quant
from ftopt.spec.calibration import CalibrationProvenance

# The uncalibrated time model's stated error: the median held-out step-time error of the calibration check, 3.0%
# and 4.2% on the two demo sweeps in the README ("The time model's calibration is checked leave-one-out"), rounded
# up. Two predicted times closer than this cannot be told apart by the model; a calibration with its own held-out
# error replaces it (CalibrationProvenance.holdout_median_abs_error).
TIME_MODEL_ERROR = 0.05

# Moving parts, most troublesome first: each adds a library, a code path or a failure mode to a run. A tied
# candidate without the first one wins; then the next one decides, and so on. Each says what the pick avoided.
MOVING_PARTS: tuple[tuple[str, Callable[[Combination], int]], ...] = (
    ("no offload to the host", lambda c: c.offload is not Offload.NONE),
    ("no quantized base", lambda c: c.quant is not Quant.NONE),
    ("no 8-bit or paged optimizer", lambda c: c.optim is not Optim.ADAMW),
    # FSDP2 ranks as the ZeRO stage it resembles: grad-op keeps parameters whole through backward (ZeRO-2-like),
    # full re-gathers them (ZeRO-3-like); so plain DDP wins a tie with either
    ("a lower ZeRO stage", lambda c: c.zero or {"full": 3, "grad-op": 2}.get(c.fsdp.value, 0)),
    ("SDPA rather than flash-attn (no package to build)", lambda c: c.attn is Attention.FLASH),
)
MORE_HEADROOM = "more memory headroom"


class TieBreak(BaseModel):
    """Why the plan's pick won: the rule that decided it, the tie band and how many it tied with."""

    model_config = ConfigDict(extra="forbid")
    tie_fraction: float = Field(description="time tie band: the time model's stated error")
    tied: int = Field(0, description="other fitting candidates within the band of the fastest")
    decided_by: str = Field(description="'fastest', a moving part avoided, 'more memory headroom' or 'nothing fits'")
    dropped_single_gpu_deepspeed: bool = Field(
        False,
        description="faster one-GPU ZeRO or FSDP2 candidates were set aside: a candidate without a sharding engine fits",
    )
    rejected_by_trace: list[str] = Field(
        default_factory=list,
        description="labels of earlier picks the formulas fit and the traced estimator did not (plan --method traced)",
    )


def tie_fraction(calibration: CalibrationProvenance | None) -> float:
    """The time model's error to treat as a tie: the calibration's held-out median, else TIME_MODEL_ERROR."""
    if calibration is not None and calibration.holdout_median_abs_error is not None:
        return calibration.holdout_median_abs_error
    return TIME_MODEL_ERROR


def single_gpu_sharding(e: Estimate, world_size: int) -> bool:
    """ZeRO or FSDP2 on one GPU: nothing to partition across; worth its engine only when nothing else fits."""
    return world_size == 1 and (e.combination.uses_deepspeed or e.combination.uses_fsdp)


def _simplicity(e: Estimate) -> tuple:
    return (*(f(e.combination) for _, f in MOVING_PARTS), -e.headroom_bytes)


def _decider(pick: Estimate, fastest: Estimate) -> str:
    if pick is fastest:
        return "fastest"
    for (name, _), a, b in zip(MOVING_PARTS, _simplicity(pick), _simplicity(fastest), strict=False):
        if a != b:
            return name
    return MORE_HEADROOM


def rejected_by_trace(estimates: list[Estimate]) -> list[Estimate]:
    """Candidates the trace was asked about and found not to fit: only picks are traced, so each is a pick the
    formulas made and the trace overturned (ftopt.planner.plan)."""
    return [e for e in estimates if e.method is Method.TRACED and not e.fits]


def _rejected(estimates: list[Estimate]) -> list[str]:
    return [e.combination.label() for e in rejected_by_trace(estimates)]


def choose_fitting(estimates: list[Estimate], world_size: int, tie: float) -> tuple[Estimate | None, TieBreak]:
    """The recommendation among `estimates` that fit (within the margin), by the rules in the module docstring."""
    fitting = sorted((e for e in estimates if e.fits), key=lambda e: e.total_seconds)
    if not fitting:
        return None, TieBreak(tie_fraction=tie, decided_by="nothing fits", rejected_by_trace=_rejected(estimates))
    useful = [e for e in fitting if not single_gpu_sharding(e, world_size)]
    dropped = bool(useful) and single_gpu_sharding(fitting[0], world_size)
    pool = useful or fitting
    fastest = pool[0]
    near = [e for e in pool if e.total_seconds <= fastest.total_seconds * (1 + tie)]
    pick = min(near, key=_simplicity)
    return pick, TieBreak(
        tie_fraction=tie,
        tied=len(near) - 1,
        decided_by=_decider(pick, fastest),
        dropped_single_gpu_deepspeed=dropped,
        rejected_by_trace=_rejected(estimates),
    )


def tie_text(c: TieBreak, device: str = "GPU") -> str:
    """The reason's clause on ties and the rule that decided ('' when the fastest stood alone); `device` is what
    one process runs on (ftopt.spec.hardware.device_words)."""
    out = ""
    if c.dropped_single_gpu_deepspeed:
        out += (
            f"; faster ZeRO or FSDP2 candidates were set aside: on one {device} they partition nothing, and a run "
            "without them fits"
        )
    if c.tied:
        rule = (
            "the fastest is also the simplest"
            if c.decided_by == "fastest"
            else f"the tie-break chose {c.decided_by}"
            if c.decided_by == MORE_HEADROOM
            else f"the tie-break chose fewer moving parts: {c.decided_by}"
        )
        out += (
            f"; {c.tied} other candidate{'s' if c.tied > 1 else ''} within the time model's "
            f"{c.tie_fraction:.0%} error, {rule}"
        )
    return out
