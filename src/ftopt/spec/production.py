"""What a user says about production: which model and GPUs the chosen combination will train on, on how much data,
how often, and at what price. One object for the production flags of `report` and `demo` (and the planner page):
each default lives here, the commands pass on only what was given."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CURRENCY = "USD"  # ISO 4217 code of --cost-per-gpu-hour and of every cost derived from it
CurrencyCode = Annotated[str, Field(min_length=1, max_length=8, description="currency of cost_per_gpu_hour")]


# the fields only a projection reads (the price, currency and time budget also price the PoC's own runs)
PROJECTION_ONLY = ("target_gpus", "target_nodes", "target_model", "target_seq_len", "target_micro_batch", "epochs",
                   "retrains_per_year")  # fmt: skip


class ProductionOptions(BaseModel):
    """The production flags (`--target-gpu`, `--dataset-tokens`, ...; each field is its flag's name). No target GPU
    means no projection; the sequence length and micro-batch default to the plan's for the target GPU
    (ftopt.report.projection.production_target_for)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    target_gpu: str | None = Field(None, description="production GPU preset or JSON file")
    target_gpus: int = Field(1, gt=0, description="production GPUs per node")
    target_nodes: int = Field(1, gt=0, description="production nodes")
    target_model: str | None = Field(None, description="production model (default: the PoC's)")
    target_seq_len: int | None = Field(None, gt=0, description="production tokens per sequence")
    target_micro_batch: int | None = Field(None, gt=0, description="production sequences per micro-batch")
    dataset_tokens: int | None = Field(None, gt=0, description="tokens in one epoch of the production data")
    epochs: float = Field(1.0, gt=0, description="epochs of one production run")
    retrains_per_year: float = Field(1.0, ge=0, description="production runs per year")
    cost_per_gpu_hour: float | None = Field(None, ge=0, description="price of one GPU for one hour")
    currency: CurrencyCode = DEFAULT_CURRENCY
    max_hours: float | None = Field(None, gt=0, description="time budget of one production run, hours")

    @model_validator(mode="after")
    def _projection_needs_gpu_and_data(self) -> ProductionOptions:
        if (self.target_gpu is None) != (self.dataset_tokens is None):
            raise ValueError(
                "Give --target-gpu and --dataset-tokens together to project production; got only "
                f"{'--target-gpu' if self.target_gpu else '--dataset-tokens'}."
            )
        # what only the projection reads, given without one, would be dropped without a word
        idle = [f for f in PROJECTION_ONLY if f in self.model_fields_set] if self.target_gpu is None else []
        if idle:
            flag = "--" + idle[0].replace("_", "-")
            raise ValueError(f"{flag} describes the production run, which needs --target-gpu and --dataset-tokens.")
        return self

    @classmethod
    def given(cls, **flags) -> ProductionOptions:
        """From command-line values, None meaning not given (so the default here applies)."""
        return cls.model_validate({k: v for k, v in flags.items() if v is not None})

    @property
    def projects(self) -> bool:
        return self.target_gpu is not None
