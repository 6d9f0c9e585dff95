"""`ftopt plan` from what the user gave to the plan and its recommended run: the CLI declares the flags and calls
`make`; tests call it without the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftopt.planner import resolve
from ftopt.planner.hardware import method_of, planning_hardware
from ftopt.planner.plan import Plan, plan
from ftopt.spec import HardwareSpec, ModelSpec, RunSpec, load_model


class PlanRequest(BaseModel):
    """What `ftopt plan` was given, flag by flag (None: not given; the spec classes hold the defaults)."""

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
    headroom: float | None
    lora_r: int
    lora_targets: str | None
    adapter_dtype: str | None
    max_hours: float | None
    full_only: bool
    cost_per_gpu_hour: float | None
    currency: str | None
    method: str
    quant: str | None
    optim: str | None
    engine: str | None
    calibration: Path | None
    host_ram: str | None


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


def make(r: PlanRequest) -> Planned:
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
        headroom=r.headroom,
    )
    p = plan(
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
    )
    ref = resolve.model_ref(r.model, weights=resolve.has_weights(r.model))
    run = resolve.new_run(hw, ref, setup, p.recommended.combination) if p.recommended else None
    return Planned(p, run, m, hw)
