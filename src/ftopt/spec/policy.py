"""How a run stores and adapts the model: bytes per parameter for each engine and precision, and which linears LoRA
wraps. One policy, read by the estimators (estimate/) and by the model builder (model/build.py), so the memory the
planner predicts is the memory of the model the trainer builds.

Sources: [ZeRO] Rajbhandari et al. 2020 (2 + 2 + K bytes per parameter, K = 12 for fp32 master + Adam);
[HF] transformers 5 Trainer (fp32 weights under autocast for mixed precision); [DS] DeepSpeed 0.19 (16-bit module,
fp32 partition copy kept by the ZeRO optimizer); [PEFT] prepare_model_for_kbit_training (non-quantized parameters
of a quantized base cast to fp32); [PEFT-dtype] peft 0.21 get_peft_model(autocast_adapter_dtype=True, the default)
upcasts bf16/fp16 adapter weights to fp32 (tuners_utils.cast_adapter_dtype); [bnb] bitsandbytes Linear4bit.forward
casts its output back to the input dtype; [recipes] torchtune's and LitGPT's QLoRA keep everything but the quantized
linears in bf16 (spec.QloraRecipe).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftopt.spec import ALL_LINEAR, AdapterDtype, Combination, Linear, ModelSpec, Precision, Quant
from ftopt.spec.errors import FtoptError

# The LoRA alpha of every ftopt run (the model builder and `plan --export` read it here). ftopt's choice alpha = 2r
# keeps the update scale alpha/r at 2 whatever the rank (the LoRA paper, arXiv 2106.09685 section 4.1, scales by
# alpha/r so that changing r needs no new learning rate). The adapter dropout is a lever: Combination.lora_dropout.
LORA_ALPHA_PER_RANK = 2


def lora_alpha(rank: int) -> int:
    return LORA_ALPHA_PER_RANK * rank


def compute_bytes(precision: Precision) -> int:
    """Bytes of the precision's compute dtype: what a quantized matmul dequantizes its weight to [bnb]."""
    return 4 if precision.compute_dtype == "fp32" else 2


def quantizes_head(model: ModelSpec, combo: Combination) -> bool:
    """Whether the LM head is quantized too (LitGPT's recipe); a head tied to the input embedding shares its weight
    with the lookup table, which stays 16-bit, so it is not."""
    return combo.quant is not Quant.NONE and combo.qlora_recipe.quantizes_head and not model.tie_embeddings


def dora_magnitude_params(model: ModelSpec, combo: Combination) -> int:
    """DoRA's trained magnitude: one value per output feature of every wrapped linear (peft tuners/lora/dora.py
    DoraLinearLayer.update_layer: nn.Parameter(weight_norm), shape (out_features,))."""
    if not combo.dora:
        return 0
    return model.num_layers * sum(lin.out_features for lin in wrapped_linears(model, combo))


@dataclass(frozen=True)
class Storage:
    """How the engine stores each parameter, in bytes per parameter (before ZeRO partitioning)."""

    trainable_weight: int
    frozen_weight: int
    grad: int
    master: int  # fp32 copy kept by the optimizer (DeepSpeed 16-bit training)
    optim: int  # AdamW exp_avg + exp_avg_sq
    autocast: bool  # forward runs under torch.autocast (Trainer with fp32 weights and bf16/fp16 compute)
    act_bytes: int  # dtype of matmul outputs
    resid_bytes: int  # dtype of the residual stream (= embedding weight dtype)
    frozen_out_bytes: int = 0  # dtype of a frozen linear's output; 0 = act_bytes (differs for quantized bases)

    @property
    def frozen_out(self) -> int:
        return self.frozen_out_bytes or self.act_bytes


def storage(precision: Precision, combo: Combination) -> Storage:
    """Bytes per parameter as each engine really stores them.

    Hugging Face Trainer alone: mixed precision keeps fp32 weights and runs autocast [HF]; for LoRA, ftopt loads
    the frozen base in 16 bits (it needs no fp32 master) and PEFT keeps the adapters in fp32 [PEFT-dtype].
    DeepSpeed: 16-bit weights and grads plus K=12 bytes of fp32 master + Adam states per trainable parameter [ZeRO];
    the engine casts the whole module, adapters included, to 16 bits [DS].
    bf16-true (Trainer only): everything bf16, AdamW states in the parameter dtype (torch.optim.AdamW), except
    LoRA adapters, which PEFT keeps in fp32 [PEFT-dtype] with their fp32 gradients and AdamW states.
    Quantized base (QLoRA, Trainer): `frozen_weight` is the storage of the base's non-quantized parameters, fp32
    after prepare_model_for_kbit_training [PEFT] (16-bit under DeepSpeed, which casts the module); the residual
    stream is fp32 (fp32 embeddings) and the quantized linears return fp32 (their input's dtype) [bnb]. Under
    bf16-true the same recipe runs without autocast: fp32 everywhere but the quantized matmuls, which compute in
    bf16. torchtune's and LitGPT's recipes keep all of it in bf16 under bf16-true [recipes].
    `combo.adapter_dtype` BASE (autocast_adapter_dtype=False) keeps the adapters in the base's dtype.
    """
    _check_adapter_dtype(precision, combo)
    if combo.quant is not Quant.NONE and not combo.qlora_recipe.runs_in(precision):
        raise FtoptError(
            f"--qlora-recipe {combo.qlora_recipe.value} keeps the base in bf16 without autocast (torchtune builds in "
            f"bf16, LitGPT refuses mixed precision with quantization), so it needs --precision bf16-true, "
            f"got {precision.value}."
        )
    if combo.quant is not Quant.NONE and combo.qlora_recipe.keeps_16bit:
        return Storage(2, 2, 2, 0, 4, autocast=False, act_bytes=2, resid_bytes=2)
    if combo.quant is not Quant.NONE and precision is Precision.BF16_TRUE:
        return Storage(4, 4, 4, 0, 8, autocast=False, act_bytes=4, resid_bytes=4)
    if combo.quant is not Quant.NONE and precision in (Precision.BF16_MIXED, Precision.FP16_MIXED):
        if combo.uses_deepspeed:
            return Storage(2, 2, 2, 4, 8, autocast=False, act_bytes=2, resid_bytes=2)
        return Storage(4, 4, 4, 0, 8, autocast=True, act_bytes=2, resid_bytes=4, frozen_out_bytes=4)
    # trainable parameters' bytes where the adapters may differ from the base: (weight, grad, AdamW states)
    fp32_adapters = combo.lora and combo.adapter_dtype is AdapterDtype.FP32
    if combo.uses_fsdp and precision in (Precision.BF16_MIXED, Precision.FP16_MIXED):
        # FSDP2 (ftopt.train.fsdp_engine): the stored dtype as for the Trainer, no autocast: MixedPrecisionPolicy
        # all-gathers the parameters in 16 bits, so activations and the residual stream are 16-bit
        w, g, o = (4, 4, 8) if fp32_adapters or not combo.lora else (2, 2, 4)
        return Storage(w, 2 if combo.lora else 4, g, 0, o, autocast=False, act_bytes=2, resid_bytes=2)
    if precision is Precision.FP32:
        # DeepSpeed's ZeRO optimizers keep an fp32 partition copy of the trainable weights whatever the model dtype
        # (stage_1_and_2.single_partition_of_fp32_groups, stage3.fp32_partitioned_groups_flat)
        return Storage(4, 4, 4, 4 if combo.uses_deepspeed else 0, 8, autocast=False, act_bytes=4, resid_bytes=4)
    if precision is Precision.BF16_TRUE:
        if combo.uses_deepspeed:
            raise FtoptError(
                "bf16-true is a Trainer-only precision: DeepSpeed always keeps fp32 master weights; "
                "use bf16-mixed with ZeRO."
            )
        w, g, o = (4, 4, 8) if fp32_adapters else (2, 2, 4)
        return Storage(w, 2, g, 0, o, autocast=False, act_bytes=2, resid_bytes=2)
    # bf16-mixed / fp16-mixed
    if combo.uses_deepspeed:
        return Storage(2, 2, 2, 4, 8, autocast=False, act_bytes=2, resid_bytes=2)
    if combo.lora:
        w, g, o = (4, 4, 8) if fp32_adapters else (2, 2, 4)
        return Storage(w, 2, g, 0, o, autocast=True, act_bytes=2, resid_bytes=2)
    return Storage(4, 4, 4, 0, 8, autocast=True, act_bytes=2, resid_bytes=4)


def _check_adapter_dtype(precision: Precision, combo: Combination) -> None:
    """fp16 adapters cannot train under fp16-mixed where torch's GradScaler scales the loss (the Trainer, ftopt's
    FSDP2 loop): it refuses fp16 gradients (torch/amp/grad_scaler.py _unscale_grads_: "Attempting to unscale FP16
    gradients."). DeepSpeed scales with its own optimizer's fp32 master copy."""
    if combo.adapter_dtype is AdapterDtype.BASE and precision is Precision.FP16_MIXED and not combo.uses_deepspeed:
        raise FtoptError(
            "--adapter-dtype base with fp16-mixed gives fp16 adapters, whose gradients torch's loss scaler "
            "refuses to unscale; use --adapter-dtype fp32 (PEFT's default) or bf16-mixed."
        )


def lora_targets(model: ModelSpec, combo: Combination) -> list[str]:
    """The decoder linears LoRA wraps: the given names, every decoder linear for 'all-linear' (PEFT's special value:
    all linears but the output layer), or by default the attention projections."""
    if not combo.lora:
        return []
    if combo.lora_targets == (ALL_LINEAR,):
        targets = model.all_linear_names()
    else:
        targets = list(combo.lora_targets) if combo.lora_targets else model.attention_linear_names()
        names = model.all_linear_names()
        missing = [t for t in targets if t not in names]
        if missing:
            raise FtoptError(
                f"LoRA target(s) {', '.join(missing)} are not linears of {model.family}; candidates: {', '.join(names)}."
            )
    _check_rank(model, combo.lora_r, _layer_linears_named(model, targets))
    return targets


def wrapped_linears(model: ModelSpec, combo: Combination) -> list[Linear]:
    """One decoder layer's linears LoRA wraps (lora_targets), in the layer's order; none without LoRA."""
    return _layer_linears_named(model, lora_targets(model, combo))


def _layer_linears_named(model: ModelSpec, names: list[str]) -> list[Linear]:
    wanted = set(names)
    return [lin for lin in model.layer_linears() if lin.name in wanted]


def _check_rank(model: ModelSpec, r: int, wrapped: list[Linear]) -> None:
    """A rank above min(in, out) of a wrapped linear adds parameters but no rank (B @ A is at most that rank): PEFT
    builds it, but no user means it, and an estimate of it is off by orders of magnitude (a typo of a few digits)."""
    narrow = min(wrapped, key=lambda x: min(x.in_features, x.out_features), default=None)
    bound = min(narrow.in_features, narrow.out_features) if narrow else r
    if r > bound:
        raise FtoptError(
            f"--lora-r {r} is larger than {bound}, the smallest dimension of the linears LoRA wraps in "
            f"{model.family} ({narrow.name} is {narrow.in_features} x {narrow.out_features}); give a rank up to "
            f"{bound}."
        )
