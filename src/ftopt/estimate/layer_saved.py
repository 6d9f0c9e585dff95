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
  [grads]  estimate/layer_grads.py: which of a layer's tensors need a gradient (all but in a LoRA run's first layer
           without GC); an op whose inputs need none keeps nothing (LayerGrads, default EVERY).
Checked against the storages a real CPU forward saves, the first layer's apart, by tests/estimate/test_saved_tensors.py.
"""

from __future__ import annotations

from ftopt.estimate import dora, dropout
from ftopt.estimate.attention_saved import attention_core_bytes, attn_out_is_kernel_output, norm_out_bytes
from ftopt.estimate.autocast import autocast_weight_cache_bytes
from ftopt.estimate.layer_grads import EVERY, LayerGrads
from ftopt.spec import Combination, LinearGroup, MlpKind, ModelSpec, NormKind
from ftopt.spec.policy import Storage, wrapped_linears


def trainable_groups(model: ModelSpec, combo: Combination) -> dict[LinearGroup, int]:
    """Trained linears per group (LoRA: the targeted ones)."""
    out: dict[LinearGroup, int] = {}
    for lin in wrapped_linears(model, combo) if combo.lora else model.layer_linears():
        out[lin.group] = out.get(lin.group, 0) + 1
    return out


def norm_input_bytes(model: ModelSpec, st: Storage, on_gpu: bool = True) -> int:
    """What one norm saves of its input, per token [HF]: RMSNorm upcasts it to fp32 (.to(torch.float32)) and pow and
    the multiply by 1/rms save that; LayerNorm saves its input in the dtype it computes in (norm_out_bytes: an fp32
    copy under CUDA autocast, the input itself otherwise)."""
    if model.norm is NormKind.RMS:
        return 4 * model.hidden_size
    return norm_out_bytes(model, st, on_gpu) * model.hidden_size


def norm_stats_bytes(model: ModelSpec, st: Storage, on_gpu: bool = True) -> int:
    """One norm's per-row statistics, per token: RMSNorm's 1/rms, torch.rsqrt's fp32 output that RsqrtBackward0
    and the multiply save (4 B); LayerNorm's mean and rstd, which native_layer_norm returns and its backward
    saves: fp32 on CUDA (layer_norm_kernel.cu writes them in the accumulate type), in the dtype the norm computes
    in on a CPU (measured: bf16 under bf16-true and under CPU autocast with a bf16 base)."""
    if model.norm is NormKind.RMS:
        return 4
    return 2 * (4 if on_gpu else norm_out_bytes(model, st, on_gpu))


def norm_saved_bytes(model: ModelSpec, st: Storage, full: bool, on_gpu: bool = True) -> int:
    """One norm, per token [HF]: its input (norm_input_bytes), its statistics (norm_stats_bytes) and, when the
    weight trains, the normalized input RMSNorm's `weight * x` saves: in the input's dtype (llama's
    `weight * x.to(input_dtype)`), fp32 where the norm scales in fp32 (layout.norm_scale_fp32: gemma's
    `x_normed_fp32 * (1.0 + weight.float())`). LayerNorm's backward needs only its input and statistics."""
    dtype = 4 if model.layout.norm_scale_fp32 else st.resid_bytes
    product = dtype * model.hidden_size if full and model.norm is NormKind.RMS else 0
    return norm_input_bytes(model, st, on_gpu) + norm_stats_bytes(model, st, on_gpu) + product


def norm_scale_bytes(model: ModelSpec) -> int:
    """Per norm whose input needs a gradient, bytes independent of the tokens: gemma's fp32 `1.0 + weight`
    (layout.norm_scale_fp32), a new tensor the multiply keeps for the normalized input's gradient (llama's keeps
    the weight itself, a parameter)."""
    return 4 * model.hidden_size if model.layout.norm_scale_fp32 else 0


def norms_share_input(model: ModelSpec, st: Storage, on_gpu: bool = True) -> bool:
    """Whether every norm of a layer saves one and the same tensor, the layer's input: a parallel-residual layer's
    norms all read it (GPT-NeoX's input_layernorm and post_attention_layernorm, Falcon's ln_attn and ln_mlp), and
    save it as it is unless each upcasts it to a copy of its own (RMSNorm under 16 bits, LayerNorm under CUDA
    autocast with a 16-bit base)."""
    return model.parallel_residual and norm_input_bytes(model, st, on_gpu) == st.resid_bytes * model.hidden_size


def layer_norms_saved_bytes(
    model: ModelSpec, st: Storage, full: bool, on_gpu: bool = True, grads: LayerGrads = EVERY
) -> int:
    """One layer's norms whose input needs a gradient (norm_saved_bytes each; LayerGrads.saving_norms), per token,
    the input they share counted once (norms_share_input)."""
    n = grads.saving_norms(model)
    shared = (n - 1) * norm_input_bytes(model, st, on_gpu) if n and norms_share_input(model, st, on_gpu) else 0
    return n * norm_saved_bytes(model, st, full, on_gpu) - shared


def linear_input_bytes(
    model: ModelSpec,
    st: Storage,
    in_features: int,
    trainable: int,
    produced_bytes: int,
    lora_r: int = 0,
    mask: int = 0,
    shared: bool = False,
    input_grad: bool = True,
) -> int:
    """A matmul saves its input only to form the weight gradient (frozen weights need only W for grad-input).
    Under autocast the saved input is the 16-bit cast, one per trainable linear reading it (autocast caches casts
    of leaf weights, not of activations); otherwise the tensor itself, counted once for the group. `trainable` =
    how many linears of the group train; `shared`: that tensor is saved elsewhere and counted there (o_proj's input
    where the fused kernel saved it: attention_out_input_bytes; the MLP's input where the attention's linears
    saved it: mlp_block_bytes_per_token), so saving it again adds nothing.
    LoRA (`lora_r` > 0) [PEFT]: each wrapped linear first casts its input to the adapter's dtype, a new tensor
    per wrapped linear when the dtypes differ (peft 0.21 lora.Linear.forward: _cast_input_dtype); lora_A saves
    that cast (under autocast, autocast's 16-bit cast of it: fp32 adapters make one per wrapped linear, 16-bit
    adapters none), and lora_B saves lora_A's r-wide output.
    Adapter dropout (`mask`: bytes per element of its mask, 0 = none) [dropout]: each wrapped linear's mask, kept
    only where the input needs a gradient (`input_grad` [grads]), and lora_A saves dropout's output."""
    if not trainable:
        return 0
    own = 0 if shared else produced_bytes * in_features  # the input itself, where it is what gets saved
    if lora_r:
        kept = mask if input_grad else 0
        return _lora_input_bytes(st, in_features, trainable, produced_bytes, lora_r, mask, own, kept)
    if st.autocast and produced_bytes == 4:
        return 2 * in_features * trainable  # the bf16 casts autocast makes for the matmuls
    return own


def _lora_input_bytes(
    st: Storage, in_features: int, trainable: int, produced_bytes: int, lora_r: int, mask: int, own: int, kept: int
) -> int:
    """linear_input_bytes of `trainable` wrapped linears [PEFT]; `own`: the bytes of the input itself where lora_A
    saving it adds them (linear_input_bytes); `kept`: bytes per element of the mask each dropout keeps. With
    dropout, where lora_A saved the input the group shares (no cast before it) each wrapped linear keeps its own
    dropped copy instead [dropout]; the input is then freed, or stays where its own op saves it (o_proj's under
    SDPA and flash), counted there."""
    adapter = st.trainable_weight
    out = trainable * lora_r * (2 if st.autocast else adapter)  # lora_A's outputs, saved by lora_B
    out += trainable * kept * in_features  # each dropout's mask
    if st.autocast and adapter == 4:
        return out + 2 * in_features * trainable
    if not st.autocast and adapter != produced_bytes:
        return out + adapter * in_features * trainable
    if mask:
        return out + adapter * in_features * trainable
    return out + own


def mlp_bytes(
    model: ModelSpec,
    st: Storage,
    down_trainable: int,
    in_trainable: bool = True,
    lora_r: int = 0,
    mask: int = 0,
    grads: LayerGrads = EVERY,
) -> int:
    """Gated (SwiGLU/GeGLU): gate output (saved by the activation), activation output and up output (saved by the
    product); the product is saved by `down` when it trains (linear_input_bytes). A fused gate_up projection
    (phi3) saves the same: gate and up are views of its output, which SiLU keeps. Plain: what the activation
    saves (layout.mlp_act_saved tensors: F.gelu its input, fc1's output; gelu_new four; relu its output, which
    fc2 reads: layout.mlp_act_saves_output) and its output for fc2. Where an output needs no gradient [grads]:
    the activation keeps gate's only if gate's needs one, the product keeps up's for the activation's gradient
    and the activation's for up's. Outputs of frozen linears have the frozen-output dtype (fp32 for quantized
    bases [quant]). Not modelled: CUDA autocast runs gelu_new's pow and what follows it in fp32 (pow is on its
    fp32 list); measured on CPUs."""
    a, i, lay = (st.act_bytes if in_trainable else st.frozen_out), model.intermediate_size, model.layout
    shared = lay.mlp_act_saves_output and grads.gate and model.mlp is MlpKind.PLAIN
    down = linear_input_bytes(model, st, i, down_trainable, a, lora_r, mask, shared, grads.mlp_act)
    if model.mlp is MlpKind.GATED:
        return a * i * (2 * grads.gate + grads.up) + down
    return a * i * lay.mlp_act_saved * grads.gate + down


def layer_activation_bytes_per_token(
    model: ModelSpec,
    combo: Combination,
    st: Storage,
    seq_len: int,
    masked: bool = False,
    on_gpu: bool = True,
    grads: LayerGrads = EVERY,
) -> int:
    """All tensors one decoder layer keeps for backward, per token, without checkpointing (`masked`: SDPA is given
    a mask, see attention_core_bytes; `on_gpu`: the run's device, which sets what a dropout keeps and the dtype a
    LayerNorm computes in [dropout]; `grads`: which of its tensors need a gradient [grads]). The linears after a
    norm save its output, a tensor the norm does not keep (RMSNorm's `weight * x` saves its normalized input, not
    the product): a real CPU forward of a llama layer (full fine-tuning, fp32) shows q_proj's saved input is a
    storage no norm op saves."""
    full, r, m = not combo.lora, combo.lora_r, dropout.mask_bytes(combo, st, on_gpu)
    groups = trainable_groups(model, combo)
    n = layer_norms_saved_bytes(model, st, full, on_gpu, grads)
    h, norm_out = model.hidden_size, norm_out_bytes(model, st, on_gpu)
    attn_in = groups.get(LinearGroup.ATTN_IN, 0)
    n += linear_input_bytes(model, st, h, attn_in, norm_out, r, m, input_grad=grads.input)
    n += attention_core_bytes(model, st, combo, seq_len, masked, on_gpu, grads)
    n += attention_out_input_bytes(model, combo, st, m, on_gpu, grads)
    n += mlp_block_bytes_per_token(model, combo, st, m, on_gpu, grads)
    n += residual_dropout_bytes(model, combo, st, on_gpu, grads)
    return n + dora.saved_bytes_per_token(model, combo, st)


def layer_weight_bytes(model: ModelSpec, combo: Combination, st: Storage, grads: LayerGrads = EVERY) -> int:
    """What one layer keeps for backward beyond its per-token tensors, bytes independent of the tokens: the 16-bit
    weight casts its matmuls save under autocast (autocast_weight_cache_bytes), DoRA's weight copies with dropout
    (dropout.dora_weight_bytes) and gemma's norm scales (norm_scale_bytes). The casts and copies serve the
    gradient of the input they multiply, so a linear whose input needs none keeps neither [grads]: in a LoRA
    run's first layer lora_A's cast (lora_B's, whose input is lora_A's output, stays), DoRA's recomputed base
    product's weight copy."""
    wrapped = wrapped_linears(model, combo)
    read = [lin for lin in wrapped if grads.reads(lin.group)]
    unread = frozenset(lin.name for lin in wrapped if not grads.reads(lin.group))
    casts = autocast_weight_cache_bytes(model, combo, st, unread)
    norms = grads.saving_norms(model) * norm_scale_bytes(model)
    return casts + dropout.dora_weight_bytes(model, combo, st, read) + norms


def residual_dropout_bytes(
    model: ModelSpec, combo: Combination, st: Storage, on_gpu: bool = True, grads: LayerGrads = EVERY
) -> int:
    """The masks of the dropouts a layer applies before the residual adds, per token (layout.residual_dropouts:
    gpt2's resid_dropout and GPT2MLP.dropout, phi3's resid_attn/mlp_dropout, GPT-NeoX's
    post_attention/post_mlp_dropout, OPT's two `dropout`s, Falcon's dropout_add): a bool mask on CUDA, the noise in
    the branch output's dtype on a CPU [dropout], where what it drops needs a gradient [grads]; the dropped output
    is only added, so nothing saves it. The branch output is the output projection's: a LoRA result comes back in
    the base output's dtype (peft lora.Linear)."""
    out = st.frozen_out if combo.lora else st.act_bytes
    kept = sum(grads.dropped(branch) for branch in model.layout.residual_dropouts)
    return kept * model.hidden_size * (1 if on_gpu else out)


def attention_out_input_bytes(
    model: ModelSpec, combo: Combination, st: Storage, m: int = 0, on_gpu: bool = True, grads: LayerGrads = EVERY
) -> int:
    """What the attention output projection saves, per token: its input (the attention output), when it trains
    (`m`: bytes per element of an adapter dropout's mask, dropout.mask_bytes). Where that input is the SDPA or flash
    kernel's saved output (attn_out_is_kernel_output) it is counted in attention_core_bytes already, and o_proj
    adds only what is new: casts, adapter outputs, dropout's masks and copies. Eager attention's output is a fresh
    copy (the PV matmul's (b, heads, s, d) output made contiguous), saved only here; so is the math kernel's. Where
    the attention needs no gradient [grads] the kernel keeps nothing, and o_proj's adapter saves its input alone."""
    groups = trainable_groups(model, combo)
    shared = attn_out_is_kernel_output(model, combo, on_gpu) and grads.attention
    trainable, r = groups.get(LinearGroup.ATTN_OUT, 0), combo.lora_r
    return linear_input_bytes(model, st, model.q_dim, trainable, st.act_bytes, r, m, shared, grads.attention)


def mlp_block_bytes_per_token(
    model: ModelSpec, combo: Combination, st: Storage, m: int = 0, on_gpu: bool = True, grads: LayerGrads = EVERY
) -> int:
    """What one layer's MLP block saves for backward, per token, its norm aside: the inputs of its first linears
    (linear_input_bytes) and the MLP's own tensors (mlp_bytes); `m` as in attention_out_input_bytes. A
    parallel layer with one norm (Falcon's original layout: mlp_layernorm_out = attention_layernorm_out) feeds
    the attention's and the MLP's first linears one tensor: saved by the attention's where those train."""
    groups, r, h = trainable_groups(model, combo), combo.lora_r, model.hidden_size
    one_norm = model.parallel_residual and model.norms_per_layer == 1 and groups.get(LinearGroup.ATTN_IN, 0) > 0
    norm_out, mlp_in = norm_out_bytes(model, st, on_gpu), groups.get(LinearGroup.MLP_IN, 0)
    n = linear_input_bytes(model, st, h, mlp_in, norm_out, r, m, one_norm, grads.mlp_input)
    return n + mlp_bytes(model, st, groups.get(LinearGroup.MLP_OUT, 0), LinearGroup.MLP_IN in groups, r, m, grads)
