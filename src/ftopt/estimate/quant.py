"""Analytic formulas for quantized bases (QLoRA NF4/FP4, LLM.int8()) and bitsandbytes 8-bit/paged optimizers.

Bytes, per GPU, before ZeRO partitioning. Sources:
  [QLoRA]  Dettmers et al. 2023, arXiv 2305.14314, sec. 3: NF4 with 64-weight blocks; double quantization stores
           the fp32 absmax of each block as 8 bits with one fp32 second-level constant per 256 blocks:
           4 + 8/64 + 32/(64*256) = 4.127 bits per weight (vs 4.5 without it).
  [bnb-4bit] bitsandbytes 0.50 nn/modules.py Params4bit (blocksize 64, packed uint8 with two weights per byte),
           functional.quantize_4bit (absmax fp32 per block; compress_statistics: quantize_blockwise of the absmax in
           256-blocks, fp32 absmax per group, fp32 offset); backends/default/ops.py _gemm_4bit_default_impl: every
           4-bit matmul first dequantizes the absmax to fp32 and the weight to the input dtype, forward and backward.
  [int8]   Dettmers et al. 2022, arXiv 2208.07339 (LLM.int8()); bitsandbytes Int8Params: int8 weight (1 B/weight)
           plus one fp32 scale per output row (SCB).
  [8bit-opt] Dettmers et al. 2022, arXiv 2110.02861: block-wise 8-bit Adam states. bitsandbytes optim/optimizer.py
           Optimizer2State.init_state: two uint8 states plus one fp32 absmax per 256-element block each; tensors
           below min_8bit_size = 4096 elements keep fp32 states; transformers Trainer.create_optimizer registers
           every nn.Embedding weight for 32-bit states (GlobalOptimManager override).
  [bnb-cpu] bitsandbytes 0.50 backends/cpu/ops.py: the CPU optimizer kernels are torch code that materialise,
           per parameter tensor, fp32 copies of both 8-bit states, the scaled gradient, sqrt(v) and the denominator
           (5 x 4 bytes per element at once), and for 32-bit states the scaled gradient, sqrt(v)+eps and the
           update (3 x 4 bytes). The CUDA kernels (csrc/kernels.cu kOptimizerStatic8bit2StateBlockwise,
           kOptimizer32bit2State) update p and the states in place: no per-tensor temporaries.
  [paged]  bitsandbytes optim get_state_buffer: with is_paged, state tensors of >= 1e5 elements are allocated in
           CUDA unified memory (cudaMallocManaged, outside torch's allocator) and are evicted to host RAM under
           memory pressure; on a CPU, paged falls back to ordinary tensors.
  [peft]   PEFT prepare_model_for_kbit_training: every non-quantized 16-bit parameter is cast to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftopt.spec import Combination, ModelSpec, Quant
from ftopt.spec.policy import quantizes_head, wrapped_linears
from ftopt.spec.units import ceil_div

NF4_BLOCK = 64  # weights per absmax [QLoRA], [bnb-4bit]
DOUBLE_QUANT_GROUP = 256  # 8-bit absmax values per fp32 second-level constant [QLoRA]
OPTIM_BLOCK = 256  # elements per absmax in 8-bit optimizer states [8bit-opt]
MIN_8BIT_SIZE = 4096  # bnb optimizers keep fp32 states below this many elements [8bit-opt]
PAGED_MIN_ELEMENTS = 100_000  # smaller paged states stay ordinary device tensors [paged]
CPU_STEP_TEMP_8BIT = 20  # bytes per element at the peak of one CPU 8-bit update [bnb-cpu]
CPU_STEP_TEMP_32BIT = 12  # bytes per element at the peak of one CPU 32-bit bnb update [bnb-cpu]


def quantized_weight_bytes(quant: Quant, in_features: int, out_features: int) -> int:
    """Bytes of one quantized linear weight [bnb-4bit], [int8] (its bias stays unquantized)."""
    n = in_features * out_features
    if quant is Quant.INT8:
        return n + 4 * out_features
    blocks = ceil_div(n, NF4_BLOCK)
    # packed 4-bit + 8-bit absmax per block + fp32 constant per 256 blocks (double quant, always on here)
    return ceil_div(n, 2) + blocks + 4 * ceil_div(blocks, DOUBLE_QUANT_GROUP)


def _head_shape(model: ModelSpec) -> tuple[int, int]:
    return model.embed_dim or model.hidden_size, model.vocab_size


def quantized_shapes(model: ModelSpec, combo: Combination) -> list[tuple[int, int, int]]:
    """(in_features, out_features, count) of every weight bitsandbytes quantizes: each decoder-layer linear, and
    the LM head under LitGPT's recipe (policy.quantizes_head); never biases, norms or embeddings."""
    out = [(lin.in_features, lin.out_features, model.num_layers) for lin in model.layer_linears()]
    return out + ([(*_head_shape(model), 1)] if quantizes_head(model, combo) else [])


def quantized_params(model: ModelSpec, combo: Combination) -> int:
    """Parameters that bitsandbytes quantizes (quantized_shapes)."""
    return sum(i * o * n for i, o, n in quantized_shapes(model, combo))


def quantized_base_bytes(model: ModelSpec, combo: Combination, other_bytes: int = 4) -> int:
    """The frozen base after quantization: quantized weights plus every other parameter at `other_bytes` (fp32
    after PEFT's cast [peft]; 16-bit where DeepSpeed casts the module or the recipe keeps bf16)."""
    q = sum(quantized_weight_bytes(combo.quant, i, o) * n for i, o, n in quantized_shapes(model, combo))
    return q + other_bytes * (model.param_count() - quantized_params(model, combo))


def dequant_temp_bytes(model: ModelSpec, combo: Combination, compute_bytes: int) -> int:
    """Largest short-lived tensor of a quantized matmul [bnb-4bit]: the dequantized weight in the compute dtype
    plus its fp32 absmax; for int8, the int8 copy of the input is small and the weight is dequantized to 16 bits
    in backward. One linear at a time, forward and backward alike."""
    quant = combo.quant
    n = max(i * o for i, o, _ in quantized_shapes(model, combo))
    if quant is Quant.INT8:
        return 2 * n
    return compute_bytes * n + 4 * ceil_div(n, NF4_BLOCK)


@dataclass(frozen=True)
class TensorGroup:
    numel: int
    count: int
    embedding: bool = False  # nn.Embedding weight: Trainer forces 32-bit bnb states


def trainable_tensors(model: ModelSpec, combo: Combination) -> list[TensorGroup]:
    """Trainable parameter tensors by size (what an optimizer sees, one state pair per tensor)."""
    if combo.lora:
        out = []
        for lin in wrapped_linears(model, combo):
            out += [
                TensorGroup(combo.lora_r * lin.in_features, model.num_layers),
                TensorGroup(lin.out_features * combo.lora_r, model.num_layers),
            ]
            if combo.dora:  # the magnitude vector (policy.dora_magnitude_params)
                out.append(TensorGroup(lin.out_features, model.num_layers))
        return out
    e = model.embed_dim or model.hidden_size
    out = [TensorGroup(model.vocab_size * e, 1, embedding=True)]
    if model.learned_positions:
        out.append(TensorGroup(model.learned_positions * model.hidden_size, 1, embedding=True))
    if model.embed_dim is not None:
        out.append(TensorGroup(e * model.hidden_size, 2))
    for lin in model.layer_linears():
        out.append(TensorGroup(lin.in_features * lin.out_features, model.num_layers))
        if lin.bias:
            out.append(TensorGroup(lin.out_features, model.num_layers))
    norm_tensors = 2 if model.norm.value == "layer" else 1
    out.append(TensorGroup(model.hidden_size, model.num_layers * model.norms_per_layer * norm_tensors))
    if model.final_norm:
        out.append(TensorGroup(model.hidden_size, norm_tensors))
    if not model.tie_embeddings:
        out.append(TensorGroup(model.vocab_size * e, 1))
    return out


def _eight_bit(t: TensorGroup) -> bool:
    return not t.embedding and t.numel >= MIN_8BIT_SIZE


def _state_bytes(t: TensorGroup, eight_bit_optim: bool) -> int:
    if eight_bit_optim and _eight_bit(t):
        return 2 * t.numel + 2 * 4 * ceil_div(t.numel, OPTIM_BLOCK)
    return 8 * t.numel


def bnb_optimizer_bytes(model: ModelSpec, combo: Combination, on_gpu: bool) -> tuple[int, int]:
    """(device bytes, paged bytes) of a bitsandbytes AdamW's states [8bit-opt], [paged]. Paged states of large
    tensors live in unified memory that pages to host RAM; on a CPU they are ordinary tensors."""
    device = paged = 0
    for t in trainable_tensors(model, combo):
        b = _state_bytes(t, combo.optim.eight_bit) * t.count
        if combo.optim.paged and on_gpu and t.numel >= PAGED_MIN_ELEMENTS:
            paged += b
        else:
            device += b
    return device, paged


def bnb_step_temp_bytes(model: ModelSpec, combo: Combination, on_gpu: bool) -> int:
    """Largest temporaries of one bitsandbytes optimizer update [bnb-cpu]: none on CUDA (in-place kernels); on a
    CPU, fp32 working copies of the largest tensor's update."""
    if on_gpu:
        return 0
    per = [
        (CPU_STEP_TEMP_8BIT if combo.optim.eight_bit and _eight_bit(t) else CPU_STEP_TEMP_32BIT) * t.numel
        for t in trainable_tensors(model, combo)
    ]
    return max(per, default=0)
