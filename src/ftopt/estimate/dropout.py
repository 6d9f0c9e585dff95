"""LoRA adapter dropout (PEFT `lora_dropout`, Combination.lora_dropout): what backward keeps of it.

Sources:
  [PEFT]  peft 0.21 tuners/lora/layer.py: LoraLayer.update_layer (lines 255-258) makes `nn.Dropout(p)` when
          lora_dropout > 0, else `nn.Identity`; Linear.forward (lines 1098-1102) runs
          `x = self._cast_input_dtype(x, lora_A.weight.dtype)` then `result + lora_B(lora_A(dropout(x))) * scaling`.
  [torch] torch 2.13 aten/src/ATen/native/Dropout.cpp: `dropout` runs the fused `native_dropout` only where
          is_fused_kernel_acceptable holds (a CUDA, XPU, lazy or privateuse1 tensor, 0 < p < 1); its backward keeps
          a bool mask, 1 byte per element, and nothing of the input. Elsewhere (CPU) it multiplies the input by a
          noise tensor of the input's dtype (`empty_like(input).bernoulli_(1 - p).div_(1 - p)`), which the product
          keeps for backward: the adapter dtype's bytes per element (the dispatch of a real CPU step shows
          empty_like, bernoulli_, div_, mul).
  [DoRA]  peft 0.21 tuners/lora/variants.py DoraLinearVariant.forward (lines 242-246): with dropout on in training
          it passes base_result=None, so tuners/lora/dora.py DoraLinearLayer.forward (lines 141-142, 163) computes
          the base product again, `F.linear(dropout(x), weight.to(x.dtype))`.

Per wrapped linear of in_features i, in an adapter dtype of a bytes, per token:
  - the mask (mask_bytes);
  - lora_A saves dropout's output instead of its input. Where the input was cast first (fp32 adapters on a 16-bit
    base, or autocast's 16-bit cast for the matmul) that is a tensor of the size it saved before. Where it was not
    (adapters in the input's dtype: fp32 runs, `--adapter-dtype base`, DeepSpeed's 16-bit module), each wrapped
    linear keeps its own dropped copy (a bytes) where lora_A kept the one input the group shares
    (layer_saved.linear_input_bytes); that input is then kept only by what else saves it: o_proj's is SDPA's and
    flash's saved output, so it stays, counted once, in attention's count of that output.
Autograd keeps no mask where the input needs no gradient: in a LoRA run's first layer without GC, whatever reads
only the frozen embeddings' output (estimate/layer_grads.py; layer_saved.linear_input_bytes' `input_grad`).
DoRA with dropout [DoRA]: the product the magnitude's gradient keeps is F.linear's output (the adapter dtype, 16-bit
under autocast) instead of the base layer's (dora.saved_bytes_per_token), and F.linear keeps its weight operand for
its input's gradient, an o x i copy per wrapped linear per layer wherever `.to()`, autocast or dequantization makes
one (dora_weight_bytes).
"""

from __future__ import annotations

from contextlib import contextmanager

from ftopt.spec import Combination, Linear, ModelSpec, Quant
from ftopt.spec.policy import Storage, wrapped_linears


def mask_bytes(combo: Combination, st: Storage, on_gpu: bool) -> int:
    """Bytes per element of what one dropout keeps for backward (0 without dropout) [torch]: a bool mask on a GPU,
    the noise in the adapter dtype (the dtype of the input it drops) on a CPU."""
    if not (combo.lora and combo.lora_dropout):
        return 0
    return 1 if on_gpu else st.trainable_weight


def dora_weight_bytes(model: ModelSpec, combo: Combination, st: Storage, linears: list[Linear] | None = None) -> int:
    """The weight copies DoRA's recomputed base product keeps per layer with dropout [DoRA]: under autocast
    F.linear's 16-bit cast of weight.to(x.dtype) (a non-leaf, so never in autocast's cache); otherwise
    weight.to(x.dtype) itself where it is a copy (the base stored in another dtype than the adapters, or
    dequantized). `linears`: these wrapped linears only (default: all)."""
    if not (combo.dora and combo.lora_dropout):
        return 0
    a = st.trainable_weight
    per = 2 if st.autocast else a if combo.quant is not Quant.NONE or st.frozen_weight != a else 0
    lins = wrapped_linears(model, combo) if linears is None else linears
    return per * sum(lin.in_features * lin.out_features for lin in lins)


@contextmanager
def gpu_dropout(on_gpu: bool):
    """Trace a GPU run's dropouts as the GPU runs them. A CPU-only torch traces a GPU target on CPU tensors
    (estimate/traced.py), where `dropout` takes the unfused path and keeps a noise tensor of the input's dtype; a
    CUDA tensor takes the fused native_dropout, which keeps a bool mask [torch]. Inside this context
    torch.nn.functional.dropout (what nn.Dropout, PEFT's lora_dropout included, calls) runs native_dropout in
    training, as on the GPU; with a CUDA torch that is what it runs anyway."""
    if not on_gpu:
        yield
        return
    import torch
    import torch.nn.functional as F

    real = F.dropout

    def fused(input, p=0.5, training=True, inplace=False):
        if not training or not 0 < p < 1 or inplace:
            return real(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    F.dropout = fused
    try:
        yield
    finally:
        F.dropout = real
