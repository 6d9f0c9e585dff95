"""Typed estimate results with a stable JSON schema (documented in docs/json-schema.md)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from ftopt.spec import Combination
from ftopt.spec.calibration import CalibrationProvenance
from ftopt.spec.time_constants import TimeConstants

SAMPLES_PER_QUOTE = 1000  # without a dataset size, time (and cost) are quoted per this many sequences


def usable_bytes(capacity_bytes: int, headroom: float) -> int:
    """Capacity less the --headroom share kept free (TrainingSetup.headroom): the limit a device total must meet."""
    return int(capacity_bytes * (1 - headroom))


class Method(str, Enum):
    ANALYTIC = "analytic"  # closed-form formulas, instant
    TRACED = "traced"  # FakeTensor trace of the real training step


class FallbackCause(str, Enum):
    TRACE_UNAVAILABLE = "trace-unavailable"  # the tracer cannot run this model or input (TraceUnavailable)
    TRIES_EXHAUSTED = "tries-exhausted"  # a plan's confirmation traces ran out before one confirmed an answer


class TraceFallback(BaseModel):
    """Why an answer asked of the traced estimator is the formulas' alone: printed as a warning, kept in the JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cause: FallbackCause
    error: str | None = Field(
        None, description="trace-unavailable: what the trace raised (FtoptError, or the torch exception's type)"
    )
    message: str = Field(description="one sentence: why, and that the answer is analytic")


class MemoryBreakdown(BaseModel):
    """Bytes per GPU by category at the moment of the peak. Categories sum to the allocated peak."""

    model_config = ConfigDict(extra="forbid")
    weights: int = 0  # model parameters resident on the GPU (16- or 32-bit, this GPU's share under ZeRO-3)
    master_weights: int = 0  # fp32 copy DeepSpeed keeps for 16-bit training
    optimizer_states: int = 0  # AdamW exp_avg and exp_avg_sq
    gradients: int = 0
    activations: int = 0  # tensors saved by autograd for backward, decoder layers
    logits_loss: int = 0  # LM head output, fp32 upcast, log-softmax and their gradients
    engine_buffers: int = 0  # DDP gradient buckets, ZeRO communication buckets, gathered ZeRO-3 parameters
    temporaries: int = 0  # short-lived tensors at the peak (optimizer step, recomputation)

    def total(self) -> int:
        return sum(self.model_dump().values())


class Estimate(BaseModel):
    """Per-GPU memory and time of one combination. `peak_bytes_per_gpu` is what torch.cuda.max_memory_allocated
    would report, `reserved_bytes_per_gpu` what torch.cuda.max_memory_reserved would; `device_bytes_per_gpu` adds
    the CUDA context (and NCCL's buffers) to the reserved peak: what nvidia-smi shows, and what `fits` is decided
    on."""

    model_config = ConfigDict(extra="forbid")
    method: Method
    model: str
    hardware: str
    combination: Combination
    peak_bytes_per_gpu: int
    reserved_bytes_per_gpu: int = Field(
        description="the CUDA caching allocator's reserved peak: the allocated peak plus the blocks it holds "
        "cached (estimate/allocator.py); equals peak_bytes_per_gpu off CUDA"
    )
    device_bytes_per_gpu: int
    breakdown: MemoryBreakdown
    peak_phase: str = Field(description="forward/backward, end of backward, or optimizer step")
    cpu_bytes_per_node: int = Field(description="host RAM needed for offloaded states (0 without offload)")
    capacity_bytes: int = Field(description="the GPU's memory")
    headroom_fraction: float = Field(0.0, description="share of capacity_bytes kept free (--headroom)")
    fits: bool = Field(description="device total within capacity less the margin, and offload within host RAM")
    tight: bool = Field(False, description="fits the GPU (and host RAM) but not the margin: shown, never chosen")
    trainable_params: int
    total_params: int
    step_seconds: float = Field(description="one optimizer step (all micro-batches of grad accumulation)")
    steps_per_epoch: int
    epoch_seconds: float
    total_seconds: float = Field(description="epoch_seconds x epochs")
    per_dataset: bool = Field(
        True,
        description="False without --dataset-tokens: an 'epoch' is then one global "
        "batch, so epoch and total times are not shown",
    )
    seconds_per_1k_samples: float = Field(description="time to train 1000 sequences of seq_len on all the GPUs")
    flops_per_step: float = Field(description="per GPU")
    comm_seconds: float = Field(description="exposed ZeRO/data-parallel communication and offload per step")
    kernels_per_step: int = Field(description="dispatched operators per step per GPU (the per-operator overhead term)")
    overhead_seconds: float = Field(
        description="per-operator, fixed and DeepSpeed engine overhead per step (calibrated)"
    )
    calibration: CalibrationProvenance | None = Field(
        None, description="time-model calibration used; None = uncalibrated"
    )
    time_constants: TimeConstants | None = Field(
        None, description="the time model's constants the step time was computed with, and their provenance"
    )
    notes: list[str] = Field(default_factory=list)
    trace_fallback: TraceFallback | None = Field(
        None, description="set when the traced estimator was asked and could not run: this estimate is analytic"
    )

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.device_bytes_per_gpu

    @property
    def usable_bytes(self) -> int:
        """What the device total may reach: the capacity less the --headroom margin."""
        return usable_bytes(self.capacity_bytes, self.headroom_fraction)

    def to_json(self) -> dict:
        d = self.model_dump(mode="json")
        d["combination"] = self.combination.key()
        d["headroom_bytes"] = self.headroom_bytes
        d["usable_bytes"] = self.usable_bytes
        if not self.per_dataset:  # an "epoch" of one global batch is no answer: null, see seconds_per_1k_samples
            d["epoch_seconds"] = d["total_seconds"] = None
        return d
