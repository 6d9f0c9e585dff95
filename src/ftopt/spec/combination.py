"""The optimization combination: which memory/time optimizations one run takes, as one typed object.

A combination of optimizations is data (`Combination`), never a code path: the estimators, the trainer and the
report all read the same fields. Each choice is a named enum here; the rules that tie the choices together (what
needs what, what excludes what) are the Combination's validators.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftopt.spec.errors import FieldError
from ftopt.spec.training import Precision


class Offload(str, Enum):
    NONE = "none"
    OPTIMIZER = "optimizer"  # ZeRO-Offload: fp32 master weights + Adam states live in CPU RAM, Adam runs on CPU
    ALL = "all"  # ZeRO-Infinity style: parameters offloaded too (stage 3 only)


class Fsdp(str, Enum):
    """PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`), the second sharding engine beside DeepSpeed ZeRO."""

    NONE = "none"
    FULL = "full"  # reshard_after_forward=True: parameters re-gathered in backward (ZeRO-3-like)
    GRAD_OP = "grad-op"  # reshard_after_forward=False: unsharded from forward to backward (ZeRO-2-like)

    @property
    def reshard_after_forward(self) -> bool:
        return self is Fsdp.FULL


class Engine(str, Enum):
    """Which engine holds (and shards) the training states: `plan --engine` restricts the candidates to these."""

    DDP = "ddp"  # Trainer alone: plain data parallel over several GPUs
    ZERO = "zero"  # DeepSpeed ZeRO 1-3
    FSDP = "fsdp"  # PyTorch FSDP2


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

    def runs_in(self, precision: Precision) -> bool:
        """Whether the kernel takes this precision's compute dtype: flash-attn runs fp16 and bf16 only
        (flash_attn_interface checks `q.dtype in [torch.float16, torch.bfloat16]` and raises on fp32)."""
        return self is not Attention.FLASH or precision.compute_dtype != "fp32"


class Quant(str, Enum):
    """How the frozen base weights are stored (bitsandbytes, through transformers.BitsAndBytesConfig)."""

    NONE = "none"  # the precision's dtype (see policy.storage)
    NF4 = "nf4"  # QLoRA: 4-bit NormalFloat, 64-weight blocks, double-quantized absmax (arXiv 2305.14314)
    FP4 = "fp4"  # 4-bit float, same block layout as NF4
    INT8 = "int8"  # LLM.int8(): int8 weights with one fp32 scale per output row (arXiv 2208.07339)

    @property
    def four_bit(self) -> bool:
        return self in (Quant.NF4, Quant.FP4)


class QloraRecipe(str, Enum):
    """How a quantized base keeps the parameters bitsandbytes does not quantize (embeddings, norms, biases, the LM
    head), as each public QLoRA recipe runs it. The recipes differ in memory: fp32 copies of the embeddings and head
    are 4 x vocab x hidden bytes each."""

    # PEFT's prepare_model_for_kbit_training (other.py: every fp16/bf16 parameter `.to(torch.float32)`), as the
    # Hugging Face QLoRA examples, TRL and axolotl run it; the LM head stays unquantized (transformers'
    # get_keys_to_not_convert keeps the output embedding); adapters fp32.
    PEFT = "peft"
    # torchtune's qlora_* model builders (models/llama3/_component_builders.py: every decoder linear quantize_base,
    # "quantize_base is not applied to final output_proj"), built under training.set_default_dtype(bf16): the rest,
    # the LM head and the LoRA adapters stay bf16, no autocast.
    TORCHTUNE = "torchtune"
    # LitGPT finetune/lora.py --quantize bnb.nf4 with --precision bf16-true ("Quantization and mixed precision is
    # not supported"): Lightning's BitsandbytesPrecision converts every nn.Linear, the LM head included; the rest
    # and the adapters stay bf16.
    LITGPT = "litgpt"

    @property
    def keeps_16bit(self) -> bool:
        """The non-quantized parameters and the adapters stay in the model's 16-bit dtype (no fp32 upcast)."""
        return self is not QloraRecipe.PEFT

    @property
    def quantizes_head(self) -> bool:
        return self is QloraRecipe.LITGPT

    def runs_in(self, precision: Precision) -> bool:
        """torchtune and LitGPT run a quantized base in bf16 without autocast: bf16-true only."""
        return not self.keeps_16bit or precision is Precision.BF16_TRUE


# PEFT's special value for LoraConfig.target_modules: every linear but the output layer (tuners_utils
# INCLUDE_LINEAR_LAYERS_SHORTHAND), the QLoRA paper's choice (arXiv 2305.14314 sec. 4: "LoRA on all linear
# transformer block layers").
ALL_LINEAR = "all-linear"


class Optim(str, Enum):
    """The optimizer; 8-bit and paged variants are bitsandbytes' (transformers TrainingArguments `optim` names)."""

    ADAMW = "adamw"  # torch.optim.AdamW, fused (Trainer's default with torch >= 2.8)
    ADAMW_8BIT = "adamw-8bit"  # bnb.optim.AdamW(optim_bits=8): block-wise 8-bit states (arXiv 2110.02861)
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"  # the same with states in CUDA unified (paged) memory
    PAGED_ADAMW = "paged-adamw"  # 32-bit states in paged memory

    @property
    def hf_name(self) -> str:
        return {
            "adamw": "adamw_torch_fused",
            "adamw-8bit": "adamw_bnb_8bit",
            "paged-adamw-8bit": "paged_adamw_8bit",
            "paged-adamw": "paged_adamw_32bit",
        }[self.value]

    @property
    def eight_bit(self) -> bool:
        return self in (Optim.ADAMW_8BIT, Optim.PAGED_ADAMW_8BIT)

    @property
    def paged(self) -> bool:
        return self in (Optim.PAGED_ADAMW_8BIT, Optim.PAGED_ADAMW)


class AdapterDtype(str, Enum):
    """The dtype PEFT keeps the LoRA adapters in (get_peft_model's `autocast_adapter_dtype`, peft 0.21
    tuners_utils.cast_adapter_dtype): PEFT upcasts 16-bit adapters to fp32 by default, and each wrapped layer then
    casts its input up to the adapter's dtype (lora.Linear.forward: _cast_input_dtype)."""

    FP32 = "fp32"  # autocast_adapter_dtype=True, PEFT's default
    BASE = "base"  # autocast_adapter_dtype=False: the adapters take the base model's dtype


class Combination(BaseModel):
    """One choice of the memory/time optimizations: GC, LoRA, ZeRO/offload, attention, base quantization, optimizer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gc: bool = False
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 means full fine-tuning")
    lora_targets: tuple[str, ...] | None = Field(
        None, description=f"module names, or ('{ALL_LINEAR}',): every decoder linear; None = every attention projection"
    )
    dora: bool = Field(False, description="DoRA (PEFT use_dora): LoRA with a trained magnitude per output row")
    rslora: bool = Field(False, description="rank-stabilized LoRA (PEFT use_rslora): scaling alpha/sqrt(r)")
    # PEFT's LoraConfig default; TRL's ModelConfig defaults to 0.05 (so an export states it), axolotl's examples and
    # LitGPT's LoRA configs use 0.05, the QLoRA paper 0.1 up to 13B and 0.05 above (arXiv 2305.14314, appendix)
    lora_dropout: float = Field(
        0.0, description="LoRA adapter dropout (PEFT lora_dropout): share of each wrapped linear's input zeroed"
    )
    adapter_dtype: AdapterDtype = Field(AdapterDtype.FP32, description="LoRA adapters' dtype (PEFT's default: fp32)")
    zero: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage; 0 = plain data parallel")
    fsdp: Fsdp = Field(Fsdp.NONE, description="PyTorch FSDP2 sharding; exclusive with zero")
    offload: Offload = Offload.NONE
    attn: Attention = Attention.SDPA
    quant: Quant = Quant.NONE
    optim: Optim = Optim.ADAMW
    qlora_recipe: QloraRecipe = QloraRecipe.PEFT

    @model_validator(mode="after")
    def _rules(self) -> Combination:
        if self.uses_fsdp:
            self._fsdp_rules()
        elif self.offload is Offload.ALL and self.zero != 3:
            raise FieldError(f"parameter offload (offload=all) needs ZeRO stage 3, got stage {self.zero}", "offload")
        if self.offload is Offload.OPTIMIZER and self.zero == 0:
            raise ValueError("optimizer offload needs a ZeRO stage (1, 2 or 3), got stage 0")
        if self.lora_r == 0 and self.lora_targets:
            raise FieldError("lora_targets were given but lora_r is 0 (full fine-tuning)", "lora_targets", "lora_r")
        if self.adapter_dtype is not AdapterDtype.FP32 and not self.lora:
            raise FieldError(
                f"adapter_dtype={self.adapter_dtype.value} was given but lora_r is 0 (no adapters)",
                "adapter_dtype",
                "lora_r",
            )
        if self.adapter_dtype is AdapterDtype.BASE and self.quant is not Quant.NONE:
            # peft 0.21 cast_adapter_dtype: autocast_adapter_dtype=False is not supported for quantized bases
            # (huggingface/peft#2889, as TRL's SFTTrainer notes); the adapters stay fp32 there
            raise FieldError(
                f"adapter_dtype=base needs a 16-bit base; quant={self.quant.value} keeps the adapters in fp32",
                "adapter_dtype",
                "quant",
            )
        if self.quant is not Quant.NONE and not self.lora:
            raise FieldError(
                f"a quantized base (quant={self.quant.value}) is frozen, so it needs LoRA (lora_r > 0)",
                "quant",
                "lora_r",
            )
        self._variant_rules()
        if self.quant is not Quant.NONE and self.zero == 3:
            # ZeRO-3 partitions parameters; bitsandbytes' quantized parameters carry their quant_state outside the
            # tensor, and transformers skips zero.Init for quantized models (modeling_utils: `is_deepspeed_zero3_enabled()
            # and not is_quantized`); PEFT's ZeRO-3 QLoRA recipe needs bnb_4bit_quant_storage = the 16-bit dtype.
            raise FieldError(
                f"quant={self.quant.value} runs with ZeRO stage 0, 1 or 2 only (bitsandbytes weights are "
                "not partitioned by ZeRO-3 here), got stage 3",
                "quant",
            )
        if self.optim is not Optim.ADAMW and self.uses_deepspeed:
            # Under DeepSpeed the ZeRO optimizer owns the fp32 states (and offload requires DeepSpeedCPUAdam).
            raise FieldError(
                f"optim={self.optim.value} is a bitsandbytes optimizer run by Trainer alone; with "
                f"ZeRO stage {self.zero} DeepSpeed's own AdamW holds the states, use optim=adamw",
                "optim",
            )
        return self

    def _variant_rules(self) -> None:
        """The LoRA variants and the QLoRA recipe: each needs what it modifies."""
        for name, on in (("dora", self.dora), ("rslora", self.rslora)):
            if on and not self.lora:
                raise FieldError(
                    f"{name} is a LoRA variant, so it needs LoRA (lora_r > 0), got full fine-tuning", name, "lora_r"
                )
        self._dropout_rules()
        if self.lora_targets and ALL_LINEAR in self.lora_targets and len(self.lora_targets) > 1:
            raise FieldError(f"lora_targets '{ALL_LINEAR}' already names every linear; give it alone", "lora_targets")
        if self.qlora_recipe is not QloraRecipe.PEFT and self.quant is Quant.NONE:
            raise FieldError(
                f"qlora_recipe={self.qlora_recipe.value} says how a quantized base keeps its other parameters, "
                "so it needs a quantized base (quant nf4, fp4 or int8)",
                "qlora_recipe",
                "quant",
            )
        if self.dora and (self.zero == 3 or self.uses_fsdp):
            # DoRA reads each wrapped layer's whole base weight in forward to take its norm (peft tuners/lora/
            # dora.py DoraLinearLayer.forward), outside the base layer's own forward where ZeRO-3 gathers it;
            # ftopt's FSDP2 estimator has no DoRA terms
            raise FieldError(
                f"dora runs with ZeRO stage 0-2 and without FSDP here (it reads the whole base weight of each "
                f"wrapped layer in forward), got {self.sharding}",
                "dora",
            )

    def _dropout_rules(self) -> None:
        p = self.lora_dropout
        if not 0 <= p < 1:  # false for nan too
            raise FieldError(
                f"lora_dropout is the share of each adapter input zeroed, so it must be at least 0 and below 1, got {p}",
                "lora_dropout",
            )
        if p and not self.lora:
            raise FieldError(
                f"lora_dropout={p} drops the LoRA adapters' input, so it needs LoRA (lora_r > 0)",
                "lora_dropout",
                "lora_r",
            )

    def _fsdp_rules(self) -> None:
        f = self.fsdp.value
        if self.zero:
            raise FieldError(f"fsdp={f} and ZeRO stage {self.zero} are two sharding engines: give one of them", "fsdp")
        if self.offload is Offload.OPTIMIZER:
            # torch.distributed.fsdp.CPUOffloadPolicy moves parameters, gradients and the optimizer step together
            raise FieldError(
                f"fsdp={f} offloads through CPUOffloadPolicy, which moves parameters, gradients and optimizer "
                "states together: use offload=all, not optimizer",
                "fsdp",
                "offload",
            )
        if self.quant is not Quant.NONE:
            # bitsandbytes' Params4bit/Int8Params carry quant_state outside the tensor and are not DTensor-aware:
            # fully_shard cannot shard them (torchtune's QLoRA+FSDP2 uses its own NF4Tensor, not bitsandbytes)
            raise FieldError(
                f"quant={self.quant.value} cannot be sharded by fsdp={f} (bitsandbytes weights)", "quant", "fsdp"
            )
        if self.optim is not Optim.ADAMW:
            raise FieldError(
                f"optim={self.optim.value} is run by Trainer alone; fsdp={f} steps torch AdamW", "optim", "fsdp"
            )

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    def runs_in(self, precision: Precision) -> bool:
        """Whether this combination runs in `precision` (what `plan` enumerates): the attention kernel takes its
        dtype, a bf16 QLoRA recipe gets bf16-true, and bf16-true runs without DeepSpeed (which keeps fp32 master
        weights; policy.storage says so to a user who asks for it)."""
        return (
            self.attn.runs_in(precision)
            and (self.quant is Quant.NONE or self.qlora_recipe.runs_in(precision))
            and not (precision is Precision.BF16_TRUE and self.uses_deepspeed)
        )

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero > 0

    @property
    def uses_fsdp(self) -> bool:
        return self.fsdp is not Fsdp.NONE

    @property
    def engine(self) -> Engine:
        return Engine.FSDP if self.uses_fsdp else Engine.ZERO if self.zero else Engine.DDP

    @property
    def sharding(self) -> str:
        """The engine that shards the states: ddp, deepspeed-zero-N or fsdp2-full / fsdp2-grad-op."""
        if self.uses_fsdp:
            return f"fsdp2-{self.fsdp.value}"
        return f"deepspeed-zero-{self.zero}" if self.zero else "ddp"

    def label(self) -> str:
        """Short human label, e.g. 'LoRA r16 + ZeRO-2 + GC + flash'."""
        parts = [f"{'DoRA' if self.dora else 'LoRA'} r{self.lora_r}" if self.lora else "full"]
        if self.rslora:
            parts.append("rsLoRA")
        if self.lora_dropout:
            parts.append(f"dropout {self.lora_dropout:g}")
        if self.zero:
            parts.append(f"ZeRO-{self.zero}")
        if self.uses_fsdp:
            parts.append(f"FSDP2-{self.fsdp.value}")
        if self.offload is not Offload.NONE:
            parts.append(f"offload {self.offload.value}")
        if self.gc:
            parts.append("GC")
        if self.quant is not Quant.NONE:
            recipe = "" if self.qlora_recipe is QloraRecipe.PEFT else f" ({self.qlora_recipe.value})"
            parts.append(self.quant.value.upper() + recipe)
        if self.adapter_dtype is not AdapterDtype.FP32:
            parts.append(f"adapters {self.adapter_dtype.value} dtype")
        if self.optim is not Optim.ADAMW:
            parts.append(self.optim.value)
        parts.append(self.attn.value)
        return " + ".join(parts)

    def key(self) -> dict:
        """The stable JSON form (documented schema: gc, lora_r, zero, fsdp, offload, attn, lora_targets, quant,
        optim, dora, rslora, qlora_recipe, adapter_dtype, lora_dropout)."""
        return {
            "gc": self.gc,
            "lora_r": self.lora_r,
            "zero": self.zero,
            "fsdp": self.fsdp.value,
            "offload": self.offload.value,
            "attn": self.attn.value,
            "lora_targets": list(self.lora_targets) if self.lora_targets else None,
            "quant": self.quant.value,
            "optim": self.optim.value,
            "dora": self.dora,
            "rslora": self.rslora,
            "qlora_recipe": self.qlora_recipe.value,
            "adapter_dtype": self.adapter_dtype.value,
            "lora_dropout": self.lora_dropout,
        }
