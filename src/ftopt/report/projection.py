"""From the PoC to production: the planner's prediction of the chosen combination (and of the alternatives) on the
target hardware with the production data, as time and money per run and per year, and a staged roadmap.

The PoC measured which combination is cheapest at the quality bar on the PoC's hardware; the same combination's
production cost is predicted by `ftopt.estimate` (memory fit and step time) for the target GPUs, data and epochs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ftopt.calibration_store import calibrated_hardware, find_calibration
from ftopt.estimate import estimate
from ftopt.spec import DEFAULT_HEADROOM, Combination, Precision, TrainingSetup, load_hardware, load_model

PILOT_DATA_FRACTION = 0.1  # the pilot trains on a tenth of the production data, once: enough to see quality at scale
PILOT_EPOCHS = 1.0
# a pilot whose measured step time is this much over the prediction means the production budget is wrong too
PILOT_TIME_OVERRUN_STOP = 1.5


class ProductionTarget(BaseModel):
    """Where and how often the chosen combination will run for real."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(description="model preset, config.json or folder trained in production (default: the PoC's)")
    gpu: str = Field(description="hardware preset or JSON file")
    gpus_per_node: int = Field(1, gt=0)
    nodes: int = Field(1, gt=0)
    dataset_tokens: int = Field(gt=0, description="tokens in one epoch of the production data")
    epochs: float = Field(1.0, gt=0)
    retrains_per_year: float = Field(1.0, ge=0)
    cost_per_gpu_hour: float | None = Field(None, ge=0)
    currency: str = Field("USD", min_length=1, max_length=8)
    max_hours: float | None = Field(None, gt=0, description="wall-clock budget of one production run")
    seq_len: int = Field(gt=0, description="the PoC's sequence length unless given")
    micro_batch: int = Field(1, gt=0)
    headroom: float = Field(DEFAULT_HEADROOM, description="share of GPU memory kept free (--headroom)")

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


class Projection(BaseModel):
    """One combination predicted at production scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    label: str
    combination: Combination
    gpus: int
    fits_memory: bool
    device_bytes_per_gpu: int
    hours_per_run: float
    gpu_hours_per_run: float
    gpu_hours_per_year: float
    cost_per_run: float | None
    cost_per_year: float | None
    fits_budget: bool | None = Field(description="None without --max-hours")


class Stage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(description="poc | pilot | production")
    measured: bool
    gpu_hours: float
    cost: float | None
    runs: float = Field(description="runs in this stage (per year for production)")


class ProductionPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    target: ProductionTarget
    chosen: Projection
    alternative: Projection | None = Field(description="the next-cheapest other combination that met the bar and fits")
    stages: list[Stage]
    precision: Precision
    calibrated: bool = Field(description="the target hardware's time model was calibrated by real runs on it")


def _precision(hw_is_cpu: bool, hw) -> Precision:
    """Production trains in bf16 mixed precision where the GPU has it (what a production run uses), else fp16."""
    if hw_is_cpu:
        return Precision.FP32
    return Precision.BF16_MIXED if hw.flops_for("bf16") else Precision.FP16_MIXED


def project(
    combo: Combination, label: str, target: ProductionTarget, *, data_fraction: float = 1.0, epochs: float | None = None
) -> Projection:
    """The planner's prediction of `combo` on the target: memory fit, hours, GPU-hours and money."""
    hw = calibrated_hardware(load_hardware(target.gpu))  # the stored time-model calibration for it, if any
    setup = TrainingSetup(
        seq_len=target.seq_len,
        micro_batch=target.micro_batch,
        precision=_precision(hw.is_cpu, hw),
        gpus_per_node=target.gpus_per_node,
        nodes=target.nodes,
        dataset_tokens=max(1, int(target.dataset_tokens * data_fraction)),
        epochs=epochs if epochs is not None else target.epochs,
        headroom=target.headroom,
    )
    e = estimate(load_model(target.model), hw, setup, combo)
    hours = e.total_seconds / 3600
    gpu_hours = hours * target.gpus
    price = target.cost_per_gpu_hour
    return Projection(
        label=label,
        combination=combo,
        gpus=target.gpus,
        fits_memory=e.fits,
        device_bytes_per_gpu=e.device_bytes_per_gpu,
        hours_per_run=hours,
        gpu_hours_per_run=gpu_hours,
        gpu_hours_per_year=gpu_hours * target.retrains_per_year,
        cost_per_run=gpu_hours * price if price is not None else None,
        cost_per_year=gpu_hours * price * target.retrains_per_year if price is not None else None,
        fits_budget=hours <= target.max_hours if target.max_hours else None,
    )


def plan_production(
    target: ProductionTarget, chosen: dict, candidates: list[dict], poc_gpu_hours: float, poc_cost: float | None
) -> ProductionPlan:
    """`chosen` and `candidates` are result rows (the report's decision and the other runs that met the bar).
    The PoC's cost is the caller's: its runs may have used other hardware than the target's price is for."""
    best = project(Combination(**chosen["combination"]), chosen["label"], target)
    seen = {tuple(sorted(chosen["combination"].items()))}
    alts = []
    for r in candidates:
        k = tuple(sorted(r["combination"].items()))
        if k in seen:
            continue  # repeats and the chosen one itself
        seen.add(k)
        p = project(Combination(**r["combination"]), r["label"], target)
        if p.fits_memory:
            alts.append(p)
    alt = min(alts, key=lambda p: p.gpu_hours_per_run, default=None)
    pilot = project(best.combination, best.label, target, data_fraction=PILOT_DATA_FRACTION, epochs=PILOT_EPOCHS)
    stages = [
        Stage(name="poc", measured=True, gpu_hours=poc_gpu_hours, cost=poc_cost, runs=1),
        Stage(name="pilot", measured=False, gpu_hours=pilot.gpu_hours_per_run, cost=pilot.cost_per_run, runs=1),
        Stage(
            name="production",
            measured=False,
            gpu_hours=best.gpu_hours_per_year,
            cost=best.cost_per_year,
            runs=target.retrains_per_year,
        ),
    ]
    hw = load_hardware(target.gpu)
    return ProductionPlan(
        target=target,
        chosen=best,
        alternative=alt,
        stages=stages,
        precision=_precision(hw.is_cpu, hw),
        calibrated=find_calibration(hw.name) is not None,
    )
