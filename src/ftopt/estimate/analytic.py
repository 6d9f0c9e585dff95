"""Analytic per-GPU memory model: small named formulas, instant, each citing where it comes from.

Conventions: every function returns bytes (int) per GPU; `tokens` = micro_batch x seq_len. Shapes in comments are
per token unless stated. Sources:
  [ZeRO]   Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models":
           mixed-precision Adam holds 2 + 2 + K bytes per parameter (16-bit weights, 16-bit grads, K = 12 for the
           fp32 master copy, momentum and variance); stage 1/2/3 partition K, then grads, then weights over N GPUs.
  [Korthikanti] Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": a GPT
           layer stores s*b*h*(34 + 5*a*s/h) bytes of activations with 16-bit tensors; we enumerate the same saved
           tensors for each architecture instead of using the GPT-2 constant (GQA, gated MLPs and the fp32 upcasts
           in Hugging Face's RMSNorm/loss change the numbers).
  [HF]     transformers 5 modeling code as run by Trainer: RMSNorm upcasts to fp32; the loss upcasts logits to fp32
           (loss_utils.ForCausalLMLoss); activation checkpointing is non-reentrant and keeps each layer's input.
  [DS]     DeepSpeed 0.19 runtime: 16-bit training casts the whole module to 16 bits and keeps the fp32 master copy
           in the ZeRO optimizer; reduce bucket = hidden^2 and stage-3 prefetch = 0.9*hidden^2 elements (the values
           Hugging Face's "auto" DeepSpeed config fills in, train/dsconfig.hf_auto_zero_sizes).
  [autocast] estimate/autocast.py: the weight casts torch autocast caches, with and without GC.
  [PEFT]   peft 0.21 LoRA as get_peft_model builds it by default (autocast_adapter_dtype=True): adapters upcast to
           fp32 (tuners_utils.cast_adapter_dtype), inputs cast to the adapter's dtype (lora.Linear.forward);
           Combination.adapter_dtype BASE keeps the adapters in the base's dtype (ftopt.policy.storage).
  [quant]  estimate/quant.py: QLoRA/int8 bases and bitsandbytes optimizers (QLoRA paper, bitsandbytes source).
  [DDP]    torch.nn.parallel.DistributedDataParallel (torch 2.13, as Hugging Face Trainer builds it through
           accelerate: no gradient_as_bucket_view): Reducer::initialize_buckets (c10d/reducer.cpp) allocates every
           bucket's flat gradient tensor up front (bucket_cap_mb = 25 MiB only sets how many), so the buckets hold a
           second copy of all trainable gradients for the whole run; torch's docs for gradient_as_bucket_view: "the
           saved memory size will be equal to the total gradients size". Checked against torch in test_analytic.
Where real implementations differ from the papers, the comment says so; `estimate/traced.py` measures them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftopt.estimate import dora, layout
from ftopt.estimate import quant as q8
from ftopt.estimate.autocast import autocast_weight_cache_bytes, head_cast_bytes, tied_grad_summed_in_place
from ftopt.estimate.result import MemoryBreakdown
from ftopt.spec import (
    AdamWKernel,
    Combination,
    LinearGroup,
    MlpKind,
    ModelSpec,
    NormKind,
    Offload,
    Optim,
    Quant,
    TrainingSetup,
)
from ftopt.spec.dsconfig import STAGE3_MAX_LIVE_PARAMETERS, hf_auto_zero_sizes
from ftopt.spec.policy import Storage, compute_bytes, dora_magnitude_params, lora_targets, storage

# Stated runtime overheads (what nvidia-smi shows beyond torch.cuda.max_memory_allocated):
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context + cuBLAS/cuDNN workspaces with torch 2.x on A100/H100 (~0.5-0.7 GiB)
# NCCL communicator buffers per rank, under DeepSpeed or plain DDP over several GPUs: allocated by NCCL outside
# torch's caching allocator, so they count in the device total, not in max_memory_allocated (and not at all on a
# CPU with gloo).
NCCL_BUFFER_BYTES = 300 * 2**20


def trainable_params(model: ModelSpec, combo: Combination) -> int:
    """LoRA: the adapters (and DoRA's magnitudes); full fine-tuning: every parameter."""
    if not combo.lora:
        return model.param_count()
    return model.lora_params(combo.lora_r, lora_targets(model, combo)) + dora_magnitude_params(model, combo)


# ---- activations: tensors autograd saves for backward, per token -----------------------------------------------
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
    model: ModelSpec, st: Storage, in_features: int, trainable: int, produced_bytes: int, lora_r: int = 0
) -> int:
    """A matmul saves its input only to form the weight gradient (frozen weights need only W for grad-input).
    Under autocast the saved input is the 16-bit cast, one per trainable linear reading it (autocast caches casts
    of leaf weights, not of activations); otherwise the tensor itself when not saved already. `trainable` = how
    many linears of the group train.
    LoRA (`lora_r` > 0) [PEFT]: each wrapped linear first casts its input to the adapter's dtype, a new tensor
    per wrapped linear when the dtypes differ (peft 0.21 lora.Linear.forward: _cast_input_dtype); lora_A saves
    that cast (under autocast, autocast's 16-bit cast of it: fp32 adapters make one per wrapped linear, 16-bit
    adapters none), and lora_B saves lora_A's r-wide output."""
    if not trainable:
        return 0
    if lora_r:
        adapter = st.trainable_weight
        out = trainable * lora_r * (2 if st.autocast else adapter)  # lora_A's outputs, saved by lora_B
        if st.autocast and adapter == 4:
            return out + 2 * in_features * trainable
        if not st.autocast and adapter != produced_bytes:
            return out + adapter * in_features * trainable
        return out + produced_bytes * in_features
    if st.autocast and produced_bytes == 4:
        return 2 * in_features * trainable  # the bf16 casts autocast makes for the matmuls
    return produced_bytes * in_features


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


def mlp_bytes(model: ModelSpec, st: Storage, down_trainable: int, in_trainable: bool = True, lora_r: int = 0) -> int:
    """Gated (SwiGLU/GeGLU): gate output (saved by the activation), activation output and up output (saved by the
    product); the product is saved by `down` when it trains (linear_input_bytes). Plain (GELU): fc1 output, GELU
    output for fc2. Outputs of frozen linears have the frozen-output dtype (fp32 for quantized bases [quant])."""
    a, i = (st.act_bytes if in_trainable else st.frozen_out), model.intermediate_size
    down = linear_input_bytes(model, st, i, down_trainable, a, lora_r)
    return (a * 3 * i if model.mlp is MlpKind.GATED else a * i) + down


def layer_activation_bytes_per_token(
    model: ModelSpec, combo: Combination, st: Storage, seq_len: int, masked: bool = False
) -> int:
    """All tensors one decoder layer keeps for backward, per token, without checkpointing (`masked`: SDPA is given
    a mask, see attention_core_bytes)."""
    full, r = not combo.lora, combo.lora_r
    groups = _trainable_groups(model, combo)
    norm_out_bytes = st.resid_bytes  # normalized output dtype = input dtype in HF norms
    n = norm_saved_bytes(model, st, full) * model.norms_per_layer
    h, q = model.hidden_size, model.q_dim
    norm_out = norm_out_bytes if not full or st.autocast else 0  # saved already by a trained norm (full)
    n += linear_input_bytes(model, st, h, groups.get(LinearGroup.ATTN_IN, 0), norm_out, r)
    n += attention_core_bytes(model, st, combo, seq_len, masked)
    n += linear_input_bytes(model, st, q, groups.get(LinearGroup.ATTN_OUT, 0), st.act_bytes, r)
    n += linear_input_bytes(model, st, h, groups.get(LinearGroup.MLP_IN, 0), norm_out, r)
    n += mlp_bytes(model, st, groups.get(LinearGroup.MLP_OUT, 0), LinearGroup.MLP_IN in groups, r)
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
    return partials * (_ceil_div(per, world_size) if combo.zero >= 2 else per)


def activation_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage) -> tuple[int, int]:
    """(all saved activations at the start of backward, one layer's) per GPU, in bytes.
    With GC each layer keeps only its input (resid dtype x h); the checkpoints also keep the mask packed rows give
    SDPA (estimate/layout.py). Its layers are recomputed one at a time later in backward, once the loss's tensors
    are freed (gc_recompute_activation_bytes). A recomputation under autocast enters and leaves its own autocast
    region, so it holds one layer's weight casts [autocast] (in `per_layer`, as are the casts matmuls save
    without GC)."""
    per_layer = _per_layer_bytes(model, setup, combo, st)
    kept, head = _checkpoints_and_head_bytes(model, setup, combo, st)
    if combo.gc:
        return kept + head, per_layer
    return model.num_layers * per_layer + head, per_layer


def gc_recompute_activation_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage) -> int:
    """Activations while backward recomputes the last layer under GC (0 without GC): every checkpoint, the model's
    mask (an input of every checkpointed layer, so it lives until the first layer's backward) and that layer's saved
    tensors. The LM head's and the loss's tensors are freed by then (their backward has run: the traced GC steps
    peak either at the loss or here, never with both)."""
    if not combo.gc:
        return 0
    kept, _ = _checkpoints_and_head_bytes(model, setup, combo, st)
    mask = layout.model_mask_bytes(setup, combo)
    return kept + mask + _per_layer_bytes(model, setup, combo, st) + layer_backward_temp_bytes(model, setup, combo, st)


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


def _per_layer_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage) -> int:
    masked = layout.sdpa_gets_mask(setup, combo)
    per_token = layer_activation_bytes_per_token(model, combo, st, setup.seq_len, masked)
    return per_token * setup.tokens_per_micro_batch + autocast_weight_cache_bytes(model, combo, st)


def _checkpoints_and_head_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage
) -> tuple[int, int]:
    """(GC's layer inputs, 0 without GC; the final norm's saved tensors and the model's mask)."""
    tokens = setup.tokens_per_micro_batch
    head = norm_saved_bytes(model, st, not combo.lora) * tokens + layout.model_mask_bytes(setup, combo)
    kept = model.num_layers * st.resid_bytes * model.hidden_size * tokens if combo.gc else 0
    return kept, head


# ---- states: weights, grads, master, optimizer, with ZeRO partitioning -----------------------------------------
@dataclass(frozen=True)
class States:
    weights: int
    master: int
    optim: int
    grads: int
    buffers: int
    cpu_bytes: int  # host RAM per GPU for offloaded states


def zero_states(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool = True) -> States:
    """Per-GPU bytes of weights, master copy, Adam states and gradients [ZeRO], plus DeepSpeed's buffers [DS]."""
    n = setup.world_size
    total = model.param_count()
    train = trainable_params(model, combo)
    frozen = total if combo.lora else 0  # LoRA adds its adapters beside the whole frozen base
    weights = train * st.trainable_weight + frozen * st.frozen_weight
    if combo.quant is not Quant.NONE:  # quantized linears + the rest at the frozen storage (fp32 after PEFT) [quant]
        weights = train * st.trainable_weight + q8.quantized_base_bytes(model, combo, st.frozen_weight)
    master, optim, grads = train * st.master, train * st.optim, train * st.grad
    paged = 0
    if combo.optim is not Optim.ADAMW:  # bitsandbytes states (Trainer only, so no ZeRO partitioning) [quant]
        optim, paged = q8.bnb_optimizer_bytes(model, combo, on_gpu)
    buffers, cpu = 0, paged
    if combo.zero == 0 and n > 1:
        buffers += grads  # [DDP] gradient buckets: a full second copy of the trainable gradients
    if combo.zero >= 1:
        master, optim = _ceil_div(master, n), _ceil_div(optim, n)
    if combo.zero >= 2:
        grads = _ceil_div(grads, n)
        buffers += reduce_bucket_bytes(model, combo, st)
    if combo.zero == 3:
        weights = _ceil_div(weights, n)
        # Gathered parameters stay live until their reuse distance exceeds stage3_max_reuse_distance, up to
        # stage3_max_live_parameters elements: both default to 1e9 in DeepSpeed 0.19 (and HF's "auto" config leaves
        # them), so a model under 1e9 parameters stays fully gathered through forward and backward [DS]; at least
        # the current layer and the prefetched next one are live.
        buffers += stage3_live_params(model) * st.frozen_weight
    if combo.offload in (Offload.OPTIMIZER, Offload.ALL):
        # ZeRO-Offload keeps master + Adam states and an fp32 gradient partition in host RAM; Adam runs on the CPU.
        cpu += master + optim + _ceil_div(train * 4, n)
        master, optim = 0, 0
    if combo.offload is Offload.ALL:
        cpu += weights
        weights = 0
    return States(weights, master, optim, grads, buffers, cpu)


def adamw_step_temp_bytes(trainable: int, st: Storage, setup: TrainingSetup) -> int:
    """torch AdamW's temporaries at the update, for the Trainer's engine (DeepSpeed steps its own optimizer).
    Fused (torch._fused_adamw_): none, the kernel updates in place. Foreach (_multi_tensor_adam, torch/optim/adam.py
    in torch 2.13): the weight decay (_foreach_mul_), moments (_foreach_lerp_, _foreach_mul_, _foreach_addcmul_)
    and update (_foreach_addcdiv_) run in place, but exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)
    allocates a copy of every second moment of a (device, dtype) group at once, alive until the update ends: half
    the optimizer states. One group per dtype is stepped at a time; the largest, all trainable parameters of a
    one-dtype model, is counted."""
    if setup.adamw_kernel is AdamWKernel.FUSED:
        return 0
    return trainable * st.optim // 2


def reduce_bucket_bytes(model: ModelSpec, combo: Combination, st: Storage) -> int:
    """ZeRO-2/3 contiguous-gradients bucket(s) [DS], reduce_bucket_size elements of the gradient dtype each, the
    size ftopt's DeepSpeed config gets from Hugging Face ("auto", dsconfig.hf_auto_zero_sizes): stage 2
    double-buffers it under overlap_comm (stage_1_and_2.DeepSpeedZeroOptimizer.backward: buf_0, buf_1); stage 3
    allocates one per communication dtype, once (stage3.DeepSpeedZeroOptimizer_Stage3._setup_for_real_optimizer:
    bucket.buffer). Checked against a real engine in tests/estimate/test_zero3_buffers.py."""
    if combo.zero < 2:
        return 0
    elements = hf_auto_zero_sizes(model.hidden_size)["reduce_bucket_size"]
    return (1 if combo.zero == 3 else 2) * elements * st.grad


def zero2_first_reduce_grad_bytes(model: ModelSpec, combo: Combination, st: Storage) -> int:
    """The LM head's full gradient at ZeRO-2's first gradient reduction (0 when that moment adds nothing) [DS].
    DeepSpeed partitions the flattened parameters in module order, so the last rank's partition holds the LM head,
    whose gradient is the first of backward; at its first reduction stage 2 allocates that rank's whole contiguous
    gradient partition (stage_1_and_2.DeepSpeedZeroOptimizer.copy_grads_in_partition: grads_in_partition,
    partition numel x model dtype) while every activation but the loss's is still saved and the head's full
    gradient is alive until its bucket is reduced. Measured (llama-gqa-100m full ZeRO-2 x2, CPU): rank 1 peaks
    there (190 MiB partition + 94 MiB head gradient over ~250 MiB of activations), rank 0 at the loss."""
    if combo.zero != 2 or combo.offload is not Offload.NONE or combo.lora:
        return 0
    return model.vocab_size * (model.embed_dim or model.hidden_size) * st.grad


def zero3_gradient_buffer(combo: Combination) -> bool:
    """Whether ZeRO-3 keeps its gradient partition in a resident device buffer [DS]: a flat buffer of partition
    numel x gradient_accumulation_dtype (the model dtype) allocated once when the engine is built and kept for the
    whole run (stage3.DeepSpeedZeroOptimizer_Stage3._setup_for_real_optimizer: grad_partitions_flat_buffer);
    with optimizer offload it lives on the offload device (host RAM). Measured: llama-gqa-100m full ZeRO-3 x2
    holds this 190 MiB block at its step-2 backward peak (tests/estimate/test_zero3_buffers.py reads it off a real
    engine)."""
    return combo.zero == 3 and combo.offload is Offload.NONE


def gradients_resident(setup: TrainingSetup, combo: Combination) -> bool:
    """Whether the gradient bytes are held through forward as well as after backward: kept between micro-batches
    under gradient accumulation, or ZeRO-3's resident partition buffer."""
    return setup.grad_accum > 1 or zero3_gradient_buffer(combo)


def stage3_live_params(model: ModelSpec) -> int:
    """Parameters ZeRO-3 keeps gathered at once [DS]: DeepSpeed releases gathered parameters once more than
    stage3_max_live_parameters are live, and it cannot hold more than the model has: min(limit, parameters).
    (It gathers per submodule, so a single linear beyond the limit would still be gathered whole; the largest
    linear of the presets, 405B's MLP at 0.87e9, is under it.)"""
    return min(model.param_count(), STAGE3_MAX_LIVE_PARAMETERS)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---- the peak ---------------------------------------------------------------------------------------------------
def memory(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, on_gpu: bool = True
) -> tuple[MemoryBreakdown, str, int]:
    """(breakdown at the peak, phase name, host RAM per node) for one GPU.

    Candidate peaks: (1) start of backward — all activations and the loss tensors, with gradients only if gradient
    accumulation keeps them between micro-batches or ZeRO-3 holds them in its resident buffer; (2) end of backward
    — all gradients plus the last layer's activations; (2b) ZeRO-2's first gradient reduction
    (zero2_first_reduce_grad_bytes); (2c) DoRA's weight norm in forward (estimate/dora.py); (3) optimizer step — gradients plus the step's temporaries (DeepSpeed converts the
    16-bit gradient partition to fp32). Weights, master copy and Adam states are resident throughout (after the
    first step)."""
    st = storage(setup.precision, combo)
    s = zero_states(model, setup, combo, st, on_gpu)
    acts, one_layer = activation_bytes(model, setup, combo, st)
    head_cast = head_cast_bytes(model, combo, st)
    logits = logits_loss_bytes(model, st, setup.tokens_per_micro_batch) + head_cast
    # a quantized matmul dequantizes its weight for the duration of the op (forward and backward) [quant]
    dequant = (
        q8.dequant_temp_bytes(model, combo, compute_bytes(setup.precision)) if combo.quant is not Quant.NONE else 0
    )
    static = dict(weights=s.weights, master_weights=s.master, optimizer_states=s.optim, engine_buffers=s.buffers)
    grads_during_fwd = s.grads if gradients_resident(setup, combo) else 0
    train = trainable_params(model, combo)
    step_temp = _ceil_div(train * 4, setup.world_size) if combo.uses_deepspeed and combo.offload is Offload.NONE else 0
    if combo.optim is not Optim.ADAMW:
        step_temp = q8.bnb_step_temp_bytes(model, combo, on_gpu)
    elif not combo.uses_deepspeed:
        step_temp = adamw_step_temp_bytes(train, st, setup)
    held = held_logits_bytes(model, setup, st)
    kv_start, kv_held = (layout.kv_cache_bytes(model, setup, combo, st, start) for start in (True, False))
    tied = tied_embedding_grad_bytes(model, combo, st, setup.world_size)
    first_reduce = zero2_first_reduce_grad_bytes(model, combo, st)
    candidates = [
        (  # GC + autocast: the loss is computed while autocast's cache holds every layer's weight casts
            "forward/backward",
            MemoryBreakdown(
                **static,
                gradients=grads_during_fwd,
                activations=gc_loss_moment_activation_bytes(model, setup, combo, st),
                logits_loss=logits_forward_bytes(model, st, setup.tokens_per_micro_batch) + head_cast + held,
                temporaries=dequant,
            ),
        ),
        (
            "forward/backward",
            MemoryBreakdown(
                **static,
                gradients=grads_during_fwd,
                activations=acts + kv_start,
                logits_loss=logits + held,
                temporaries=dequant,
            ),
        ),
        (  # GC: the last layer recomputed in backward, after ZeRO-2's first reduction allocated its partition
            "forward/backward",
            MemoryBreakdown(
                **static,
                gradients=s.grads if combo.zero == 2 and combo.offload is Offload.NONE else grads_during_fwd,
                activations=gc_recompute_activation_bytes(model, setup, combo, st),
                logits_loss=held,
                temporaries=dequant,
            ),
        ),
        (
            "end of backward",
            MemoryBreakdown(
                **static, gradients=s.grads, activations=one_layer + kv_held, logits_loss=held, temporaries=dequant
            ),
        ),
        (
            "backward, first reduction",
            MemoryBreakdown(
                **static, gradients=s.grads if first_reduce else 0, activations=acts, temporaries=first_reduce + dequant
            ),
        ),
        (
            "end of backward",
            MemoryBreakdown(**static, gradients=s.grads, activations=kv_held, logits_loss=held, temporaries=tied),
        ),
        (
            "optimizer step",
            MemoryBreakdown(**static, gradients=s.grads, activations=kv_held, logits_loss=held, temporaries=step_temp),
        ),
    ]
    dora_temp = dora.weight_norm_temp_bytes(model, combo, st)
    candidates += dora.peak_candidates(
        static, (grads_during_fwd, s.grads), (acts + kv_start, one_layer), combo.gc, dora_temp
    )
    phase, bd = max(candidates, key=lambda c: c[1].total())
    cpu_per_node = s.cpu_bytes * setup.gpus_per_node
    return bd, phase, cpu_per_node


def device_bytes(reserved: int, combo: Combination, is_cpu: bool, world_size: int = 1) -> int:
    """What the device shows: the caching allocator's reserved peak (estimate/allocator.py) + CUDA context + NCCL
    buffers under DeepSpeed (which sets up NCCL even on one GPU) or plain DDP over several GPUs (stated
    constants)."""
    if is_cpu:
        return reserved
    nccl = NCCL_BUFFER_BYTES if combo.uses_deepspeed or world_size > 1 else 0
    return reserved + CUDA_CONTEXT_BYTES + nccl
