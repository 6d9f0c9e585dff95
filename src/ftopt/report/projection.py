"""From the PoC to production: the planner's prediction of the chosen combination (and of the alternatives) on the
target model and hardware with the production data, as time and money per run and per year, and a staged roadmap.

The PoC measured which combination meets the quality bar on the PoC's model; the same combination's production
cost is predicted by `ftopt.estimate` (memory fit with its own check, and step time, calibrated where runs on the
target hardware were stored) for the target model, GPUs, sequence shape, data and epochs. Quality is not projected:
it was measured on the PoC model only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ftopt.estimate import Estimate, estimate
from ftopt.planner.calibration_store import calibrated_hardware
from ftopt.results.rows import ResultRow
from ftopt.spec import (
    DEFAULT_HEADROOM,
    Combination,
    CurrencyCode,
    Precision,
    ProductionOptions,
    TrainingSetup,
    default_precision,
    load_hardware,
    load_model,
)
from ftopt.spec.time_constants import TimeConstants

PILOT_DATA_FRACTION = 0.1  # the pilot trains on a tenth of the production data, once: enough to see quality at scale
PILOT_EPOCHS = 1.0
# a pilot whose measured step time is this much over the prediction means the production budget is wrong too
PILOT_TIME_OVERRUN_STOP = 1.5


class ProductionTarget(BaseModel):
    """Where and how often the chosen combination will run for real: ProductionOptions resolved against the results
    (the PoC's model, the plan's shape for the target GPU). Every value is given (production_target_for)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(description="model preset, config.json or folder trained in production (default: the PoC's)")
    gpu: str = Field(description="hardware preset or JSON file")
    gpus_per_node: int = Field(gt=0)
    nodes: int = Field(gt=0)
    dataset_tokens: int = Field(gt=0, description="tokens in one epoch of the production data")
    epochs: float = Field(gt=0)
    retrains_per_year: float = Field(ge=0)
    cost_per_gpu_hour: float | None = Field(ge=0)
    currency: CurrencyCode
    max_hours: float | None = Field(gt=0, description="wall-clock budget of one production run")
    seq_len: int = Field(gt=0, description="--target-seq-len, else the plan's default for the target GPU")
    micro_batch: int = Field(gt=0, description="--target-micro-batch, else the plan's default for the target GPU")
    poc_model: str | None = Field(description="the model the PoC measured quality on")
    shape_given: bool = Field(description="seq_len or micro_batch came from the user, not the plan's default")
    headroom: float = Field(description="share of GPU memory kept free (--headroom)")

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
    estimate: Estimate = Field(description="the planner's estimate it was derived from", exclude=True)


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
    time_constants: TimeConstants = Field(
        description="the target hardware's time constants the projection used: calibrated by runs on it, or default"
    )

    @property
    def calibrated(self) -> bool:
        return self.time_constants.calibration is not None


def _precision(hw_is_cpu: bool, hw) -> Precision:
    """Production trains at the best precision the GPU runs (spec.default_precision, the one place it lives)."""
    return default_precision(hw_is_cpu, hw.peak_flops)


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
        estimate=e,
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


def projections(rows: list[ResultRow], target: ProductionTarget) -> dict[str, Projection]:
    """Every run's combination projected onto the target (once per combination), by run key."""
    by_combo: dict[Combination, Projection] = {}
    out = {}
    for r in rows:
        if r.combination not in by_combo:
            by_combo[r.combination] = project(r.combination, r.label, target)
        out[r.key] = by_combo[r.combination]
    return out


def target_tie(target: ProductionTarget) -> float:
    """Two projected costs closer than this are a tie: the time model's stated error on the target hardware, its
    calibration's held-out error where runs on it were stored (ftopt.planner.choice.tie_fraction, the band `plan` uses)."""
    from ftopt.planner.choice import tie_fraction

    return tie_fraction(calibrated_hardware(load_hardware(target.gpu)).calibration)


class Difference(BaseModel):
    """One way the PoC's runs are not the production target: the reason PoC seconds do not rank its costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str = Field(description="gpu | model | gpus")
    poc: str = Field(description="what the PoC ran: its hardware, model, or GPU counts")
    target: str


def poc_differences(rows: list[ResultRow], target: ProductionTarget, hardware: str) -> list[Difference]:
    """How the PoC's successful runs differ from the target: another GPU, another model, or another number of GPUs.
    Any one of them makes PoC seconds a poor guide to the target's cost, so the decision goes by projection."""
    out = []
    if target.gpu != hardware:
        out.append(Difference(kind="gpu", poc=hardware, target=target.gpu))
    if target.poc_model is not None and target.model != target.poc_model:
        out.append(Difference(kind="model", poc=target.poc_model, target=target.model))
    counts = sorted({r.gpus for r in rows if r.ok})
    if counts and counts != [target.gpus]:
        out.append(Difference(kind="gpus", poc="/".join(map(str, counts)), target=str(target.gpus)))
    return out


def plan_choice(projs: dict[str, Projection], target: ProductionTarget) -> Combination | None:
    """The combination `plan` itself would recommend among these projections (ftopt.planner.choice: fastest that
    fits, ties within the time model's error on the target to fewer moving parts, DeepSpeed on one GPU only when
    nothing else fits)."""
    from ftopt.planner.choice import choose_fitting

    distinct = {p.combination: p.estimate for p in projs.values()}
    pick, _ = choose_fitting(list(distinct.values()), target.gpus, target_tie(target))
    return pick.combination if pick is not None else None


def candidate_costs(projs: dict[str, Projection], target: ProductionTarget) -> dict[str, float]:
    """GPU-hours per run of each run that fits the target, by run key; as in the plan, a combination with DeepSpeed
    on a one-GPU target (ZeRO or FSDP2 partitions nothing there) is set aside when one without it fits."""
    from ftopt.planner.choice import single_gpu_sharding

    fitting = {k: p for k, p in projs.items() if p.fits_memory}
    useful = {k: p for k, p in fitting.items() if not single_gpu_sharding(p.estimate, target.gpus)}
    return {k: p.gpu_hours_per_run for k, p in (useful or fitting).items()}


def plan_production(
    target: ProductionTarget, best: Projection, others: list[Projection], poc_gpu_hours: float, poc_cost: float | None
) -> ProductionPlan:
    """`best` is the decision's run projected, `others` the projections of the other runs that met the bar. The
    PoC's cost is the caller's: its runs may have used other hardware than the target's price is for."""
    from ftopt.planner.choice import single_gpu_sharding

    fitting = [p for p in others if p.fits_memory and p.combination != best.combination]
    # as in the decision (candidate_costs): DeepSpeed on a one-GPU target is no alternative while another fits
    useful = [p for p in fitting if not single_gpu_sharding(p.estimate, target.gpus)]
    alt = min(useful or fitting, key=lambda p: p.gpu_hours_per_run, default=None)
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
    hw = calibrated_hardware(load_hardware(target.gpu))  # the same constants `project` used
    return ProductionPlan(
        target=target,
        chosen=best,
        alternative=alt,
        stages=stages,
        precision=_precision(hw.is_cpu, hw),
        time_constants=hw.time_constants,
    )


def production_target_for(
    rows: list[ResultRow], options: ProductionOptions, headroom: float | None = None
) -> ProductionTarget:
    """The target of `options` (which has a --target-gpu): the PoC's model unless given (from the results' run
    specification); the sequence length and micro-batch `plan` uses by default for the target model on the target
    hardware (ftopt.planner.resolve.plan_setup) unless given (a PoC on a CPU trains 64-token sequences, which no
    production run does)."""
    from ftopt.planner import resolve

    run = next((r.run for r in rows if r.run is not None), None)
    if run is not None:
        poc_model = run.model.ref
    else:  # results written before the run specification: the sweep's flags
        args = next((r.legacy_sweep for r in rows if r.legacy_sweep), {}).get("model_args", [])
        flags = ("--model", "--random-init")
        poc_model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in flags), "tiny-llama")
    o = options
    model = o.target_model or poc_model
    plan_shape = resolve.plan_setup(load_model(model), load_hardware(o.target_gpu))
    return ProductionTarget(
        model=model,
        gpu=o.target_gpu,
        gpus_per_node=o.target_gpus,
        nodes=o.target_nodes,
        dataset_tokens=o.dataset_tokens,
        epochs=o.epochs,
        retrains_per_year=o.retrains_per_year,
        cost_per_gpu_hour=o.cost_per_gpu_hour,
        currency=o.currency,
        max_hours=o.max_hours,
        seq_len=o.target_seq_len or plan_shape.seq_len,
        micro_batch=o.target_micro_batch or plan_shape.micro_batch,
        poc_model=poc_model,
        shape_given=o.target_seq_len is not None or o.target_micro_batch is not None,
        headroom=DEFAULT_HEADROOM if headroom is None else headroom,
    )
