"""The training setup: what is trained, how long, on how many devices, in which precision and batching.

With the combination of optimizations (spec/combination.py) it is what every estimate, plan and run takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftopt.spec.errors import FieldError


class Precision(str, Enum):
    FP32 = "fp32"  # fp32 weights, fp32 compute
    BF16_MIXED = "bf16-mixed"  # autocast bf16 compute; fp32 master weights (where the engine keeps them)
    FP16_MIXED = "fp16-mixed"  # as bf16-mixed with fp16 compute and loss scaling
    BF16_TRUE = "bf16-true"  # bf16 weights, grads and optimizer states; no fp32 copy

    @property
    def compute_dtype(self) -> str:
        return {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16", "bf16-true": "bf16"}[self.value]


# Share of the GPU's memory kept free beyond the predicted device total (`--headroom`). The device total already
# counts the caching allocator's reserved peak (estimate/allocator.py), the CUDA context and NCCL buffers; the margin covers what no
# estimate sees: fragmentation under changing batch shapes, other processes on the GPU, library workspaces, and the
# analytic estimator's own error (its stated worst-case target is 10%, README "Estimate accuracy"). 10% is also the share vLLM leaves
# free by default (gpu_memory_utilization=0.9). 0 turns the margin off.
DEFAULT_HEADROOM = 0.10
# The most GPUs one node holds: NVIDIA's GB200 NVL72 joins 72 GPUs in one NVLink domain (NVIDIA GB200 NVL72
# datasheet), the largest single node a launcher addresses. A bound, so that a typo (or a request) of 100000 is one
# sentence, not a plan over 100000 GPU counts.
MAX_GPUS_PER_NODE = 72

# Defaults that differ on a CPU (see TrainingSetup.for_hardware); shown in the CLI's --help.
CPU_DEFAULTS = {"seq_len": 64, "micro_batch": 8, "precision": "fp32"}


def default_precision(is_cpu: bool, compute_dtypes: Iterable[str]) -> Precision:
    """The best precision a device runs, the one place this default lives: bf16-mixed where it has bf16 units
    (Ampere and newer), fp16-mixed where it has only fp16 ones (T4, V100: sm_75/sm_70 have no bf16 tensor cores),
    fp32 on a CPU (CPU_DEFAULTS: autocast bf16 runs at the fp32 rate or slower there without AMX)."""
    if is_cpu:
        return Precision(CPU_DEFAULTS["precision"])
    dtypes = set(compute_dtypes)
    return next((p for p in (Precision.BF16_MIXED, Precision.FP16_MIXED) if p.compute_dtype in dtypes), Precision.FP32)


class AdamWKernel(str, Enum):
    """Which torch AdamW implementation steps the optimizer (torch/optim/adam.py; AdamW is Adam with decoupled
    weight decay). FUSED: one kernel per parameter group, no temporaries; what `ftopt train` runs (Hugging Face
    Trainer's default optim, adamw_torch_fused). FOREACH: torch.optim.AdamW's default on CUDA
    (optimizer._default_to_fused_or_foreach), the choice of hand-written loops; _multi_tensor_adam allocates
    torch._foreach_sqrt(exp_avg_sqs), a copy of the second moments, for the update."""

    FUSED = "fused"
    FOREACH = "foreach"


class Batching(str, Enum):
    """How the data is batched: what shape each micro-batch has and whether SDPA is handed an explicit mask
    (estimate/layout.py says what each costs). The field `packing` of older files maps to PACKED / PADDED."""

    PACKED = "packed"  # documents packed into rows of seq_len, padding-free (TRL's layout, ftopt.train.sft)
    # one document per row, right-padded to the micro-batch's longest (Trainer/TRL dynamic padding; `ftopt train`
    # without packing): the estimate is that of the largest batch, a row of seq_len beside shorter ones
    PADDED = "padded"
    PADDED_MAX = "padded-max"  # one document per row, right-padded to seq_len (axolotl's pad_to_sequence_len)
    FULL = "full"  # every row exactly seq_len tokens (data cut into fixed-length chunks): no padding, no mask


class TrainingSetup(BaseModel):
    """What is trained, how long, on how many devices."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # infinite epochs never finish

    seq_len: int = Field(2048, gt=0)
    micro_batch: int = Field(1, gt=0, description="sequences per GPU per forward pass")
    grad_accum: int = Field(1, gt=0)
    precision: Precision = Precision.BF16_MIXED
    gpus_per_node: int = Field(1, gt=0, le=MAX_GPUS_PER_NODE)
    nodes: int = Field(1, gt=0)
    dataset_tokens: int | None = Field(None, gt=0, description="tokens in one epoch; None = one global batch")
    epochs: float = Field(1.0, gt=0)
    batching: Batching = Field(Batching.PADDED, description="how rows are formed and padded (see Batching)")
    adamw_kernel: AdamWKernel = Field(AdamWKernel.FUSED, description="torch AdamW implementation (see AdamWKernel)")
    keeps_outputs: bool = Field(
        False,
        description="the training loop holds the model's outputs (the logits) through backward and the step, until "
        "the next forward returns, as hand-written loops `outputs = model(**batch); outputs.loss.backward()` do; "
        "Hugging Face Trainer (ftopt train) keeps only the loss",
    )
    kv_cache: bool = Field(
        False,
        description="the forward builds transformers' KV cache (DynamicCache: every layer's keys and values) and "
        "the kept outputs hold it: a model whose config has use_cache=True, from_pretrained's default for decoder "
        "models, trained without gradient checkpointing (transformers turns the cache off under it); needs "
        "keeps_outputs. `ftopt train` builds its models with use_cache=False",
    )
    expandable_segments: bool = Field(
        True,
        description="CUDA caching allocator with expandable_segments:True (what `ftopt train` sets, "
        "train/allocator.py); False = torch's default allocator",
    )
    headroom: float = Field(
        DEFAULT_HEADROOM,
        description="share of GPU memory kept free beyond the predicted device total (--headroom); 0 = none",
    )

    @model_validator(mode="before")
    @classmethod
    def _packing_flag(cls, data):
        """`packing` (the --packing/--no-packing flag, and the field of files written before `batching`) names
        one of two batchings: True = packed, False = padded to the longest. With `batching` it must agree."""
        if not isinstance(data, dict) or "packing" not in data:
            return data
        data = dict(data)
        packing = data.pop("packing")
        if packing is None:
            return data
        implied = Batching.PACKED if packing else Batching.PADDED
        given = data.get("batching")
        if given is None:
            data["batching"] = implied
        elif given in set(Batching) and (Batching(given) is Batching.PACKED) != bool(packing):
            raise ValueError(
                f"--{'' if packing else 'no-'}packing contradicts --batching {Batching(given).value}: give one of them"
            )
        return data

    @model_validator(mode="after")
    def _rules(self) -> TrainingSetup:
        if self.kv_cache and not self.keeps_outputs:
            # without the outputs kept the cache is freed when the forward returns, before any peak it could raise
            raise ValueError("kv_cache describes the KV cache a loop's kept outputs hold: it needs keeps_outputs")
        if not 0 <= self.headroom < 1:  # one sentence that says what the share is (pydantic's would not)
            raise FieldError(
                f"headroom is the share of GPU memory kept free, at least 0 and below 1 (0.1 = 10%), "
                f"got {self.headroom:g}",
                "headroom",
            )
        return self

    @classmethod
    def for_hardware(
        cls, is_cpu: bool, compute_dtypes: Iterable[str] = ("bf16", "fp16", "fp32"), **given
    ) -> TrainingSetup:
        """A setup with the defaults that suit the hardware, then whatever the user gave (None = not given).

        The field defaults above are a GPU's. A CPU cannot train 2048-token bf16 batches in useful time, so for
        it CPU_DEFAULTS apply: short fp32 sequences in larger micro-batches (the built-in task's scale). The
        precision is the best the device runs (default_precision; `compute_dtypes`: the dtypes it has units for)."""
        base = dict(CPU_DEFAULTS) if is_cpu else {"precision": default_precision(is_cpu, compute_dtypes)}
        base.update({k: v for k, v in given.items() if v is not None})
        return cls(**base)

    @property
    def packing(self) -> bool:
        return self.batching is Batching.PACKED

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step across all GPUs."""
        return self.tokens_per_micro_batch * self.grad_accum * self.world_size

    def steps_per_epoch(self) -> int:
        tokens = self.dataset_tokens or self.tokens_per_step
        return max(1, -(-tokens // self.tokens_per_step))  # ceil division on ints: no float rounding
