"""One decoder layer's backward: what it holds beyond the layer's saved tensors (estimate/layer_saved.py), moment
by moment, per GPU in bytes; estimate/activations.py adds it to the checkpoints under gradient checkpointing and
estimate/analytic.py to the gradients formed by then. Sources: transformers 5 modeling code and the traced steps
quoted below (estimate/traced.py measures them exactly).
"""

from __future__ import annotations

from ftopt.estimate import dropout
from ftopt.estimate.attention_saved import materialized_probs_bytes, scores_materialized
from ftopt.estimate.layer_saved import (
    attention_out_input_bytes,
    layer_norms_saved_bytes,
    linear_input_bytes,
    mlp_block_bytes_per_token,
    norm_saved_bytes,
    trainable_groups,
)
from ftopt.spec import Combination, LinearGroup, MlpKind, ModelSpec, TrainingSetup
from ftopt.spec.policy import Storage, wrapped_linears


def layer_backward_temp_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> int:
    """The most one layer's backward holds beyond the layer's saved tensors, per GPU: its largest moment
    (layer_backward_moments)."""
    return max(held for held, _ in layer_backward_moments(model, setup, combo, st, on_gpu))


def layer_backward_moments(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> list[tuple[int, frozenset[LinearGroup]]]:
    """One layer's backward, moment by moment, as (bytes per GPU held beyond the layer's saved tensors, the layer's
    linear groups whose backward has run by then): the MLP's (mlp_backward_bytes_per_token; down's backward has
    run) and, where the scores are materialized (eager attention, SDPA's math kernel: scores_materialized), the
    softmax backward (softmax_backward_bytes_per_token; the MLP's and the output projection's have run; the fused
    kernels form their gradients in O(s) per head, below the MLP's moment), each with
    the residual stream's gradient (residual_grad_bytes_per_token). A group whose backward has run has freed its
    autocast weight casts (in the layer's saved tensors, autocast_weight_cache_bytes) and formed its gradients.
    Traced (tiny-llama, 4 layers, LoRA r8, GC, eager): the step peaks in the MLP's backward in fp32 (seq 256 x 2
    and 64 x 8) and in the softmax's under bf16-mixed at 256 x 2."""
    resid, m = residual_grad_bytes_per_token(model, st), dropout.mask_bytes(combo, st, on_gpu)
    moments = [(resid + mlp_backward_bytes_per_token(model, combo, st, m), frozenset({LinearGroup.MLP_OUT}))]
    if scores_materialized(model, combo, on_gpu):
        done = frozenset({LinearGroup.MLP_OUT, LinearGroup.MLP_IN, LinearGroup.ATTN_OUT})
        held = softmax_backward_bytes_per_token(model, combo, st, setup.seq_len, m, on_gpu)
        moments.append((resid + held, done))
    casts = 2 if st.autocast and st.trainable_weight == 4 else 0  # autocast_weight_cache_bytes' rule
    tokens = setup.tokens_per_micro_batch
    return [(n * tokens - casts * layer_trained_params(model, combo, done), done) for n, done in moments]


def layer_trained_params(model: ModelSpec, combo: Combination, groups: frozenset[LinearGroup]) -> int:
    """Trained parameters of one layer's linears in `groups` (norms and biases aside, as in
    autocast_weight_cache_bytes): the weights under full fine-tuning, LoRA's A and B (r x (in + out)) of each
    wrapped linear."""
    if not combo.lora:
        return sum(lin.in_features * lin.out_features for lin in model.layer_linears() if lin.group in groups)
    wrapped = [lin for lin in wrapped_linears(model, combo) if lin.group in groups]
    return sum(combo.lora_r * (lin.in_features + lin.out_features) for lin in wrapped)


def residual_grad_bytes_per_token(model: ModelSpec, st: Storage) -> int:
    """The gradient of the layer's output (hidden, residual dtype), made by the backward of the layer above or of
    the final norm (add / _to_copy); alive through the layer's backward, then replaced by the gradient of the
    residual after the MLP (add), the same size."""
    return model.hidden_size * st.resid_bytes


def mlp_backward_bytes_per_token(model: ModelSpec, combo: Combination, st: Storage, m: int = 0) -> int:
    """The MLP's backward beyond its saved tensors, per token: down's grad-input (mm, intermediate-sized) and, gated,
    the product's backward (mul: the gradients of the activation output and of up's output) or, plain, the
    activation's (gelu_backward: fc1 output's gradient), all in the MLP dtype (mlp_bytes'), while gate's and up's
    outputs are still saved; down's saved input (its trained weight's or adapter's) is freed with down's backward.
    3 (gated) or 2 (plain) x intermediate x dtype, less that input."""
    groups = trainable_groups(model, combo)
    a, i = (st.act_bytes if LinearGroup.MLP_IN in groups else st.frozen_out), model.intermediate_size
    down_input = linear_input_bytes(model, st, i, groups.get(LinearGroup.MLP_OUT, 0), a, combo.lora_r, m)
    return (3 if model.mlp is MlpKind.GATED else 2) * i * a - down_input


def softmax_backward_bytes_per_token(
    model: ModelSpec, combo: Combination, st: Storage, seq_len: int, m: int = 0, on_gpu: bool = True
) -> int:
    """The softmax backward of materialized scores beyond the layer's saved tensors, per token: the probabilities'
    gradient (from the PV matmul's backward, bmm; upcast to the softmax's dtype under 16 bits, the 16-bit one
    freed) and the scores' (_softmax_backward_data), heads x s each in the dtype softmax ran in (softmax_bytes:
    fp32 for transformers' eager attention and the math kernel). Freed by then: the MLP block and every norm after
    the first (their backward ran), the output projection's input and what the PV matmul and a dropout saved
    beyond the softmax output (the 16-bit copy, or the dropped copy and the mask; its value gradient replaces the
    repeated values it saved, the same size)."""
    full, keys = not combo.lora, model.num_heads * seq_len
    soft, beyond = materialized_probs_bytes(model, st, combo, on_gpu)
    freed = mlp_block_bytes_per_token(model, combo, st, m, on_gpu) + beyond * keys
    freed += attention_out_input_bytes(model, combo, st, m, on_gpu)
    freed += layer_norms_saved_bytes(model, st, full, on_gpu) - norm_saved_bytes(model, st, full, on_gpu)
    return 2 * soft * keys - freed
