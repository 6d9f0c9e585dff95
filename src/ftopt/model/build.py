"""Build the model exactly as a run uses it: transformers model + PEFT LoRA + gradient checkpointing + attention.

One function serves `ftopt train` (real weights or random init) and the traced estimator (meta device, then fake
tensors), so the estimator measures the very module tree the trainer runs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ftopt.model import quantize
from ftopt.spec import AdapterDtype, Attention, Combination, ModelSpec, Precision, Quant
from ftopt.spec.errors import FtoptError
from ftopt.spec.policy import lora_alpha, lora_targets, quantizes_head, storage


def attn_implementation(attn: Attention, device_type: str) -> str:
    """The transformers attention implementation for `attn` on this device.

    flash_attention_2 needs a CUDA GPU and the flash-attn package; elsewhere we fail with a clear message, except
    on the meta/fake path of the estimator, which uses sdpa: it saves the same tensors (q, k, v, out, log-sum-exp).
    """
    if attn is not Attention.FLASH:
        return attn.hf_name
    if device_type == "meta":
        return "sdpa"
    if not torch.cuda.is_available():
        raise FtoptError("--attn flash needs a CUDA GPU (and the flash-attn package); on this machine use --attn sdpa.")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        raise FtoptError("--attn flash needs the flash-attn package (pip install flash-attn); use --attn sdpa instead.")
    return "flash_attention_2"


def hf_config(spec: ModelSpec, num_layers: int | None = None, attn: str = "sdpa"):
    """A transformers config object from the spec's config.json, optionally with fewer layers (for tracing)."""
    from transformers import AutoConfig

    # a deep copy: transformers completes nested entries in place (rope_scaling gains rope_theta), which would
    # change the caller's spec, and with it every later trace's cache key (ftopt.estimate.trace_cache)
    kw: dict[str, Any] = copy.deepcopy(
        {k: v for k, v in spec.hf_config.items() if k not in ("model_type", "architectures", "auto_map")}
    )
    if num_layers is not None:
        kw["n_layer" if spec.family == "gpt2" else "num_hidden_layers"] = num_layers
    cfg = AutoConfig.for_model(spec.family, **kw)
    cfg._attn_implementation = attn
    cfg.use_cache = False  # training: no KV cache
    return cfg


def _remote_config(code_dir: str, num_layers: int | None, attn: str):
    """The config of a model that brings its own code (auto_map), read with that code (--trust-remote-code)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(code_dir, trust_remote_code=True)
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
    cfg._attn_implementation = attn
    cfg.use_cache = False
    return cfg


def model_dtype(precision: Precision, combo: Combination) -> torch.dtype:
    """Dtype the model is loaded in (see policy.storage for the reasoning per engine)."""
    st = storage(precision, combo)
    if (st.frozen_weight if combo.lora else st.trainable_weight) == 4:
        return torch.float32
    # 16-bit storage is the compute dtype: fp16 on GPUs without bf16 (V100, T4), where a bf16 base cannot run
    return torch.float16 if precision is Precision.FP16_MIXED else torch.bfloat16


def apply_optimizations(model, spec: ModelSpec, combo: Combination):
    """LoRA (PEFT) and gradient checkpointing on a built causal-LM; returns the model to train."""
    if combo.lora:
        from peft import LoraConfig, get_peft_model

        targets = lora_targets(spec, combo)
        cfg = LoraConfig(
            r=combo.lora_r,
            lora_alpha=lora_alpha(combo.lora_r),
            lora_dropout=combo.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
            use_dora=combo.dora,
            use_rslora=combo.rslora,
        )
        # PEFT keeps the adapters in fp32 unless told otherwise (Combination.adapter_dtype)
        model = get_peft_model(model, cfg, autocast_adapter_dtype=combo.adapter_dtype is AdapterDtype.FP32)
    if combo.gc:
        base = model.get_base_model() if combo.lora else model
        # non-reentrant checkpointing (transformers' default): each layer keeps its input only
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if combo.lora:
            base.enable_input_require_grads()
    return model


def _quantize_while_building(
    combo: Combination, weights_dir: str | None, dev: torch.device, code_dir: str | None
) -> bool:
    """A random-init quantized base is built on the meta device and quantized module by module as it is
    materialized (quantize.materialize_quantized), as transformers does while loading a checkpoint; the tracer
    (meta device) quantizes with its stand-ins afterwards, and a checkpoint comes back quantized from loading.
    Remote code is built on the device and quantized afterwards: its `_init_weights` need not restore the
    non-persistent buffers that a meta build leaves empty."""
    return combo.quant is not Quant.NONE and weights_dir is None and dev.type != "meta" and code_dir is None


def build_base(
    spec: ModelSpec,
    combo: Combination,
    precision: Precision,
    *,
    device: str | torch.device = "cpu",
    num_layers: int | None = None,
    weights_dir: str | None = None,
    seed: int = 0,
    code_dir: str | None = None,
):
    """The transformers model in the run's dtype and attention, before quantization, LoRA and GC (a model loaded
    from `weights_dir` with a quantized base comes back quantized: transformers quantizes while loading).
    `code_dir`, given only with --trust-remote-code: the folder whose config maps the model classes to its own
    Python code (auto_map); that code builds the model. Otherwise transformers' own class of the family does."""
    from transformers import AutoModelForCausalLM

    dev = torch.device(device)
    attn = attn_implementation(combo.attn, dev.type)
    dtype = model_dtype(precision, combo)
    if combo.quant is not Quant.NONE:
        quantize.require_bitsandbytes()
    try:
        if weights_dir is not None:
            extra = (
                {"quantization_config": quantize.bnb_config(combo, precision, quantizes_head(spec, combo))}
                if combo.quant is not Quant.NONE
                else {}
            )
            model = AutoModelForCausalLM.from_pretrained(
                weights_dir,
                dtype=dtype,
                attn_implementation=attn,
                trust_remote_code=code_dir is not None,
                use_safetensors=True,
                **extra,
            )
        else:
            cfg = hf_config(spec, num_layers, attn) if code_dir is None else _remote_config(code_dir, num_layers, attn)
            torch.manual_seed(seed)
            meta_first = _quantize_while_building(combo, weights_dir, dev, code_dir)
            with torch.device("meta") if meta_first else dev:
                model = AutoModelForCausalLM.from_config(
                    cfg, dtype=dtype, attn_implementation=attn, trust_remote_code=code_dir is not None
                )
            if meta_first:
                quantize.materialize_quantized(model, dev, combo, precision)
    except ValueError as e:
        if "attention implementation" not in str(e):
            raise
        raise FtoptError(
            f"{spec.family} does not support --attn {combo.attn.value} in this transformers version; use --attn eager."
        ) from None
    model.config.use_cache = False
    return model


def finish_model(
    model,
    spec: ModelSpec,
    combo: Combination,
    precision: Precision,
    quantized_already: bool = False,
    quantize_linears=quantize.quantize_linears,
):
    """Quantize the base (QLoRA recipe: bitsandbytes linears, then PEFT's prepare_model_for_kbit_training where the
    recipe runs it), then LoRA and GC; the model in training mode. The tracer passes its storage-equivalent
    `quantize_linears`."""
    recipe = combo.qlora_recipe
    if combo.quant is not Quant.NONE:
        if not quantized_already:
            quantize_linears(model, combo, precision)
        if recipe.keeps_16bit:
            quantize.keep_cpu_inference_unpacked(model)
        else:
            model = quantize.prepare_kbit(model)
    model = apply_optimizations(model, spec, combo)
    if combo.quant is not Quant.NONE and recipe.keeps_16bit:
        # torchtune and LitGPT build the adapters in the model's bf16 (set_default_dtype / the precision plugin's
        # init context); PEFT makes them fp32 beside a bitsandbytes base, whose uint8 weight dtype it does not copy
        _trainable_to(model, model_dtype(precision, combo))
    model.train()
    return model


def _trainable_to(model, dtype: torch.dtype) -> None:
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def build_model(
    spec: ModelSpec,
    combo: Combination,
    precision: Precision,
    *,
    device: str | torch.device = "cpu",
    num_layers: int | None = None,
    weights_dir: str | None = None,
    seed: int = 0,
    quantize_linears=quantize.quantize_linears,
    code_dir: str | None = None,
):
    """Random-init (or load `weights_dir`) the model with the run's dtype, attention, quantization, LoRA and GC
    (`code_dir`: see build_base)."""
    model = build_base(
        spec,
        combo,
        precision,
        device=device,
        num_layers=num_layers,
        weights_dir=weights_dir,
        seed=seed,
        code_dir=code_dir,
    )
    quantized = weights_dir is not None or _quantize_while_building(combo, weights_dir, torch.device(device), code_dir)
    return finish_model(model, spec, combo, precision, quantized_already=quantized, quantize_linears=quantize_linears)
