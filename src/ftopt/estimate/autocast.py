"""Mixed precision under torch autocast: the 16-bit weight casts autocast keeps and what autograd does with them.

Sources:
  [autocast] torch 2.13 autocast (aten/src/ATen/autocast_mode.cpp, cached_cast): a cast of an fp32 leaf that
           requires grad is cached until the outermost autocast region exits (torch.autocast.__exit__ ->
           clear_autocast_cache); torch.utils.checkpoint recomputes each layer inside its own autocast region;
           accelerate wraps the model's forward (loss included) in one region, so the cache dies before backward.
  [autograd] torch/csrc/autograd/input_buffer.cpp: a gradient arriving for a tensor that already has one is added
           in place when the buffer's tensor is unshared (can_accumulate_inplace), out of place otherwise.
Checked against real CPU bf16-mixed Trainer runs (benchmarks/results/estimate_accuracy_mixed*.json).
"""

from __future__ import annotations

from ftopt.spec import Combination, ModelSpec, Quant
from ftopt.spec.policy import Storage, wrapped_linears


def autocast_weight_cache_bytes(
    model: ModelSpec, combo: Combination, st: Storage, unread: frozenset[str] = frozenset()
) -> int:
    """One layer's autocast weight casts [autocast]: autocast casts each fp32 weight that requires grad to 16 bits
    once and caches that copy (keyed by the weight) until the outermost autocast region exits, and the matmul saves
    the same copy for the input gradient: 2 bytes per trained linear parameter of the layer (full fine-tuning: every
    linear; LoRA: the fp32 adapters; a 16-bit frozen base and 16-bit adapters need no cast). `unread`: the names of
    wrapped linears whose input needs no gradient (a LoRA run's first layer, estimate/layer_grads.py): their
    lora_A's matmul saves no cast, which autocast's cache alone holds, until the region exits; counted out."""
    if not st.autocast or st.trainable_weight != 4:
        return 0
    if combo.lora:
        wrapped = wrapped_linears(model, combo)
        return 2 * combo.lora_r * sum(lin.in_features * (lin.name not in unread) + lin.out_features for lin in wrapped)
    return 2 * sum(lin.in_features * lin.out_features for lin in model.layer_linears())


def head_cast_bytes(model: ModelSpec, combo: Combination, st: Storage) -> int:
    """The 16-bit cast of an fp32 LM head under autocast, saved by its matmul for the input gradient [autocast]:
    a trained head (full fine-tuning; tied or not, the cast is of the one weight) is cached like any trained leaf; a
    frozen fp32 head (quantized base after prepare_model_for_kbit_training) is cast again on every forward (autocast
    caches only leaves that require grad). A LoRA run on a 16-bit base has a 16-bit head: nothing to cast. OPT's
    trained project_in and project_out (embed_dim x hidden each) are cast and saved alike under full fine-tuning."""
    if not st.autocast or (combo.lora and combo.quant is Quant.NONE):
        return 0
    projections = 2 * model.embed_dim * model.hidden_size if model.embed_dim and not combo.lora else 0
    return 2 * (model.vocab_size * (model.embed_dim or model.hidden_size) + projections)


def tied_grad_summed_in_place(model: ModelSpec, combo: Combination, st: Storage) -> bool:
    """Whether autograd sums a trained tied embedding's two gradients in place [autograd]: under autocast the LM
    head's partial gradient is the fresh fp32 output of the cast's backward, and the real run adds the lookup's
    into it (measured: qwen2-tied-110m full + GC bf16-mixed holds one vocab x hidden x 4 less than an
    out-of-place sum; activations.tied_embedding_grad_bytes). The FakeTensor trace adds out of place (fake storages
    are referenced beyond the tensor, so none looks unshared), so the traced estimator removes the same bytes."""
    return st.autocast and model.tie_embeddings and not combo.lora
