"""What one decoder layer's attention saves for backward, per token, in bytes: q, k, v and the output as the
kernel keeps them, or the materialized probabilities where the scores are materialized (eager attention, torch's
math kernel). The family's layout (ModelSpec.layout, spec/families.py) says where its tensors differ from the
llama layout; estimate/layer_saved.py adds the output projection's input.

Sources:
  [sdpa]   transformers 5.23 integrations/sdpa_attention.py (repeat_kv before a masked call, enable_gqa
           otherwise) and torch 2.13's scaled_dot_product_attention: the fused kernels (CPU flash; CUDA flash and
           memory-efficient) save q, k, v as given, their output and an fp32 log-sum-exp per head; the math kernel
           (_scaled_dot_product_attention_math) upcasts 16-bit q, k, v to fp32 (allowFP16BF16ReductionMathSDP is
           off by default) and materializes fp32 probabilities.
  [eager]  each family's eager attention function in transformers 5.23: the QK and PV matmuls save q and the
           k, v they multiply (a copy wherever the matmul must reshape a view or broadcast one k/v head), softmax
           saves its output, in the dtype the family asks for.
  [dropout] torch's dropout in training: a bool mask on CUDA (native_dropout), the scaled noise in the input's
           dtype on a CPU (the unfused input * noise); the dropped copy is a new tensor.
  [grads]  estimate/layer_grads.py: an op keeps what its backward needs only for the inputs that need a gradient
           (all of them but in a LoRA run's first layer without GC).
Checked against a real CPU forward's saved storages by tests/estimate/test_saved_tensors.py, family by family.
"""

from __future__ import annotations

from ftopt.estimate.layer_grads import EVERY, LayerGrads
from ftopt.spec import Attention, Combination, ModelSpec, NormKind, SoftmaxDtype
from ftopt.spec.policy import Storage


def norm_out_bytes(model: ModelSpec, st: Storage, on_gpu: bool = True) -> int:
    """The dtype of a norm's output, what the linears after it and Falcon's eager softmax read: HF's RMSNorm
    returns its input's dtype, the residual stream's; LayerNorm returns fp32 under CUDA autocast (layer_norm is
    on autocast's CUDA fp32 list, torch.amp docs) and its input's dtype otherwise (CPU autocast lists no
    layer_norm: measured, a bf16 input stays bf16)."""
    if model.norm is NormKind.LAYER and st.autocast and on_gpu:
        return 4
    return st.resid_bytes


def sdpa_runs_math(model: ModelSpec, combo: Combination, on_gpu: bool = True) -> bool:
    """Whether torch's SDPA falls back to its math kernel [sdpa]: given fewer k/v heads than query heads without
    enable_gqa (Falcon's original multi-query layout: no fused kernel takes it), or asked for dropout on a CPU
    (the CPU flash kernel has none; CUDA's flash and memory-efficient kernels do, so they stay linear there)."""
    if combo.attn is not Attention.SDPA:
        return False
    return model.layout.sdpa_kv_broadcast or (model.layout.attention_dropout and not on_gpu)


def scores_materialized(model: ModelSpec, combo: Combination, on_gpu: bool = True) -> bool:
    """Whether the attention keeps (heads x s) probabilities per token: eager attention and the math kernel."""
    return combo.attn is Attention.EAGER or sdpa_runs_math(model, combo, on_gpu)


def attn_out_is_kernel_output(model: ModelSpec, combo: Combination, on_gpu: bool = True) -> bool:
    """Whether the attention output o_proj reads is the storage a fused kernel saves as its output. The kernels lay
    their output out in the query's dimension order; transformers' transpose(1, 2).contiguous() and reshape then
    return that storage unchanged where the query is ordered (b, s, heads, d): a per-head view of its projection
    (gpt2, Falcon's original multi-head layout: a view with gaps, still in that order), transposed, and kept so by
    RoPE's elementwise ops (llama, mistral, qwen2, gemma, opt, Falcon's new decoder architecture). Where rotary
    joins halves with torch.cat the query is contiguous (b, heads, s, d) (ModelSpec.layout.query_bhsd: gpt_neox,
    phi3), and that .contiguous() copies; so does the math kernel's output (sdpa_runs_math). Seen in a real CPU
    forward of every family (fp32 and bf16, full and LoRA, sdpa). On CUDA torch's flash and memory-efficient
    kernels and flash-attn allocate the output with empty_like of the transposed query: the same rule, read from
    their source, not measured on a GPU."""
    fused = combo.attn.linear_memory and not sdpa_runs_math(model, combo, on_gpu)
    return fused and not model.layout.query_bhsd


def attention_core_bytes(
    model: ModelSpec,
    st: Storage,
    combo: Combination,
    seq_len: int,
    masked: bool = False,
    on_gpu: bool = True,
    grads: LayerGrads = EVERY,
) -> int:
    """What the attention itself saves, per token (its output projection's input aside): the fused kernel's
    (_kernel_bytes), the math kernel's (_math_bytes) or eager attention's (_eager_bytes); nothing where none of
    q, k, v needs a gradient [grads]. `masked`: transformers hands SDPA a mask (packed or padded rows,
    estimate/layout.py). A kernel saves all its inputs where any needs a gradient; the math kernel runs only
    with a fused qkv projection, whose q, k and v need one alike."""
    if not grads.attention:
        return 0
    if sdpa_runs_math(model, combo, on_gpu):
        return _math_bytes(model, seq_len, on_gpu)
    if combo.attn.linear_memory:
        return _kernel_bytes(model, st, combo, seq_len, masked)
    return _eager_bytes(model, st, seq_len, on_gpu, grads)


def _kernel_bytes(model: ModelSpec, st: Storage, combo: Combination, seq_len: int, masked: bool) -> int:
    """SDPA and flash [sdpa], per token: the storages behind the q, k, v the kernel saves, each once, its output and
    the fp32 log-sum-exp per head. q and k are RoPE's new tensors; where q, k, v are views of one fused output
    (layout.qkv_views) a saved view keeps the whole output alive: v always (gpt_neox, phi3, Falcon's original
    multi-head layout: +q + kv beside q and k), q and k too without rotary (gpt2: the fused output alone). Given
    a mask, transformers' sdpa_attention repeats k and v to every query head (repeat_kv: new tensors, the views
    freed) and the kernel keeps the float mask row it converts the bool mask into (L entries in the query dtype);
    Falcon calls torch's SDPA itself, always with its mask (layout.sdpa_always_masked), after copying k and v to
    every head in its new decoder architecture (layout.kv_repeated)."""
    q, kv, lay = model.q_dim, model.kv_dim, model.layout
    repeat = masked and not lay.sdpa_always_masked and q != kv
    kv_each = q if lay.kv_repeated else kv
    fused = {"qkv": q + 2 * kv}
    views = lay.qkv_views and not lay.rotary  # q and k reach the kernel as views too
    held = dict(fused) if views else {"q": q}
    held.update({"k": q} if repeat else fused if views else {"k": kv_each})
    held.update({"v": q} if repeat else fused if lay.qkv_views else {"v": kv_each})
    mask_row = (masked or lay.sdpa_always_masked) and combo.attn is Attention.SDPA
    return st.act_bytes * (sum(held.values()) + q + (seq_len if mask_row else 0)) + 4 * model.num_heads


def _math_bytes(model: ModelSpec, seq_len: int, on_gpu: bool) -> int:
    """torch's math kernel [sdpa], per token, all fp32: q scaled, k and v copied to every query head by the
    broadcasting matmuls (or copied out of their views), the probabilities (heads x s); with dropout [dropout] its
    mask and the dropped probabilities. Measured: Falcon's multi-query layout and gpt2's attention dropout on a
    CPU, fp32, bf16 and bf16 under autocast."""
    return 4 * 3 * model.q_dim + (4 + _math_dropout_bytes(model, on_gpu)) * model.num_heads * seq_len


def _math_dropout_bytes(model: ModelSpec, on_gpu: bool) -> int:
    """Per head and key, what the math kernel's dropout keeps [dropout]: its mask and the dropped fp32 copy."""
    return (1 if on_gpu else 4) + 4 if model.layout.attention_dropout else 0


def _eager_bytes(model: ModelSpec, st: Storage, seq_len: int, on_gpu: bool, grads: LayerGrads = EVERY) -> int:
    """Eager attention [eager, Korthikanti's 5as/h term], per token: q and k, v repeated to every head (repeat_kv
    or the broadcasting matmul copies them), and the probabilities (probs_bytes) per head and key. Where only some
    of q, k, v need a gradient [grads]: the QK matmul keeps q for k's gradient and k for q's; the scores, and so
    the softmax's output, the dropout's mask and the PV matmul's v, need one where q or k does; the PV matmul
    keeps the probabilities it multiplies (the softmax output, or its 16-bit or dropped copy) for v's."""
    scores = grads.q or grads.k
    qkv = grads.k + grads.q + scores
    soft, copy = softmax_bytes(model, st, on_gpu)
    if model.layout.attention_dropout:
        probs = (soft + (1 if on_gpu else st.act_bytes)) * scores + st.act_bytes * grads.v
    else:
        probs = soft * (scores or (grads.v and not copy)) + copy * grads.v
    return st.act_bytes * qkv * model.q_dim + probs * model.num_heads * seq_len


def softmax_bytes(model: ModelSpec, st: Storage, on_gpu: bool = True) -> tuple[int, int]:
    """(bytes per element of the probabilities eager softmax saves, of the copy the PV matmul saves, 0 if none).
    transformers' shared eager attention: softmax(dtype=float32), then .to(query dtype), a copy where that is 16
    bits; gpt2: softmax in the scores' dtype, promoted by the float mask (the embeddings' dtype) it adds; Falcon:
    softmax(dtype=hidden_states.dtype), its norm's output dtype. Under autocast the PV matmul casts fp32
    probabilities to 16 bits; gpt2 casts them with .type(value.dtype)."""
    a = st.act_bytes
    kind = model.layout.eager_softmax
    soft = (
        4
        if kind is SoftmaxDtype.FP32
        else max(a, st.resid_bytes)
        if kind is SoftmaxDtype.SCORES
        else norm_out_bytes(model, st, on_gpu)
    )
    return soft, a if soft != a else 0


def materialized_probs_bytes(model: ModelSpec, st: Storage, combo: Combination, on_gpu: bool = True) -> tuple[int, int]:
    """Where the scores are materialized (scores_materialized), per head and key: (bytes of the softmax output,
    bytes of what the attention keeps beyond it: the matmul's 16-bit copy, or a dropout's mask and dropped copy).
    Eager attention's (probs_bytes) or the math kernel's (fp32)."""
    if sdpa_runs_math(model, combo, on_gpu):
        return 4, _math_dropout_bytes(model, on_gpu)
    soft = softmax_bytes(model, st, on_gpu)[0]
    return soft, probs_bytes(model, st, on_gpu) - soft


def probs_bytes(model: ModelSpec, st: Storage, on_gpu: bool = True) -> int:
    """Bytes eager attention keeps per head and key (softmax_bytes): the softmax output and the matmul's copy, or
    with attention dropout [dropout] the softmax output, the dropout's mask and the dropped copy the PV matmul
    saves (in the query dtype; the pre-dropout copy is then saved by nothing)."""
    soft, copy = softmax_bytes(model, st, on_gpu)
    if model.layout.attention_dropout:
        return soft + st.act_bytes + (1 if on_gpu else st.act_bytes)
    return soft + copy
