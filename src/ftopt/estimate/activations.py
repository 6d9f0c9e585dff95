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
from ftopt.spec.policy import Storage, lora_targets
from ftopt.spec.units import ceil_div


def _trainable_groups(model: ModelSpec, combo: Combination) -> dict[LinearGroup, int]:
    """Trained linears per group (LoRA: the targeted ones)."""
    targets = set(lora_targets(model, combo)) if combo.lora else {lin.name for lin in model.layer_linears()}
    out: dict[LinearGroup, int] = {}
    for lin in model.layer_linears():
        if lin.name in targets:
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
    kept: bool = False,
) -> int:
    """A matmul saves its input only to form the weight gradient (frozen weights need only W for grad-input).
    Under autocast the saved input is the 16-bit cast, one per trainable linear reading it (autocast caches casts
    of leaf weights, not of activations); otherwise the tensor itself when not saved already. `trainable` = how
    many linears of the group train.
    LoRA (`lora_r` > 0) [PEFT]: each wrapped linear first casts its input to the adapter's dtype, a new tensor
    per wrapped linear when the dtypes differ (peft 0.21 lora.Linear.forward: _cast_input_dtype); lora_A saves
    that cast (under autocast, autocast's 16-bit cast of it: fp32 adapters make one per wrapped linear, 16-bit
    adapters none), and lora_B saves lora_A's r-wide output.
    Adapter dropout (`mask`: bytes per element of its mask, 0 = none) [dropout]: each wrapped linear's mask, and
    lora_A saves dropout's output."""
    if not trainable:
        return 0
    if lora_r:
        return _lora_input_bytes(st, in_features, trainable, produced_bytes, lora_r, mask, kept)
    if st.autocast and produced_bytes == 4:
        return 2 * in_features * trainable  # the bf16 casts autocast makes for the matmuls
    return produced_bytes * in_features


def _lora_input_bytes(
    st: Storage, in_features: int, trainable: int, produced_bytes: int, lora_r: int, mask: int, kept: bool
) -> int:
    """linear_input_bytes of `trainable` wrapped linears [PEFT]. With dropout, where lora_A saved the input the
    group shares (no cast before it) each wrapped linear keeps its own dropped copy instead [dropout]; the input is
    then freed unless another op keeps it (`kept`: o_proj's input is SDPA's and flash's saved output)."""
    adapter = st.trainable_weight
    out = trainable * lora_r * (2 if st.autocast else adapter)  # lora_A's outputs, saved by lora_B
    out += trainable * mask * in_features  # each dropout's mask
    if st.autocast and adapter == 4:
        return out + 2 * in_features * trainable
    if not st.autocast and adapter != produced_bytes:
        return out + adapter * in_features * trainable
    if mask:
        return out + adapter * in_features * trainable + (produced_bytes * in_features if kept else 0)
    return out + produced_bytes * in_features


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
    norm_out_bytes = st.resid_bytes  # normalized output dtype = input dtype in HF norms
    n = norm_saved_bytes(model, st, full) * model.norms_per_layer
    h, q = model.hidden_size, model.q_dim
    norm_out = norm_out_bytes if not full or st.autocast else 0  # saved already by a trained norm (full)
    n += linear_input_bytes(model, st, h, groups.get(LinearGroup.ATTN_IN, 0), norm_out, r, m)
    n += attention_core_bytes(model, st, combo, seq_len, masked)
    # o_proj's input is the attention kernel's saved output under SDPA and flash (a (b, s, heads, d) layout that
    # transformers' transpose(1, 2).contiguous() leaves in place); eager attention's is a fresh copy
    kept = combo.attn.linear_memory
    n += linear_input_bytes(model, st, q, groups.get(LinearGroup.ATTN_OUT, 0), st.act_bytes, r, m, kept)
    n += linear_input_bytes(model, st, h, groups.get(LinearGroup.MLP_IN, 0), norm_out, r, m)
    n += mlp_bytes(model, st, groups.get(LinearGroup.MLP_OUT, 0), LinearGroup.MLP_IN in groups, r, m)
    return n + dora.saved_bytes_per_token(model, combo, st)


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
    """Activations while backward recomputes the last layer under GC (0 without GC): every checkpoint, the model's
    mask (an input of every checkpointed layer, so it lives until the first layer's backward) and that layer's saved
    tensors. The LM head's and the loss's tensors are freed by then (their backward has run: the traced GC steps
    peak either at the loss or here, never with both)."""
    if not combo.gc:
        return 0
    kept, _ = _checkpoints_and_head_bytes(model, setup, combo, st)
    mask = layout.model_mask_bytes(setup, combo)
    layer = _per_layer_bytes(model, setup, combo, st, on_gpu)
    return kept + mask + layer + layer_backward_temp_bytes(model, setup, combo, st)


def layer_backward_temp_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage) -> int:
    """Gradients alive inside one layer's backward beyond its saved tensors, where they are quadratic in the
    sequence: eager attention's softmax backward (torch's _softmax_backward_data) forms the scores' gradient while
    the probabilities' gradient is alive, heads x s x s each, both fp32 whatever the precision (transformers'
    eager attention runs softmax in fp32; under 16 bits the probabilities' 16-bit gradient is upcast and freed
    before softmax's backward, as the traced step shows). SDPA and flash compute their gradients in O(s) per head: not counted, nor the
    hidden- and intermediate-sized gradients (the linear-in-s remainder the traced estimator sees)."""
    if combo.attn.linear_memory:
        return 0
    return 2 * 4 * model.num_heads * setup.seq_len * setup.tokens_per_micro_batch


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
    head = norm_saved_bytes(model, st, not combo.lora) * tokens + layout.model_mask_bytes(setup, combo)
    kept = model.num_layers * st.resid_bytes * model.hidden_size * tokens if combo.gc else 0
    return kept, head
