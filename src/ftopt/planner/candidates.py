"""The combinations a plan predicts: every valid one the hardware and the precision run, as the flags restrict them."""

from __future__ import annotations

import itertools

from ftopt.spec import (
    AdapterDtype,
    Attention,
    Combination,
    Engine,
    Fsdp,
    HardwareSpec,
    Offload,
    Optim,
    QloraRecipe,
    Quant,
    TrainingSetup,
)
from ftopt.spec.errors import FtoptError

DEFAULT_LORA_R = 16
# ZeRO stage and offload pairs DeepSpeed accepts (offload needs a stage; parameter offload needs stage 3).
ZERO_OFFLOAD = [
    (0, Offload.NONE),
    (1, Offload.NONE),
    (1, Offload.OPTIMIZER),
    (2, Offload.NONE),
    (2, Offload.OPTIMIZER),
    (3, Offload.NONE),
    (3, Offload.OPTIMIZER),
    (3, Offload.ALL),
]
# FSDP2 (reshard after forward or not) with and without CPUOffloadPolicy, beside the ZeRO pairs (the bitsandbytes
# bases and optimizers run without it: Combination's validator).
FSDP_OFFLOAD = [(f, off) for f in (Fsdp.FULL, Fsdp.GRAD_OP) for off in (Offload.NONE, Offload.ALL)]
SHARDING = [(z, Fsdp.NONE, off) for z, off in ZERO_OFFLOAD] + [(0, f, off) for f, off in FSDP_OFFLOAD]
# Quantized LoRA bases the plan tries. FP4 is left out: the same bytes and time as NF4, and lower quality (QLoRA
# paper, Table 2/Fig. 3); `estimate --quant fp4` still predicts it.
PLAN_QUANTS = (Quant.NF4, Quant.INT8)


def combinations(
    hw: HardwareSpec,
    lora_r: int = DEFAULT_LORA_R,
    full_only: bool = False,
    lora_targets: tuple[str, ...] | None = None,
    quants: tuple[Quant, ...] | None = None,
    optims: tuple[Optim, ...] | None = None,
    recipes: tuple[QloraRecipe, ...] = (QloraRecipe.PEFT,),
    dora: bool = False,
    rslora: bool = False,
    adapter_dtype: AdapterDtype | None = None,
    lora_dropout: float | None = None,
) -> list[Combination]:
    """GC on/off x full/LoRA x (ZeRO stage, offload) x every attention kernel the hardware runs (eager and SDPA
    everywhere, flash on GPUs of compute capability 8.0+), plus for LoRA each quantized base (ZeRO 0-2) in each
    QLoRA recipe of `recipes` and, without DeepSpeed, each bitsandbytes optimizer. `quants`/`optims` restrict the
    enumeration (None = PLAN_QUANTS and every optimizer). `dora`/`rslora`: the LoRA candidates are that variant
    (DoRA: ZeRO 0-2, no FSDP). `adapter_dtype`: the LoRA candidates' adapter dtype (None = PEFT's default); a
    quantized base keeps fp32 adapters (Combination's rule). `lora_dropout`: the LoRA candidates' adapter dropout
    (None = Combination's default)."""
    attns = [a for a in Attention if a in hw.attention_kernels]
    ranks = [0] if full_only else [0, lora_r]
    quant_set = (Quant.NONE, *PLAN_QUANTS) if quants is None else quants
    optim_set = tuple(Optim) if optims is None else optims
    dropout = {} if lora_dropout is None else {"lora_dropout": lora_dropout}
    out = []
    for gc, r, quant, recipe, (zero, fsdp, off), optim, attn in itertools.product(
        [False, True], ranks, quant_set, recipes, SHARDING, optim_set, attns
    ):
        sharded = zero or fsdp is not Fsdp.NONE
        if (
            (quant is not Quant.NONE and (not r or zero == 3 or fsdp is not Fsdp.NONE))
            or (optim is not Optim.ADAMW and sharded)
            or (recipe is not QloraRecipe.PEFT and quant is Quant.NONE)
            or (dora and r and (zero == 3 or fsdp is not Fsdp.NONE))
        ):
            continue  # combinations Combination's validator rejects: not enumerated
        out.append(
            Combination(
                gc=gc,
                lora_r=r,
                lora_targets=lora_targets if r else None,
                dora=dora and bool(r),
                rslora=rslora and bool(r),
                **(dropout if r else {}),
                adapter_dtype=adapter_dtype if r and adapter_dtype and quant is Quant.NONE else AdapterDtype.FP32,
                zero=zero,
                fsdp=fsdp,
                offload=off,
                attn=attn,
                quant=quant,
                qlora_recipe=recipe,
                optim=optim,
            )
        )
    return out


def _recipes(setup: TrainingSetup, given: tuple[QloraRecipe, ...] | None) -> tuple[QloraRecipe, ...]:
    """The QLoRA recipes the plan tries: the given ones (each must run in the precision), else every one that does
    (torchtune's and LitGPT's bf16 bases only under bf16-true, QloraRecipe.runs_in)."""
    if given is None:
        return tuple(r for r in QloraRecipe if r.runs_in(setup.precision))
    bad = [r.value for r in given if not r.runs_in(setup.precision)]
    if bad:
        raise FtoptError(
            f"--qlora-recipe {','.join(bad)} keeps the base in bf16 without autocast and needs --precision "
            f"bf16-true, got {setup.precision.value}."
        )
    return given


def plan_combinations(
    hw: HardwareSpec,
    setup: TrainingSetup,
    *,
    full_only: bool,
    lora_r: int,
    lora_targets: tuple[str, ...] | None,
    adapter_dtype: AdapterDtype | None,
    quants: tuple[Quant, ...] | None,
    optims: tuple[Optim, ...] | None,
    engines: tuple[Engine, ...] | None,
    recipes: tuple[QloraRecipe, ...] | None,
    dora: bool,
    rslora: bool,
    lora_dropout: float | None = None,
) -> list[Combination]:
    """The combinations the plan predicts: only what runs in the precision (Combination.runs_in: flash-attn rejects
    fp32, bf16-true has no DeepSpeed), and of the engines `engines` names (plan --engine; None = all). An empty
    result is an error that names the flags that emptied it."""
    if lora_r <= 0:
        raise FtoptError(f"--lora-r for the plan's LoRA candidates must be positive, got {lora_r}.")
    if full_only:
        _lora_levers_unused(lora_r, lora_targets, adapter_dtype, recipes, dora, rslora)
    chosen = _recipes(setup, recipes)
    if lora_dropout is not None:  # refused when out of range even where no LoRA candidate is planned (--full-only)
        Combination(lora_r=lora_r, lora_dropout=lora_dropout)
    variant = (dora, rslora, adapter_dtype, lora_dropout)
    combos = [
        c
        for c in combinations(hw, lora_r, full_only, lora_targets, quants, optims, chosen, *variant)
        if c.runs_in(setup.precision) and (engines is None or c.engine in engines)
    ]
    if not combos:
        raise FtoptError(_why_none(full_only, quants, recipes, optims, engines))
    return combos


def _lora_levers_unused(lora_r, lora_targets, adapter_dtype, recipes, dora, rslora) -> None:
    """--full-only plans no LoRA candidate: a LoRA lever given with it would be dropped without a word."""
    given = [
        flag
        for flag, on in (
            (f"--lora-r {lora_r}", lora_r != DEFAULT_LORA_R),
            ("--lora-targets", lora_targets is not None),
            ("--adapter-dtype", adapter_dtype is not None),
            ("--qlora-recipe", recipes is not None),
            ("--dora", dora),
            ("--rslora", rslora),
        )
        if on
    ]
    if given:
        raise FtoptError(
            f"{', '.join(given)} shape(s) the LoRA candidates, which --full-only leaves out; drop one or the other."
        )


def _why_none(full_only: bool, quants, recipes, optims, engines) -> str:
    """The sentence for flags that together leave no combination, naming the ones given."""
    listed = lambda xs: ",".join(x.value for x in xs)  # noqa: E731 - one-line formatter
    if full_only and quants is not None and Quant.NONE not in quants:
        return (
            f"No combination to plan: quantized bases need LoRA, so --full-only with --quant {listed(quants)} leaves "
            "none; add 'none' to --quant or drop --full-only."
        )
    if recipes is not None and quants is not None and Quant.NONE in quants and len(quants) == 1:
        return (
            f"No combination to plan: --qlora-recipe {listed(recipes)} says how a quantized base keeps its other "
            "parameters, and --quant none plans no quantized base; add nf4 or int8 to --quant or drop --qlora-recipe."
        )
    given = [f"--{n} {listed(v)}" for n, v in (("quant", quants), ("optim", optims), ("engine", engines)) if v]
    return f"No combination to plan with {' '.join(given) or 'these flags'}; widen one of them."
