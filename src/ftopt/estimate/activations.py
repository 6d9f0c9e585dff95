"""Analytic activation memory: the tensors autograd saves for backward, per token and per GPU, in bytes.

Each function counts the tensors one part of the step keeps (a norm, a linear's input, attention, the MLP, the LM
head and loss) at one moment of the step; estimate/analytic.py takes the largest moment. Conventions: bytes (int)
per GPU; `tokens` = micro_batch x seq_len; shapes in comments are per token unless stated. Sources:
  [Korthikanti] Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": a GPT
           layer stores s*b*h*(34 + 5*a*s/h) bytes of activations with 16-bit tensors; we enumerate the same saved
           tensors for each architecture instead of using the GPT-2 constant (GQA, gated MLPs and the fp32 upcasts
           in Hugging Face's RMSNorm/loss change the numbers).
  [HF]     transformers 5 modeling code as run by Trainer: RMSNorm upcasts to fp32; the loss upcasts logits to fp32
           (loss_utils.ForCausalLMLoss); activation checkpointing is non-reentrant and keeps each layer's input.
  [autocast] estimate/autocast.py: the weight casts torch autocast caches, with and without GC.
  [PEFT]   peft 0.21 LoRA as get_peft_model builds it by default (autocast_adapter_dtype=True): adapters upcast to
           fp32 (tuners_utils.cast_adapter_dtype), inputs cast to the adapter's dtype (lora.Linear.forward);
           Combination.adapter_dtype BASE keeps the adapters in the base's dtype (ftopt.policy.storage).
  [quant]  estimate/quant.py: a quantized base's frozen linears output the frozen-output dtype (Storage.frozen_out).
  [dropout] estimate/dropout.py: LoRA adapter dropout's masks and dropped copies (peft lora/layer.py Linear.forward).
Where real implementations differ from the papers, the comment says so; `estimate/traced.py` measures them exactly.
"""

from __future__ import annotations

from ftopt.estimate import dora, dropout, layout
from ftopt.estimate.autocast import autocast_weight_cache_bytes, tied_grad_summed_in_place
from ftopt.spec import Combination, LinearGroup, MlpKind, ModelSpec, NormKind, TrainingSetup
from ftopt.spec.policy import Storage, wrapped_linears
from ftopt.spec.units import ceil_div


def _trainable_groups(model: ModelSpec, combo: Combination) -> dict[LinearGroup, int]:
    """Trained linears per group (LoRA: the targeted ones)."""
    out: dict[LinearGroup, int] = {}
    for lin in wrapped_linears(model, combo) if combo.lora else model.layer_linears():
        out[lin.group] = out.get(lin.group, 0) + 1
    return out


def norm_saved_bytes(model: ModelSpec, st: Storage, full: bool) -> int:
    """One norm, per token [HF]. RMSNorm upcasts its input to fp32 and pow() saves it (4h); the normalized output
    is saved by `weight * x` only when the weight trains. LayerNorm saves its input (fp32 under autocast)."""
    h = model.hidden_size
    if model.norm is NormKind.RMS:
        return 4 * h + (st.resid_bytes * h if full else 0)
    in_bytes = 4 if st.autocast else st.resid_bytes
    return in_bytes * h


def linear_input_bytes(
    model: ModelSpec,
    st: Storage,
    in_features: int,
    trainable: int,
    produced_bytes: int,
    lora_r: int = 0,
    mask: int = 0,
    shared: bool = False,
) -> int:
    """A matmul saves its input only to form the weight gradient (frozen weights need only W for grad-input).
    Under autocast the saved input is the 16-bit cast, one per trainable linear reading it (autocast caches casts
    of leaf weights, not of activations); otherwise the tensor itself, counted once for the group. `trainable` =
    how many linears of the group train; `shared`: that tensor is saved by the op that made it and counted there
    (o_proj's input under SDPA and flash: attention_out_input_bytes), so saving it again adds nothing.
    LoRA (`lora_r` > 0) [PEFT]: each wrapped linear first casts its input to the adapter's dtype, a new tensor
    per wrapped linear when the dtypes differ (peft 0.21 lora.Linear.forward: _cast_input_dtype); lora_A saves
    that cast (under autocast, autocast's 16-bit cast of it: fp32 adapters make one per wrapped linear, 16-bit
    adapters none), and lora_B saves lora_A's r-wide output.
    Adapter dropout (`mask`: bytes per element of its mask, 0 = none) [dropout]: each wrapped linear's mask, and
    lora_A saves dropout's output."""
    if not trainable:
        return 0
    own = 0 if shared else produced_bytes * in_features  # the input itself, where it is what gets saved
    if lora_r:
        return _lora_input_bytes(st, in_features, trainable, produced_bytes, lora_r, mask, own)
    if st.autocast and produced_bytes == 4:
        return 2 * in_features * trainable  # the bf16 casts autocast makes for the matmuls
    return own


def _lora_input_bytes(
    st: Storage, in_features: int, trainable: int, produced_bytes: int, lora_r: int, mask: int, own: int
) -> int:
    """linear_input_bytes of `trainable` wrapped linears [PEFT]; `own`: the bytes of the input itself where lora_A
    saving it adds them (linear_input_bytes). With dropout, where lora_A saved the input the group shares (no cast
    before it) each wrapped linear keeps its own dropped copy instead [dropout]; the input is then freed, or stays
    where its own op saves it (o_proj's under SDPA and flash), counted there."""
    adapter = st.trainable_weight
    out = trainable * lora_r * (2 if st.autocast else adapter)  # lora_A's outputs, saved by lora_B
    out += trainable * mask * in_features  # each dropout's mask
    if st.autocast and adapter == 4:
        return out + 2 * in_features * trainable
    if not st.autocast and adapter != produced_bytes:
        return out + adapter * in_features * trainable
    if mask:
        return out + adapter * in_features * trainable
    return out + own


def attention_core_bytes(model: ModelSpec, st: Storage, combo: Combination, seq_len: int, masked: bool = False) -> int:
    """Scaled dot-product attention, per token.
    sdpa/flash: q, k, v, out plus fp32 log-sum-exp per head (GQA kept un-repeated: transformers passes
      enable_gqa when there is no padding mask); `masked` (sdpa on packed rows): k, v repeated and the mask
      [layout.masked_sdpa_bytes_per_token].
    eager [Korthikanti 5as/h term]: q and the repeated k, v (repeat_kv copies), the fp32 softmax output
      (heads x s) and its 16-bit copy that the PV matmul saves."""
    a, q, kv, heads = st.act_bytes, model.q_dim, model.kv_dim, model.num_heads
    if combo.attn.linear_memory:
        return (
            a * (2 * q + 2 * kv) + 4 * heads + (layout.masked_sdpa_bytes_per_token(model, st, seq_len) if masked else 0)
        )
    probs = 4 * heads * seq_len + (a * heads * seq_len if a != 4 else 0)
    return a * 3 * q + probs


def mlp_bytes(
    model: ModelSpec, st: Storage, down_trainable: int, in_trainable: bool = True, lora_r: int = 0, mask: int = 0
) -> int:
    """Gated (SwiGLU/GeGLU): gate output (saved by the activation), activation output and up output (saved by the
    product); the product is saved by `down` when it trains (linear_input_bytes). Plain (GELU): fc1 output, GELU
    output for fc2. Outputs of frozen linears have the frozen-output dtype (fp32 for quantized bases [quant])."""
    a, i = (st.act_bytes if in_trainable else st.frozen_out), model.intermediate_size
    down = linear_input_bytes(model, st, i, down_trainable, a, lora_r, mask)
    return (a * 3 * i if model.mlp is MlpKind.GATED else a * i) + down


def layer_activation_bytes_per_token(
    model: ModelSpec, combo: Combination, st: Storage, seq_len: int, masked: bool = False, on_gpu: bool = True
) -> int:
    """All tensors one decoder layer keeps for backward, per token, without checkpointing (`masked`: SDPA is given
    a mask, see attention_core_bytes; `on_gpu`: the run's device, which sets what a dropout keeps [dropout])."""
    full, r, m = not combo.lora, combo.lora_r, dropout.mask_bytes(combo, st, on_gpu)
    groups = _trainable_groups(model, combo)
    n = norm_saved_bytes(model, st, full) * model.norms_per_layer
    h = model.hidden_size
    n += linear_input_bytes(model, st, h, groups.get(LinearGroup.ATTN_IN, 0), _norm_out_bytes(st), r, m)
    n += attention_core_bytes(model, st, combo, seq_len, masked)
    n += attention_out_input_bytes(model, combo, st, m)
    n += mlp_block_bytes_per_token(model, combo, st, m)
    return n + dora.saved_bytes_per_token(model, combo, st)


def _norm_out_bytes(st: Storage) -> int:
    """The dtype of a norm's output as the linears after it save it: HF norms return their input's dtype, the
    residual stream's [HF]. A trained norm does not save that output: RMSNorm's `weight * x` saves its normalized
    input x for the weight's gradient (norm_saved_bytes) and the linears save the product, another tensor
    (LayerNorm's output is likewise a new tensor the norm does not keep). A real CPU forward of a llama layer
    (full fine-tuning, fp32) shows it: q_proj's saved input is a storage no norm op saves."""
    return st.resid_bytes


def attention_out_input_bytes(model: ModelSpec, combo: Combination, st: Storage, m: int = 0) -> int:
    """What the attention output projection saves, per token: its input (the attention output), when it trains
    (`m`: bytes per element of an adapter dropout's mask, dropout.mask_bytes). Where that input is the SDPA or flash
    kernel's saved output (attn_out_is_kernel_output) it is counted in attention_core_bytes already, and o_proj
    adds only what is new: casts, adapter outputs, dropout's masks and copies. Eager attention's output is a fresh
    copy (the PV matmul's (b, heads, s, d) output made contiguous), saved only here."""
    groups = _trainable_groups(model, combo)
    shared = combo.attn.linear_memory and attn_out_is_kernel_output(model)
    trainable = groups.get(LinearGroup.ATTN_OUT, 0)
    return linear_input_bytes(model, st, model.q_dim, trainable, st.act_bytes, combo.lora_r, m, shared)


# Families whose query does not reach attention densely laid out (b, s, heads, d): gpt_neox and phi3 join the
# rotary and pass-through halves with torch.cat (contiguous (b, heads, s, d)), gpt2 and Falcon's original layout
# (attn_out_is_kernel_output) slice it out of the fused qkv output (a view with gaps).
_QUERY_NOT_DENSE_BSHD = frozenset({"gpt_neox", "phi3", "gpt2"})


def attn_out_is_kernel_output(model: ModelSpec) -> bool:
    """Whether the attention output o_proj reads under SDPA and flash is the storage the kernel saves as its output.
    The fused kernels lay their output out like the query where the query is densely (b, s, heads, d) in memory: a
    per-head view of its own projection, transposed (RoPE's elementwise ops keep that layout); transformers'
    transpose(1, 2).contiguous() and reshape then return that storage unchanged. Any other query gives a
    contiguous (b, heads, s, d) output, which that .contiguous() copies. Seen in a real CPU forward of every family
    (fp32 and bf16, full and LoRA, sdpa): o_proj's saved input is the storage
    ScaledDotProductFlashAttentionForCpuBackward0 saves as its output for llama, mistral, qwen2, gemma, opt and
    Falcon's new decoder architecture (its query flattened into a fresh (b, s, heads x d)), a copy for gpt_neox,
    phi3, gpt2 and Falcon's original layout. On CUDA torch's flash and memory-efficient kernels and flash-attn
    allocate the output with empty_like of the transposed query: the same rule, read from their source, not
    measured on a GPU."""
    if model.family == "falcon":
        return bool(model.hf_config.get("new_decoder_architecture", False))
    return model.family not in _QUERY_NOT_DENSE_BSHD


def mlp_block_bytes_per_token(model: ModelSpec, combo: Combination, st: Storage, m: int = 0) -> int:
    """What one layer's MLP block saves for backward, per token, its norm aside: the inputs of its first linears
    (linear_input_bytes) and the MLP's own tensors (mlp_bytes); `m` as in attention_out_input_bytes."""
    groups, r, h = _trainable_groups(model, combo), combo.lora_r, model.hidden_size
    n = linear_input_bytes(model, st, h, groups.get(LinearGroup.MLP_IN, 0), _norm_out_bytes(st), r, m)
    return n + mlp_bytes(model, st, groups.get(LinearGroup.MLP_OUT, 0), LinearGroup.MLP_IN in groups, r, m)


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
    device; without GC the first layer keeps no dropout mask for its first wrapped group [dropout]).
    With GC each layer keeps only its input (resid dtype x h); the checkpoints also keep the mask packed rows give
    SDPA (estimate/layout.py). Its layers are recomputed one at a time later in backward, once the loss's tensors
    are freed (gc_recompute_activation_bytes). A recomputation under autocast enters and leaves its own autocast
    region, so it holds one layer's weight casts [autocast] (in `per_layer`, as are the casts matmuls save
    without GC)."""
    per_layer = _per_layer_bytes(model, setup, combo, st, on_gpu)
    kept, head = _checkpoints_and_head_bytes(model, setup, combo, st)
    if combo.gc:
        return kept + head, per_layer
    first = dropout.first_layer_unsaved_bytes(model, combo, st, setup.tokens_per_micro_batch, on_gpu)
    return model.num_layers * per_layer - first + head, per_layer


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
    kept, _ = _checkpoints_and_head_bytes(model, setup, combo, st)
    layer = _gc_recomputed_layer_bytes(model, setup, combo, st, on_gpu)
    return kept + layer + layer_backward_temp_bytes(model, setup, combo, st, on_gpu)


def gc_first_layer_moments(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True
) -> list[tuple[int, frozenset[LinearGroup]]]:
    """Backward through the first layer under GC, where every later layer's gradients exist, moment by moment as
    (activations, the layer's groups whose backward has run: layer_backward_moments); none without GC. Its
    checkpoint is the only one left (each later layer's input went with that layer's backward)."""
    if not combo.gc:
        return []
    checkpoint = st.resid_bytes * model.hidden_size * setup.tokens_per_micro_batch
    layer = checkpoint + _gc_recomputed_layer_bytes(model, setup, combo, st, on_gpu)
    return [(layer + held, done) for held, done in layer_backward_moments(model, setup, combo, st, on_gpu)]


def _gc_recomputed_layer_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool
) -> int:
    """The model's mask and one recomputed layer's saved tensors, less the input its norms share with the
    checkpoint (checkpoint_shared_bytes_per_token)."""
    shared = checkpoint_shared_bytes_per_token(model, st) * setup.tokens_per_micro_batch
    return layout.model_mask_bytes(setup, combo, st) + _per_layer_bytes(model, setup, combo, st, on_gpu) - shared


def checkpoint_shared_bytes_per_token(model: ModelSpec, st: Storage) -> int:
    """Bytes per token that norm_saved_bytes counts for a recomputed layer's input norm but which are the
    checkpoint itself: the norm saves its input as it comes where it does not upcast it (RMSNorm's .to(float32) and
    autocast's fp32 layer_norm return an fp32 input unchanged; LayerNorm without autocast takes any input as it
    is), and under GC that input is the layer input the checkpoint keeps. Every norm of a parallel-residual layer
    (GPT-NeoX) reads that input."""
    saved = 4 if model.norm is NormKind.RMS or st.autocast else st.resid_bytes  # norm_saved_bytes' input dtype
    if saved != st.resid_bytes:
        return 0  # an upcast copy: a tensor of its own
    return (model.norms_per_layer if model.parallel_residual else 1) * saved * model.hidden_size


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
    run) and eager attention's softmax backward (softmax_backward_bytes_per_token; the MLP's and the output
    projection's have run; SDPA and flash form their gradients in O(s) per head, below the MLP's moment), each with
    the residual stream's gradient (residual_grad_bytes_per_token). A group whose backward has run has freed its
    autocast weight casts (in the layer's saved tensors, autocast_weight_cache_bytes) and formed its gradients.
    Traced (tiny-llama, 4 layers, LoRA r8, GC, eager): the step peaks in the MLP's backward in fp32 (seq 256 x 2
    and 64 x 8) and in the softmax's under bf16-mixed at 256 x 2."""
    resid, m = residual_grad_bytes_per_token(model, st), dropout.mask_bytes(combo, st, on_gpu)
    moments = [(resid + mlp_backward_bytes_per_token(model, combo, st, m), frozenset({LinearGroup.MLP_OUT}))]
    if not combo.attn.linear_memory:
        done = frozenset({LinearGroup.MLP_OUT, LinearGroup.MLP_IN, LinearGroup.ATTN_OUT})
        moments.append((resid + softmax_backward_bytes_per_token(model, combo, st, setup.seq_len, m), done))
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
    groups = _trainable_groups(model, combo)
    a, i = (st.act_bytes if LinearGroup.MLP_IN in groups else st.frozen_out), model.intermediate_size
    down_input = linear_input_bytes(model, st, i, groups.get(LinearGroup.MLP_OUT, 0), a, combo.lora_r, m)
    return (3 if model.mlp is MlpKind.GATED else 2) * i * a - down_input


def softmax_backward_bytes_per_token(
    model: ModelSpec, combo: Combination, st: Storage, seq_len: int, m: int = 0
) -> int:
    """Eager attention's softmax backward beyond the layer's saved tensors, per token: the probabilities' gradient
    (from the PV matmul's backward, bmm; upcast to fp32 under 16 bits, the 16-bit one freed) and the scores'
    (_softmax_backward_data), heads x s fp32 each beside the saved fp32 probabilities (transformers' eager
    attention runs softmax in fp32). Freed by then: the MLP block and every norm after the first (their backward
    ran), the output projection's input and the probabilities' 16-bit copy (the PV matmul's backward ran; its
    value gradient replaces the repeated values it saved, the same size)."""
    a, heads = st.act_bytes, model.num_heads
    freed = mlp_block_bytes_per_token(model, combo, st, m) + attention_out_input_bytes(model, combo, st, m)
    freed += (model.norms_per_layer - 1) * norm_saved_bytes(model, st, not combo.lora)
    freed += a * heads * seq_len if a != 4 else 0
    return 2 * 4 * heads * seq_len - freed


def gc_loss_moment_activation_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage) -> int:
    """Activations when the loss is computed under GC and autocast (0 otherwise): checkpointing drops the layers'
    saved tensors but not autocast's weight cache, which holds every layer's casts until the forward's autocast
    region exits [autocast]: the checkpoints, all casts and the head's saved tensors."""
    if not (combo.gc and st.autocast):
        return 0
    kept, head = _checkpoints_and_head_bytes(model, setup, combo, st)
    return kept + model.num_layers * autocast_weight_cache_bytes(model, combo, st) + head


def _per_layer_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool) -> int:
    masked = layout.sdpa_gets_mask(setup, combo)
    per_token = layer_activation_bytes_per_token(model, combo, st, setup.seq_len, masked, on_gpu)
    weights = autocast_weight_cache_bytes(model, combo, st) + dropout.dora_weight_bytes(model, combo, st)
    return per_token * setup.tokens_per_micro_batch + weights


def _checkpoints_and_head_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage
) -> tuple[int, int]:
    """(GC's layer inputs, 0 without GC; the final norm's saved tensors and the model's mask)."""
    tokens = setup.tokens_per_micro_batch
    head = norm_saved_bytes(model, st, not combo.lora) * tokens + layout.model_mask_bytes(setup, combo, st)
    kept = model.num_layers * st.resid_bytes * model.hidden_size * tokens if combo.gc else 0
    return kept, head
