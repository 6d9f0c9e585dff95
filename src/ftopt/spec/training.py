"""Training setup and the optimization combination: the two typed objects every estimate, plan and run takes.

A combination of optimizations is data (`Combination`), never a code path: the estimators, the trainer and the
report all read the same five fields.
"""
from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Precision(str, Enum):
    FP32 = "fp32"  # fp32 weights, fp32 compute
    BF16_MIXED = "bf16-mixed"  # autocast bf16 compute; fp32 master weights (where the engine keeps them)
    FP16_MIXED = "fp16-mixed"  # as bf16-mixed with fp16 compute and loss scaling
    BF16_TRUE = "bf16-true"  # bf16 weights, grads and optimizer states; no fp32 copy

    @property
    def compute_dtype(self) -> str:
        return {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16", "bf16-true": "bf16"}[self.value]


class Offload(str, Enum):
    NONE = "none"
    OPTIMIZER = "optimizer"  # ZeRO-Offload: fp32 master weights + Adam states live in CPU RAM, Adam runs on CPU
    ALL = "all"  # ZeRO-Infinity style: parameters offloaded too (stage 3 only)


class Attention(str, Enum):
    EAGER = "eager"  # materialises the (heads, s, s) score matrix
    SDPA = "sdpa"  # torch scaled_dot_product_attention (memory-efficient / flash kernel when eligible)
    FLASH = "flash"  # flash_attention_2: O(s) memory, needs a CUDA GPU and the flash-attn package

    @property
    def hf_name(self) -> str:
        return {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}[self.value]

    @property
    def linear_memory(self) -> bool:
        """True when attention keeps O(s) rather than O(s^2) per head for backward."""
        return self is not Attention.EAGER


class Combination(BaseModel):
    """One choice of the four memory/time optimizations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gc: bool = False
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 means full fine-tuning")
    lora_targets: tuple[str, ...] | None = Field(None, description="module names; None = every attention projection")
    zero: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage; 0 = plain data parallel")
    offload: Offload = Offload.NONE
    attn: Attention = Attention.SDPA

    @model_validator(mode="after")
    def _rules(self) -> "Combination":
        if self.offload is Offload.ALL and self.zero != 3:
            raise ValueError(f"parameter offload (offload=all) needs ZeRO stage 3, got stage {self.zero}")
        if self.offload is Offload.OPTIMIZER and self.zero == 0:
            raise ValueError("optimizer offload needs a ZeRO stage (1, 2 or 3), got stage 0")
        if self.lora_r == 0 and self.lora_targets:
            raise ValueError("lora_targets were given but lora_r is 0 (full fine-tuning)")
        return self

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero > 0

    def label(self) -> str:
        """Short human label, e.g. 'LoRA r16 + ZeRO-2 + GC + flash'."""
        parts = [f"LoRA r{self.lora_r}" if self.lora else "full"]
        if self.zero:
            parts.append(f"ZeRO-{self.zero}")
        if self.offload is not Offload.NONE:
            parts.append(f"offload {self.offload.value}")
        if self.gc:
            parts.append("GC")
        parts.append(self.attn.value)
        return " + ".join(parts)

    def key(self) -> dict:
        """The stable JSON form (documented schema: gc, lora_r, zero, offload, attn, lora_targets)."""
        return {"gc": self.gc, "lora_r": self.lora_r, "zero": self.zero, "offload": self.offload.value,
                "attn": self.attn.value, "lora_targets": list(self.lora_targets) if self.lora_targets else None}


# Defaults that differ on a CPU (see TrainingSetup.for_hardware); shown in the CLI's --help.
CPU_DEFAULTS = {"seq_len": 64, "micro_batch": 8, "precision": "fp32"}


class TrainingSetup(BaseModel):
    """What is trained, how long, on how many devices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq_len: int = Field(2048, gt=0)
    micro_batch: int = Field(1, gt=0, description="sequences per GPU per forward pass")
    grad_accum: int = Field(1, gt=0)
    precision: Precision = Precision.BF16_MIXED
    gpus_per_node: int = Field(1, gt=0)
    nodes: int = Field(1, gt=0)
    dataset_tokens: int | None = Field(None, gt=0, description="tokens in one epoch; None = one global batch")
    epochs: float = Field(1.0, gt=0)

    @classmethod
    def for_hardware(cls, is_cpu: bool, **given) -> "TrainingSetup":
        """A setup with the defaults that suit the hardware, then whatever the user gave (None = not given).

        The field defaults above are a GPU's. A CPU cannot train 2048-token bf16 batches in useful time, so for
        it CPU_DEFAULTS apply: short fp32 sequences in larger micro-batches (the built-in task's scale)."""
        base = dict(CPU_DEFAULTS) if is_cpu else {}
        base.update({k: v for k, v in given.items() if v is not None})
        return cls(**base)

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
