"""Quantized base models (QLoRA and LLM.int8()) built as PEFT/TRL build them, for `ftopt train` and the tracer.

The recipe (QLoRA, arXiv 2305.14314, and PEFT's `prepare_model_for_kbit_training`):
  * every decoder linear becomes a bitsandbytes `Linear4bit` (NF4 or FP4, 64-weight blocks, double-quantized
    absmax, compute dtype from the precision) or `Linear8bitLt` (int8 rows + fp32 row scales, threshold 6.0, the
    BitsAndBytesConfig default); the LM head stays unquantized (transformers' `get_keys_to_not_convert` keeps the
    output embedding);
  * `prepare_model_for_kbit_training` then freezes everything and casts every remaining 16-bit parameter
    (embeddings, LM head, norms, biases) to fp32;
  * LoRA adapters (added afterwards by `modeling.apply_optimizations`) are fp32.

A model loaded from disk goes through `from_pretrained(quantization_config=BitsAndBytesConfig(...))`; a random-init
model is quantized module by module with the same bitsandbytes classes (`quantize_linears`), which is what
transformers' bitsandbytes integration does while loading. bitsandbytes is imported lazily (optional backend).
"""
from __future__ import annotations

import torch

from ftopt.errors import FtoptError
from ftopt.spec import Combination, Precision, Quant

INT8_THRESHOLD = 6.0  # BitsAndBytesConfig.llm_int8_threshold default (outlier columns kept in 16 bits)


def compute_dtype(precision: Precision) -> torch.dtype:
    """bnb_4bit_compute_dtype from the run's precision: bf16-mixed -> bf16, fp16-mixed -> fp16, fp32 -> fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision.compute_dtype]


def require_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise FtoptError("--quant and 8-bit/paged optimizers need bitsandbytes (pip install 'bitsandbytes>=0.45').")


def bnb_config(combo: Combination, precision: Precision):
    """The transformers BitsAndBytesConfig of the QLoRA recipe (double quant on for 4-bit)."""
    from transformers import BitsAndBytesConfig

    if combo.quant is Quant.INT8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=combo.quant.value,
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype(precision))


def _quantized_linear(lin: torch.nn.Linear, combo: Combination, precision: Precision):
    import bitsandbytes as bnb

    dev = lin.weight.device
    has_bias = lin.bias is not None
    if combo.quant is Quant.INT8:
        new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False,
                                  threshold=INT8_THRESHOLD, device="meta")
        weight = bnb.nn.Int8Params(lin.weight.data.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=has_bias,
                                compute_dtype=compute_dtype(precision), compress_statistics=True,
                                quant_type=combo.quant.value, device="meta")
        weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, compress_statistics=True,
                                   quant_type=combo.quant.value)
    new.weight = weight.to(dev) if dev.type != "meta" else weight  # .to() quantizes (Params4bit/Int8Params)
    if has_bias:
        new.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
    return new


def quantize_linears(model, combo: Combination, precision: Precision) -> None:
    """Replace every decoder nn.Linear (not the LM head) by its bitsandbytes module, in place."""
    head = model.get_output_embeddings()
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is torch.nn.Linear and child is not head:
                setattr(mod, child_name, _quantized_linear(child, combo, precision))
    flag = "is_loaded_in_8bit" if combo.quant is Quant.INT8 else "is_loaded_in_4bit"
    setattr(model, flag, True)


def prepare_kbit(model):
    """PEFT's prepare_model_for_kbit_training without its GC (modeling applies ours, non-reentrant): freezes the
    base and casts every non-quantized 16-bit parameter to fp32."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def count_quantized(model) -> int:
    """How many bitsandbytes quantized linears the model holds (a check that quantization really happened)."""
    import bitsandbytes as bnb

    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())
