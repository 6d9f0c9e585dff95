"""Operators (kernel launches) per optimizer step: the per-operator overhead term of the time model.

Why it matters: every PyTorch operator costs a roughly fixed dispatch time (Python, autograd bookkeeping and, on a
GPU, the launch) whatever its size. For small models or short sequences that fixed cost, not the FLOPs, sets the
step time, and the optimizations change it out of proportion to their FLOPs: a LoRA adapter adds a handful of
operators per wrapped linear for a few FLOPs, gradient checkpointing runs each layer's forward operators again.

Where the numbers come from: `presets/kernels.json`, written by `benchmarks/count_kernels.py`, which runs
`count_kernels` below on a shrunken model of each family. Operator counts do not depend on widths, batch or sequence
length, only on the module structure, so a model with 64-wide layers counts the same as the full-size one.
`tests/estimate/test_kernels.py` recounts and compares with the file, so the file cannot drift from the code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from ftopt.spec import Attention, Combination, ModelSpec, Offload, TrainingSetup
from ftopt.spec.policy import lora_targets

FALLBACK_FAMILY = "llama"  # families without counts use the llama structure (pre-norm decoder, rotary, gated MLP)
# Operators DoRA adds per wrapped linear per micro-batch, without and with GC (whose recomputation runs the weight norm
# again): count_kernels of tiny-llama with and without use_dora, attention targets and all-linear alike (120 / 4 and
# 210 / 7 without GC, 228 / 4 and 399 / 7 with it); tests/estimate/test_lora_levers.py recounts them.
DORA_OPS_PER_WRAPPED_LINEAR = {False: 30, True: 57}
# Operators adapter dropout adds per wrapped linear per micro-batch, without and with GC: on a GPU native_dropout and
# its backward, and the recomputation's native_dropout (estimate/dropout.py). count_kernels of tiny-llama under
# dropout.gpu_dropout, attention targets and all-linear alike (8 / 4 and 14 / 7 without GC, 12 / 4 and 21 / 7 with
# it); a CPU step dispatches the unfused dropout, 5 and 9 (empty_like, bernoulli_, div_, mul and the backward's
# mul). tests/estimate/test_lora_dropout.py recounts them.
DROPOUT_OPS_PER_WRAPPED_LINEAR = {False: 2, True: 3}


class KernelCount(BaseModel):
    """Dispatched operators of one training step, split by what they scale with."""

    model_config = ConfigDict(extra="forbid")
    per_layer: int  # forward + backward (+ recomputation) of one decoder layer, per micro-batch
    outside_layers: int  # embedding, final norm, LM head, loss: forward + backward, per micro-batch
    optimizer_per_layer: int  # clip_grad_norm_ + fused AdamW + zero_grad, per trainable layer, per optimizer step
    optimizer_fixed: int  # the same for parameters outside the layers, per optimizer step


def variant(combo: Combination) -> str:
    """The key of a combination's operator structure. Flash attention is one fused kernel like sdpa; ZeRO and
    offload change the optimizer (the DeepSpeed engine's cost is calibrated separately per stage)."""
    attn = "eager" if combo.attn is Attention.EAGER else "sdpa"
    return f"{'lora' if combo.lora else 'full'}{'+gc' if combo.gc else ''}+{attn}"


def count_kernels(spec: ModelSpec, combo: Combination) -> KernelCount:
    """Count the aten operators of one real training step (forward with labels, backward, clip_grad_norm_, fused
    AdamW as the Trainer uses it, zero_grad) on CPU tensors, for 1 and 2 layers; the difference is one layer.
    Use a shrunken spec: the counts depend on structure only. Imports torch and transformers."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from ftopt.model.build import build_model
    from ftopt.spec import Precision

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.phase = "micro"
            self.counts = {"micro": 0, "step": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[self.phase] += 1
            return func(*args, **(kwargs or {}))

    def run(layers: int) -> dict[str, int]:
        model = build_model(
            spec, combo.model_copy(update={"zero": 0, "offload": Offload.NONE}), Precision("fp32"), num_layers=layers
        )
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        ids = torch.zeros((1, 8), dtype=torch.long)
        for _ in range(2):  # the second step is the steady state (optimizer states exist)
            with _Count() as c:
                model(input_ids=ids, labels=ids).loss.backward()
                c.phase = "step"
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        return c.counts

    one, two = run(1), run(2)
    return KernelCount(
        per_layer=two["micro"] - one["micro"],
        outside_layers=2 * one["micro"] - two["micro"],
        optimizer_per_layer=two["step"] - one["step"],
        optimizer_fixed=2 * one["step"] - two["step"],
    )


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(resources.files("ftopt.presets").joinpath("kernels.json").read_text())


def kernel_counts(spec: ModelSpec, combo: Combination) -> KernelCount:
    """The family's counted operators for this combination's structure (presets/kernels.json). Custom LoRA targets
    scale the adapter part of the per-layer count by the number of wrapped linears."""
    families = _table()["families"]
    fam = families.get(spec.family) or families[FALLBACK_FAMILY]
    counts = fam["counts"]
    key = variant(combo)
    if key not in counts:  # e.g. gemma2 has no sdpa in transformers: its eager structure is the closest
        key = key.replace("+sdpa", "+eager")
    k = KernelCount(**counts[key])
    if combo.lora:
        base = KernelCount(**counts[key.replace("lora", "full", 1)])
        scale = len(lora_targets(spec, combo)) / fam["default_lora_targets"]
        k = k.model_copy(update={"per_layer": round(base.per_layer + (k.per_layer - base.per_layer) * scale)})
    per_wrapped = (DORA_OPS_PER_WRAPPED_LINEAR[combo.gc] if combo.dora else 0) + (
        DROPOUT_OPS_PER_WRAPPED_LINEAR[combo.gc] if combo.lora_dropout else 0
    )
    if per_wrapped:
        k = k.model_copy(update={"per_layer": k.per_layer + per_wrapped * len(lora_targets(spec, combo))})
    return k


def kernels_per_step(spec: ModelSpec, setup: TrainingSetup, combo: Combination) -> int:
    """Operators dispatched per optimizer step on one GPU: every micro-batch runs all layers once (gradient
    accumulation repeats them), the optimizer runs once."""
    k = kernel_counts(spec, combo)
    micro = spec.num_layers * k.per_layer + k.outside_layers
    return setup.grad_accum * micro + spec.num_layers * k.optimizer_per_layer + k.optimizer_fixed
