"""Analytic activation memory: the tensors autograd saves for backward, per GPU, in bytes, at the moments of the
step estimate/analytic.py compares: every layer's saved tensors (estimate/layer_saved.py, per token), the LM head
and loss, and gradient checkpointing's checkpoints and recomputed layer (its backward: estimate/layer_backward.py).
Conventions: bytes (int) per GPU; `tokens` = micro_batch x seq_len. Sources:
  [HF]     transformers 5 modeling code as run by Trainer: the loss upcasts logits to fp32
           (loss_utils.ForCausalLMLoss); activation checkpointing is non-reentrant and keeps each layer's input.
  [autocast] estimate/autocast.py: the weight casts torch autocast caches, with and without GC.
  [dropout] estimate/dropout.py: LoRA adapter dropout's masks and dropped copies (peft lora/layer.py Linear.forward);
           torch's dropout keeps a bool mask on CUDA (native_dropout), the scaled noise on a CPU.
  [grads]  estimate/layer_grads.py: a LoRA run's first layer without GC reads the frozen embeddings' output, which
           needs no gradient, so what reads only that keeps nothing (first_layer_grads).
Where real implementations differ from the papers, the comment says so; `estimate/traced.py` measures them exactly.
"""

from __future__ import annotations

from ftopt.estimate import layout
from ftopt.estimate.attention_saved import norm_out_bytes
from ftopt.estimate.autocast import autocast_weight_cache_bytes, tied_grad_summed_in_place
from ftopt.estimate.layer_backward import layer_backward_moments, layer_backward_temp_bytes
from ftopt.estimate.layer_grads import EVERY, LayerGrads, first_layer_grads, first_layer_input_grad
from ftopt.estimate.layer_saved import (
    layer_activation_bytes_per_token,
    layer_weight_bytes,
    norm_input_bytes,
    norm_saved_bytes,
    norm_scale_bytes,
)
from ftopt.spec import Combination, LinearGroup, ModelSpec, TrainingSetup
from ftopt.spec.policy import Storage
from ftopt.spec.units import ceil_div


def logits_loss_bytes(model: ModelSpec, st: Storage, tokens: int) -> int:
    """LM head and loss at their peak [HF loss_utils]: the loss upcasts logits to fp32 and log_softmax keeps its
    fp32 output; in backward nll_loss's gradient, log_softmax's gradient and that output coexist: 12 bytes per
    vocabulary entry per token. 16-bit logits add nothing at that moment: nothing saves them (the upcast's
    backward needs no input, the head's matmul saves its input) and the Trainer drops the model's outputs before
    backward; in forward they coexist with the upcast and log_softmax's output, 2 + 4 + 4 < 12 (measured: the
    bf16-mixed runs in benchmarks/results/estimate_accuracy_mixed.json)."""
    return tokens * model.vocab_size * 12


def logits_forward_bytes(model: ModelSpec, st: Storage, tokens: int) -> int:
    """LM head and loss as the forward computes the loss [HF loss_utils]: the 16-bit logits (when not fp32), their
    fp32 upcast and log_softmax's fp32 output."""
    return tokens * model.vocab_size * (8 + (st.act_bytes if st.act_bytes != 4 else 0))


def held_logits_bytes(model: ModelSpec, setup: TrainingSetup, st: Storage) -> int:
    """The logits a loop that keeps the model's outputs holds beyond the loss (TrainingSetup.keeps_outputs): the
    LM head's output, in the activation dtype, alive from the loss through backward, the step and the next forward
    (the variable is rebound only when that forward returns). Trainer keeps only the loss: 0."""
    return setup.tokens_per_micro_batch * model.vocab_size * st.act_bytes if setup.keeps_outputs else 0


def tied_embedding_grad_bytes(model: ModelSpec, combo: Combination, st: Storage, world_size: int) -> int:
    """A trained, tied embedding gets two gradients at the very end of backward, the LM head's and the lookup's
    (embedding_dense_backward, dense vocab x hidden); autograd adds them out of place, so the two partial gradients
    and their sum coexist for a moment: 2 x vocab x hidden beyond the final gradient (seen in the trace of
    qwen2-style models, whose peak it is under GC). Under autocast the head's partial gradient comes out of the
    cast's backward (a fresh fp32 tensor nothing else holds) and autograd adds the lookup's into it in place
    (torch/csrc/autograd/input_buffer.cpp, can_accumulate_inplace): one partial gradient beyond the final one
    (measured: qwen2-tied-110m full + GC bf16-mixed, 1703.9 MiB, 117 MiB = vocab x hidden x 4 under the
    out-of-place sum; benchmarks/results/estimate_accuracy_mixed.json)."""
    if combo.lora or not model.tie_embeddings:
        return 0
    per = model.vocab_size * (model.embed_dim or model.hidden_size) * st.grad
    partials = 1 if tied_grad_summed_in_place(model, combo, st) else 2
    return partials * (ceil_div(per, world_size) if combo.zero >= 2 else per)


def activation_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> tuple[int, int]:
    """(all saved activations at the start of backward, one layer's) per GPU, in bytes (`on_gpu`: the run's
    device; without GC the first layer keeps its own: first_layer_activation_bytes).
    With GC each layer keeps only its input (resid dtype x h); the checkpoints also keep the mask packed rows give
    SDPA (estimate/layout.py). Its layers are recomputed one at a time later in backward, once the loss's tensors
    are freed (gc_recompute_activation_bytes). A recomputation under autocast enters and leaves its own autocast
    region, so it holds one layer's weight casts [autocast] (in `per_layer`, as are the casts matmuls save
    without GC)."""
    per_layer = _per_layer_bytes(model, setup, combo, st, on_gpu)
    kept, head = checkpoints_and_head_bytes(model, setup, combo, st, on_gpu)
    if combo.gc:
        return kept + head, per_layer
    first = first_layer_activation_bytes(model, setup, combo, st, on_gpu)
    return (model.num_layers - 1) * per_layer + first + head, per_layer


def first_layer_activation_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> int:
    """The first layer's saved tensors without GC, per GPU: another layer's where its input needs a gradient,
    less what reads only the frozen embeddings' output in a LoRA run [grads]: its first norm(s), a parallel
    layer's frozen MLP, attention none of whose q/k/v projections is wrapped, those paths' dropout masks and
    lora_A's autocast casts. What backward holds beside every gradient at its end."""
    return _per_layer_bytes(model, setup, combo, st, on_gpu, first_layer_grads(model, combo))


def gc_recompute_activation_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> int:
    """Activations at the peak of backward through the last layer under GC (0 without GC): every checkpoint, the
    model's mask (an input of every checkpointed layer, so it lives until the first layer's backward), the layer's
    recomputed tensors (_gc_recomputed_layer_bytes) and the largest moment of its backward
    (layer_backward_moments). The LM head's and the loss's tensors are freed by then (their backward has run: the
    traced GC steps peak either at the loss or here, never with both)."""
    if not combo.gc:
        return 0
    kept, _ = checkpoints_and_head_bytes(model, setup, combo, st, on_gpu)
    layer = _gc_recomputed_layer_bytes(model, setup, combo, st, on_gpu)
    return kept + layer + layer_backward_temp_bytes(model, setup, combo, st, on_gpu)


def first_layer_backward_moments(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> list[tuple[int, frozenset[LinearGroup]]]:
    """Backward through the first layer, where every later layer's gradients exist, moment by moment as
    (activations, the layer's groups whose backward has run: layer_backward_moments). Under GC its checkpoint is
    the only one left (each later layer's input went with that layer's backward) and the layer is recomputed;
    without GC what is left of the forward is the first layer's saved tensors (first_layer_activation_bytes) and
    the model's mask, which every layer's attention read."""
    if combo.gc:
        checkpoint = st.resid_bytes * model.hidden_size * setup.tokens_per_micro_batch
        layer = checkpoint + _gc_recomputed_layer_bytes(model, setup, combo, st, on_gpu)
    else:
        mask = layout.model_mask_bytes(model, setup, combo, st)
        layer = first_layer_activation_bytes(model, setup, combo, st, on_gpu) + mask
    return [(layer + held, done) for held, done in layer_backward_moments(model, setup, combo, st, on_gpu)]


def _gc_recomputed_layer_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool
) -> int:
    """The model's mask and one recomputed layer's saved tensors, less the input its norms share with the
    checkpoint (checkpoint_shared_bytes_per_token)."""
    shared = checkpoint_shared_bytes_per_token(model, st, on_gpu) * setup.tokens_per_micro_batch
    mask = layout.model_mask_bytes(model, setup, combo, st)
    return mask + _per_layer_bytes(model, setup, combo, st, on_gpu) - shared


def checkpoint_shared_bytes_per_token(model: ModelSpec, st: Storage, on_gpu: bool = True) -> int:
    """Bytes per token that layer_norms_saved_bytes counts for a recomputed layer's input norm but which are the
    checkpoint itself: the norm saves its input as it comes where it does not upcast it (RMSNorm's .to(float32) and
    CUDA autocast's fp32 layer_norm return an fp32 input unchanged; LayerNorm otherwise takes any input as it is:
    norm_input_bytes), and under GC that input is the layer input the checkpoint keeps. The norms of a
    parallel-residual layer all read that input and save it once (norms_share_input)."""
    saved = norm_input_bytes(model, st, on_gpu)
    return saved if saved == st.resid_bytes * model.hidden_size else 0  # else an upcast copy, a tensor of its own


def gc_loss_moment_activation_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> int:
    """Activations when the loss is computed under GC and autocast (0 otherwise): checkpointing drops the layers'
    saved tensors but not autocast's weight cache, which holds every layer's casts until the forward's autocast
    region exits [autocast]: the checkpoints, all casts and the head's saved tensors."""
    if not (combo.gc and st.autocast):
        return 0
    kept, head = checkpoints_and_head_bytes(model, setup, combo, st, on_gpu)
    return kept + model.num_layers * autocast_weight_cache_bytes(model, combo, st) + head


def _per_layer_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool, grads: LayerGrads = EVERY
) -> int:
    masked = layout.sdpa_gets_mask(setup, combo)
    per_token = layer_activation_bytes_per_token(model, combo, st, setup.seq_len, masked, on_gpu, grads)
    return per_token * setup.tokens_per_micro_batch + layer_weight_bytes(model, combo, st, grads)


def head_input_bytes(model: ModelSpec, combo: Combination, st: Storage, on_gpu: bool = True) -> int:
    """What the LM head's matmul saves per token: its input, for its weight's gradient, where that weight trains
    (full fine-tuning, tied or not; a LoRA run's head is frozen): the final norm's output (norm_out_bytes), or
    under autocast its 16-bit cast. OPT's projections (embed_dim) train too: project_in saves the token
    embeddings, project_out the final norm's output and the head project_out's embed_dim-wide output. Measured:
    llama-gqa-100m full fp32, 3,072 B per token (hidden 768), the figure the formulas missed."""
    if combo.lora:
        return 0
    width = model.hidden_size + 2 * (model.embed_dim or 0)
    return width * (2 if st.autocast else norm_out_bytes(model, st, on_gpu))


def checkpoints_and_head_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> tuple[int, int]:
    """(GC's layer inputs, 0 without GC; the final norm's saved tensors, the LM head's input (head_input_bytes), the
    embedding dropout's mask and the model's mask). The embedding dropout (gpt2's drop, GPT-NeoX's emb_dropout:
    layout.embedding_dropout) keeps a bool mask on CUDA, the noise in the embeddings' dtype on a CPU, outside
    every checkpoint [dropout], where the embeddings' output needs a gradient [grads]."""
    tokens, h = setup.tokens_per_micro_batch, model.hidden_size
    dropped = model.layout.embedding_dropout and first_layer_input_grad(combo)
    drop = h * (1 if on_gpu else st.resid_bytes) if dropped else 0
    norm = norm_saved_bytes(model, st, not combo.lora, on_gpu) if model.final_norm else 0
    head = (norm + head_input_bytes(model, combo, st, on_gpu) + drop) * tokens
    head += (norm_scale_bytes(model) if model.final_norm else 0) + layout.model_mask_bytes(model, setup, combo, st)
    kept = model.num_layers * st.resid_bytes * h * tokens if combo.gc else 0
    return kept, head
