"""What one decoder layer saves for backward, per token and per GPU, in bytes: its norms, the linears' inputs,
attention and the MLP (estimate/activations.py adds the layers up, the LM head and loss, and gradient
checkpointing; estimate/layer_backward.py what a layer's backward holds beyond them).

Conventions: bytes (int) per token unless stated; shapes in comments are per token. Sources:
  [Korthikanti] Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": a GPT
           layer stores s*b*h*(34 + 5*a*s/h) bytes of activations with 16-bit tensors; we enumerate the same saved
           tensors for each architecture instead of using the GPT-2 constant (GQA, gated MLPs and the fp32 upcasts
           in Hugging Face's RMSNorm/loss change the numbers).
  [HF]     transformers 5 modeling code as run by Trainer: RMSNorm upcasts to fp32.
  [PEFT]   peft 0.21 LoRA as get_peft_model builds it by default (autocast_adapter_dtype=True): adapters upcast to
           fp32 (tuners_utils.cast_adapter_dtype), inputs cast to the adapter's dtype (lora.Linear.forward);
           Combination.adapter_dtype BASE keeps the adapters in the base's dtype (ftopt.policy.storage).
  [quant]  estimate/quant.py: a quantized base's frozen linears output the frozen-output dtype (Storage.frozen_out).
  [dropout] estimate/dropout.py: LoRA adapter dropout's masks and dropped copies (peft lora/layer.py Linear.forward).
Checked against the storages a real CPU forward saves by tests/estimate/test_saved_tensors.py.
"""

from __future__ import annotations

from ftopt.estimate import dora, dropout, layout
from ftopt.spec import Combination, LinearGroup, MlpKind, ModelSpec, NormKind
from ftopt.spec.policy import Storage, wrapped_linears


def trainable_groups(model: ModelSpec, combo: Combination) -> dict[LinearGroup, int]:
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
    groups = trainable_groups(model, combo)
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
    groups = trainable_groups(model, combo)
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
    groups, r, h = trainable_groups(model, combo), combo.lora_r, model.hidden_size
    n = linear_input_bytes(model, st, h, groups.get(LinearGroup.MLP_IN, 0), _norm_out_bytes(st), r, m)
    return n + mlp_bytes(model, st, groups.get(LinearGroup.MLP_OUT, 0), LinearGroup.MLP_IN in groups, r, m)
