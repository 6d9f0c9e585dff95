"""`ftopt plan` and `ftopt estimate` from what the user gave: the plan and its recommended run (`make`), or one
combination's estimate (`estimate_for`). The CLI declares the flags and calls these; tests call them without the
CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ftopt.planner import resolve
from ftopt.planner.candidates import DEFAULT_LORA_R
from ftopt.planner.hardware import method_of, planning_hardware
from ftopt.planner.plan import Plan, plan
from ftopt.spec import HardwareSpec, ModelRef, ModelSpec, RunSpec, TrainingSetup, load_model

if TYPE_CHECKING:
    from ftopt.estimate import Estimate


class SetupRequest(BaseModel):
    """The flags `ftopt plan` and `ftopt estimate` share: the model, the hardware and the training setup
    (None: not given; the spec classes hold the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    gpu: str | None
    gpus: int | None
    nodes: int | None
    seq_len: int | None
    micro_batch: int | None
    grad_accum: int | None
    precision: str | None
    dataset_tokens: int | None
    epochs: float | None
    packing: bool | None
    batching: str | None
    headroom: float | None
    calibration: Path | None
    host_ram: str | None


# `ftopt plan --method` default: the formulas search, the trace confirms. The planner page shows the analytic answer
# at once and the traced one when its job ends.
DEFAULT_METHOD = "traced"


class PlanLevers(BaseModel):
    """What `ftopt plan` tries and ranks by, beyond the setup: the flags the CLI and the planner page both take,
    with their defaults (None: not given; plan()'s defaults apply). The one copy of these fields and defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_r: int = DEFAULT_LORA_R
    lora_targets: str | None = None
    adapter_dtype: str | None = None
    dora: bool = False
    rslora: bool = False
    lora_dropout: float | None = None
    qlora_recipe: str | None = None
    quant: str | None = None
    optim: str | None = None
    engine: str | None = None
    full_only: bool = False
    max_hours: float | None = None
    cost_per_gpu_hour: float | None = None
    currency: str | None = None
    method: str = DEFAULT_METHOD


class PlanRequest(SetupRequest, PlanLevers):
    """What `ftopt plan` was given, flag by flag: the shared setup flags and the plan's levers."""


@dataclass(frozen=True)
class Planned:
    """The plan, the run it recommends (None when nothing fits), and the specs it was made for."""

    plan: Plan
    run: RunSpec | None
    model: ModelSpec
    hardware: HardwareSpec

    def to_json(self) -> dict:
        """What `plan --json` prints and `plan --out` writes: the plan, with the recommended run under `run`."""
        return {**self.plan.to_json(), "run": self.run.to_json() if self.run else None}


def specs(r: SetupRequest) -> tuple[ModelSpec, HardwareSpec, TrainingSetup]:
    """The model, the planning hardware and the training setup the shared flags resolve to."""
    m, hw = load_model(r.model), planning_hardware(r.gpu, r.calibration, r.host_ram)
    setup = resolve.plan_setup(
        m,
        hw,
        seq_len=r.seq_len,
        micro_batch=r.micro_batch,
        grad_accum=r.grad_accum,
        precision=r.precision,
        gpus_per_node=r.gpus,
        nodes=r.nodes,
        dataset_tokens=r.dataset_tokens,
        epochs=r.epochs,
        packing=r.packing,
        batching=r.batching,
        headroom=r.headroom,
    )
    return m, hw, setup


def make(r: PlanRequest) -> Planned:
    """The plan for the flags given, and the run it recommends (ready for `ftopt train --plan`)."""
    m, hw, setup = specs(r)
    p = plan_for(r, m, hw, setup)
    return with_run(p, m, hw, setup, resolve.model_ref(r.model, weights=resolve.has_weights(r.model)))


def plan_for(r: PlanLevers, m: ModelSpec, hw: HardwareSpec, setup: TrainingSetup) -> Plan:
    """The plan of `m` on `hw` under `setup` with the levers given: what `ftopt plan` and the planner page both
    call."""
    return plan(
        m,
        hw,
        setup,
        method=method_of(r.method),
        max_hours=r.max_hours,
        full_only=r.full_only,
        lora_r=r.lora_r,
        lora_targets=resolve.lora_target_list(r.lora_targets),
        adapter_dtype=resolve.enum_value("adapter_dtype", r.adapter_dtype),
        cost_per_gpu_hour=r.cost_per_gpu_hour,
        currency=r.currency,
        quants=resolve.enum_list("quant", r.quant),
        optims=resolve.enum_list("optim", r.optim),
        engines=resolve.enum_list("engine", r.engine),
        recipes=resolve.enum_list("qlora_recipe", r.qlora_recipe),
        dora=r.dora,
        rslora=r.rslora,
        lora_dropout=r.lora_dropout,
    )


def with_run(p: Plan, model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, ref: ModelRef) -> Planned:
    """The plan with the run it recommends for `ref` (None when nothing fits): what `ftopt plan` and the planner
    page both answer."""
    run = resolve.new_run(hw, ref, setup, p.recommended.combination) if p.recommended else None
    return Planned(p, run, model, hw)


class EstimateRequest(SetupRequest):
    """What `ftopt estimate` was given, flag by flag, beyond the shared setup flags."""

    gc: bool | None
    lora_r: int | None
    lora_targets: str | None
    adapter_dtype: str | None
    zero: int | None
    fsdp: str | None
    offload: str | None
    attn: str | None
    quant: str | None
    optim: str | None
    method: str
    dora: bool | None = None
    rslora: bool | None = None
    lora_dropout: float | None = None
    qlora_recipe: str | None = None


def estimate_for(r: EstimateRequest) -> Estimate:
    """The estimate of the one combination the flags name, on the setup they resolve to (see ftopt.estimate)."""
    from ftopt.estimate import estimate

    m, hw, setup = specs(r)
    combo = resolve.combination(
        gc=r.gc,
        lora_r=r.lora_r,
        lora_targets=r.lora_targets,
        dora=r.dora,
        rslora=r.rslora,
        lora_dropout=r.lora_dropout,
        adapter_dtype=r.adapter_dtype,
        zero=r.zero,
        fsdp=r.fsdp,
        offload=r.offload,
        attn=r.attn,
        quant=r.quant,
        qlora_recipe=r.qlora_recipe,
        optim=r.optim,
    )
    return estimate(m, hw, setup, combo, method_of(r.method))
