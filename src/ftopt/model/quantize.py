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
model is built on the meta device and materialized module by module, each linear quantized with the same
bitsandbytes classes as soon as it exists (`materialize_quantized`), which is what transformers' bitsandbytes
integration does while loading, memory included. bitsandbytes is imported lazily (optional backend).
"""

from __future__ import annotations

import torch

from ftopt.spec import Combination, Precision, Quant
from ftopt.spec.errors import FtoptError

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
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=combo.quant.value,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(precision),
    )


def _quantized_linear(lin: torch.nn.Linear, combo: Combination, precision: Precision):
    import bitsandbytes as bnb

    dev = lin.weight.device
    has_bias = lin.bias is not None
    if combo.quant is Quant.INT8:
        new = bnb.nn.Linear8bitLt(
            lin.in_features,
            lin.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=INT8_THRESHOLD,
            device="meta",
        )
        weight = bnb.nn.Int8Params(lin.weight.data.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=has_bias,
            compute_dtype=compute_dtype(precision),
            compress_statistics=True,
            quant_type=combo.quant.value,
            device="meta",
        )
        weight = bnb.nn.Params4bit(
            lin.weight.data, requires_grad=False, compress_statistics=True, quant_type=combo.quant.value
        )
    new.weight = weight.to(dev) if dev.type != "meta" else weight  # .to() quantizes (Params4bit/Int8Params)
    if has_bias:
        new.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
    return new


def _decoder_linears(model) -> list[tuple[torch.nn.Module, str]]:
    """(parent, attribute) of every decoder nn.Linear, not the LM head (transformers' get_keys_to_not_convert keeps
    the output embedding). Parents only: holding the linears themselves would keep each replaced full-precision
    weight alive until the whole model is quantized."""
    head = model.get_output_embeddings()
    return [
        (mod, name)
        for mod in model.modules()
        for name, child in mod.named_children()
        if type(child) is torch.nn.Linear and child is not head
    ]


def _mark_quantized(model, combo: Combination) -> None:
    setattr(model, "is_loaded_in_8bit" if combo.quant is Quant.INT8 else "is_loaded_in_4bit", True)


def quantize_linears(model, combo: Combination, precision: Precision) -> None:
    """Replace every decoder nn.Linear (not the LM head) by its bitsandbytes module, in place."""
    for mod, name in _decoder_linears(model):
        setattr(mod, name, _quantized_linear(getattr(mod, name), combo, precision))
    _mark_quantized(model, combo)


def materialize_quantized(model, device: torch.device, combo: Combination, precision: Precision) -> None:
    """Random-init a model built on the meta device onto `device` one module at a time, quantizing each decoder
    linear as soon as its weight exists, so the full-precision base never exists as a whole. This is the memory
    profile of the real recipe, where transformers quantizes a checkpoint tensor by tensor while loading it
    (modeling_utils.PreTrainedModel.from_pretrained: meta init, then the bitsandbytes quantizer per parameter).
    Building the base in full precision first (from_config on the device) would peak at the whole unquantized model
    plus, for a tied LM head, the head's own weight before tie_weights drops it (seen on CPU: 513 MiB for a 155 MiB
    NF4 qwen2 of 110M parameters, above its training peak). Initial values come from the model's own
    `_init_weights` (what transformers runs after a meta init, rotary inv_freq buffers included); ties are kept."""
    linears = {id(getattr(mod, name)): (mod, name) for mod, name in _decoder_linears(model)}
    # meta tensor id -> (that meta tensor, kept so its id stays unique; its real tensor): a tied weight is made once
    made: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for mod in list(model.modules()):  # meta modules: holding them costs nothing
        meta_weight = getattr(mod, "weight", None)
        for table in (mod._parameters, mod._buffers):
            for key, t in table.items():
                if t is not None and t.device.type == "meta":
                    if id(t) not in made:
                        real = torch.empty_like(t, device=device)
                        made[id(t)] = (
                            t,
                            torch.nn.Parameter(real, t.requires_grad) if table is mod._parameters else real,
                        )
                    table[key] = made[id(t)][1]
        model._init_weights(mod)  # no_grad inside (transformers)
        mod._is_hf_initialized = True
        if id(mod) in linears:
            parent, name = linears[id(mod)]
            setattr(parent, name, _quantized_linear(mod, combo, precision))
            made[id(meta_weight)] = (meta_weight, None)
            mod.weight = None  # the full-precision weight dies here, one linear at a time
    _mark_quantized(model, combo)


def prepare_kbit(model):
    """PEFT's prepare_model_for_kbit_training without its GC (modeling applies ours, non-reentrant): freezes the
    base and casts every non-quantized 16-bit parameter to fp32."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    keep_cpu_inference_unpacked(model)
    return model


# bitsandbytes 0.50.2's packed CPU kernel (functional._convert_weight_packed_for_cpu) tiles the weight in blocks of
# 32 output rows and reshapes absmax to [out, in / blocksize]: it needs out % 32 == 0 and in % blocksize == 0.
CPU_PACK_ROWS = 32


def keep_cpu_inference_unpacked(model) -> int:
    """Turn off bitsandbytes' packed CPU inference path for the NF4/FP4 linears whose shape it cannot pack.

    On CPUs with AVX512-BF16, Linear4bit.forward repacks its weight the first time it runs without grad in eval mode
    (generation for the quality metrics). For a linear whose in_features is not a multiple of the quantization
    block (a 352-wide MLP with 64-weight blocks) the repack raises "shape '[128, 5]' is invalid for input of size
    704" after training has finished. The unpacked kernel computes the same product; only speed differs.
    Returns how many linears were switched."""
    import bitsandbytes as bnb

    switched = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and getattr(m, "support_avx512bf16_for_cpu", False):
            block = getattr(m.weight.quant_state, "blocksize", None) if m.weight.quant_state is not None else None
            packable = block and m.in_features % block == 0 and m.out_features % CPU_PACK_ROWS == 0
            if not packable:
                m.support_avx512bf16_for_cpu = False
                switched += 1
    return switched


# ---- storage-equivalent stand-ins for the traced estimator ------------------------------------------------------
# bitsandbytes' ops carry fake implementations (bitsandbytes/_ops.py register_fake), but its parameter classes
# (Params4bit, Int8Params) are tensor subclasses that cannot wrap a FakeTensor ("Creating a new Tensor subclass
# Params4bit but the raw Tensor object is already associated to a python object of type FakeTensor"). Under the
# trace each quantized linear is therefore a stand-in with the same storage and the same tensor life cycle.
class _DequantMatmul(torch.autograd.Function):
    """y = x @ dequant(W)^T with the weight dequantized for the duration of the op, forward and backward, and
    nothing saved but the (already resident) quantized weight: what bitsandbytes' MatMul4Bit does."""

    @staticmethod
    def forward(ctx, x, packed, out_features, compute_dtype):
        ctx.shape, ctx.compute_dtype = (out_features, x.shape[-1]), compute_dtype
        w = torch.empty(ctx.shape, dtype=compute_dtype, device=x.device)  # the dequantized weight (temporary)
        return torch.nn.functional.linear(x.to(compute_dtype), w)

    @staticmethod
    def backward(ctx, grad):
        w = torch.empty(ctx.shape, dtype=ctx.compute_dtype, device=grad.device)
        return grad.to(ctx.compute_dtype) @ w, None, None, None


class QuantizedLinearStandIn(torch.nn.Linear):
    """A frozen quantized linear for the tracer: a uint8 weight of the quantized size (storage_bytes), output
    cast back to the input dtype (Linear4bit.forward). Subclasses nn.Linear so PEFT wraps it with LoRA."""

    def __init__(self, lin: torch.nn.Linear, storage_bytes: int, compute: torch.dtype):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features, self.compute_dtype = lin.in_features, lin.out_features, compute
        self.weight = torch.nn.Parameter(
            torch.empty(storage_bytes, dtype=torch.uint8, device=lin.weight.device), requires_grad=False
        )
        self.bias = None if lin.bias is None else torch.nn.Parameter(lin.bias.data, requires_grad=False)

    def forward(self, x):
        out = _DequantMatmul.apply(x, self.weight, self.out_features, self.compute_dtype).to(x.dtype)
        return out + self.bias.to(out.dtype) if self.bias is not None else out


def stand_in_linears(model, combo: Combination, precision: Precision, storage_bytes) -> None:
    """Replace every decoder nn.Linear (not the LM head) by a QuantizedLinearStandIn of `storage_bytes(in, out)`."""
    head = model.get_output_embeddings()
    compute = torch.float16 if combo.quant is Quant.INT8 else compute_dtype(precision)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is torch.nn.Linear and child is not head:
                size = storage_bytes(combo.quant, child.in_features, child.out_features)
                setattr(mod, child_name, QuantizedLinearStandIn(child, size, compute))
