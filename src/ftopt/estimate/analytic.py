"""Analytic per-GPU memory model: small named formulas, instant, each citing where it comes from.

The training states (weights, gradients, master copy, optimizer states, with ZeRO's partitioning, and the engines'
buffers) are here, with the peak: the largest of the step's candidate moments, each summing the states and the
activations alive then (estimate/activations.py). Conventions: every function returns bytes (int) per GPU;
`tokens` = micro_batch x seq_len. Sources:
  [ZeRO]   Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models":
           mixed-precision Adam holds 2 + 2 + K bytes per parameter (16-bit weights, 16-bit grads, K = 12 for the
           fp32 master copy, momentum and variance); stage 1/2/3 partition K, then grads, then weights over N GPUs.
  [DS]     DeepSpeed 0.19 runtime: 16-bit training casts the whole module to 16 bits and keeps the fp32 master copy
           in the ZeRO optimizer; reduce bucket = hidden^2 and stage-3 prefetch = 0.9*hidden^2 elements (the values
           Hugging Face's "auto" DeepSpeed config fills in, spec/dsconfig.hf_auto_zero_sizes).
  [autocast] estimate/autocast.py: the weight casts torch autocast caches, with and without GC.
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
from ftopt.estimate.activations import (
    activation_bytes,
    first_layer_backward_moments,
    gc_loss_moment_activation_bytes,
    gc_recompute_activation_bytes,
    held_logits_bytes,
    logits_forward_bytes,
    logits_loss_bytes,
    tied_embedding_grad_bytes,
)
from ftopt.estimate.autocast import head_cast_bytes
from ftopt.estimate.layer_backward import layer_trained_params
from ftopt.estimate.result import MemoryBreakdown
from ftopt.spec import AdamWKernel, Combination, LinearGroup, ModelSpec, Offload, Optim, Quant, TrainingSetup
from ftopt.spec.dsconfig import STAGE3_MAX_LIVE_PARAMETERS, hf_auto_zero_sizes
from ftopt.spec.policy import Storage, compute_bytes, dora_magnitude_params, lora_targets, storage
from ftopt.spec.units import ceil_div

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
        master, optim = ceil_div(master, n), ceil_div(optim, n)
    if combo.zero >= 2:
        grads = ceil_div(grads, n)
        buffers += reduce_bucket_bytes(model, combo, st)
    if combo.zero == 3:
        weights = ceil_div(weights, n)
        # Gathered parameters stay live until their reuse distance exceeds stage3_max_reuse_distance, up to
        # stage3_max_live_parameters elements: both default to 1e9 in DeepSpeed 0.19 (and HF's "auto" config leaves
        # them), so a model under 1e9 parameters stays fully gathered through forward and backward [DS]; at least
        # the current layer and the prefetched next one are live.
        buffers += stage3_live_params(model) * st.frozen_weight
    if combo.offload in (Offload.OPTIMIZER, Offload.ALL):
        # ZeRO-Offload keeps master + Adam states and an fp32 gradient partition in host RAM; Adam runs on the CPU.
        cpu += master + optim + ceil_div(train * 4, n)
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


# ---- the peak ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shared:
    """Bytes per GPU that several candidate moments hold alike."""

    static: dict[str, int]  # weights, master copy, optimizer states, engine buffers: resident throughout
    grads: int  # every gradient (the rank's partition under ZeRO-2/3), once backward has produced it
    grads_fwd: int  # the gradients already held in forward (gradients_resident), else 0
    acts: int  # every saved activation at the start of backward (under GC: the checkpoints)
    one_layer: int  # one layer's saved activations
    recompute: int  # activations while backward recomputes the last layer under GC (gc_recompute_activation_bytes)
    held: int  # logits a loop that keeps the model's outputs holds beyond the loss (held_logits_bytes)
    dequant: int  # a quantized matmul's dequantized weight, alive for the op (forward and backward) [quant]
    kv_start: int  # the KV cache kept outputs hold beyond the saved activations, at the start of backward
    kv_held: int  # the same cache once backward has freed the activations (layout.kv_cache_bytes)


def memory(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, on_gpu: bool = True
) -> tuple[MemoryBreakdown, str, int]:
    """(breakdown at the peak, phase name, host RAM per node) for one GPU.

    Candidate peaks: (1) start of backward — all activations and the loss tensors, with gradients only if gradient
    accumulation keeps them between micro-batches or ZeRO-3 holds them in its resident buffer; (1b) under GC, the
    last layer's recomputed backward (activations.gc_recompute_activation_bytes); (2) the first layer's backward —
    its saved tensors (under GC, recomputed) and backward's moments beside the gradients formed by then
    (_first_layer_moments), and the end of backward, every gradient; (2b) ZeRO-2's first gradient reduction
    (zero2_first_reduce_grad_bytes); (2c) DoRA's weight norm in forward (estimate/dora.py); (3) optimizer step —
    gradients plus the step's temporaries (DeepSpeed converts the 16-bit gradient partition to fp32). Weights,
    master copy and Adam states are resident throughout (after the first step). On a tie the earliest candidate
    names the phase."""
    st = storage(setup.precision, combo)
    s = zero_states(model, setup, combo, st, on_gpu)
    acts, one_layer = activation_bytes(model, setup, combo, st, on_gpu)
    dequant = (
        q8.dequant_temp_bytes(model, combo, compute_bytes(setup.precision)) if combo.quant is not Quant.NONE else 0
    )
    shared = _Shared(
        static=dict(weights=s.weights, master_weights=s.master, optimizer_states=s.optim, engine_buffers=s.buffers),
        grads=s.grads,
        grads_fwd=s.grads if gradients_resident(setup, combo) else 0,
        acts=acts,
        one_layer=one_layer,
        recompute=gc_recompute_activation_bytes(model, setup, combo, st, on_gpu),
        held=held_logits_bytes(model, setup, st),
        dequant=dequant,
        kv_start=layout.kv_cache_bytes(model, setup, combo, st, True),
        kv_held=layout.kv_cache_bytes(model, setup, combo, st, False),
    )
    candidates = _forward_backward_moments(model, setup, combo, st, shared, on_gpu)
    candidates += _end_of_backward_moments(model, setup, combo, st, shared, on_gpu)
    dora_temp = dora.weight_norm_temp_bytes(model, combo, st)
    candidates += dora.peak_candidates(
        shared.static, (shared.grads_fwd, s.grads), (acts + shared.kv_start, one_layer), combo.gc, dora_temp
    )
    phase, bd = max(candidates, key=lambda c: c[1].total())
    return bd, phase, s.cpu_bytes * setup.gpus_per_node


def _forward_backward_moments(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, sh: _Shared, on_gpu: bool
) -> list[tuple[str, MemoryBreakdown]]:
    """The moments from the loss to the last layer's recomputation, where the activations peak."""
    tokens = setup.tokens_per_micro_batch
    head_cast = head_cast_bytes(model, combo, st)
    return [
        (  # GC + autocast: the loss is computed while autocast's cache holds every layer's weight casts
            "forward/backward",
            MemoryBreakdown(
                **sh.static,
                gradients=sh.grads_fwd,
                activations=gc_loss_moment_activation_bytes(model, setup, combo, st, on_gpu),
                logits_loss=logits_forward_bytes(model, st, tokens) + head_cast + sh.held,
                temporaries=sh.dequant,
            ),
        ),
        (  # start of backward: every saved activation and the loss's fp32 tensors
            "forward/backward",
            MemoryBreakdown(
                **sh.static,
                gradients=sh.grads_fwd,
                activations=sh.acts + sh.kv_start,
                logits_loss=logits_loss_bytes(model, st, tokens) + head_cast + sh.held,
                temporaries=sh.dequant,
            ),
        ),
        (  # GC: the last layer recomputed in backward, after ZeRO-2's first reduction allocated its partition
            "forward/backward",
            MemoryBreakdown(
                **sh.static,
                gradients=sh.grads if combo.zero == 2 and combo.offload is Offload.NONE else sh.grads_fwd,
                activations=sh.recompute,
                logits_loss=sh.held,
                temporaries=sh.dequant,
            ),
        ),
    ]


def _end_of_backward_moments(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, sh: _Shared, on_gpu: bool
) -> list[tuple[str, MemoryBreakdown]]:
    """The moments once the gradients exist: the end of backward, ZeRO-2's first reduction and the step."""
    first_reduce = zero2_first_reduce_grad_bytes(model, combo, st)
    tied = tied_embedding_grad_bytes(model, combo, st, setup.world_size)
    common = dict(**sh.static, logits_loss=sh.held)
    first_layer = _first_layer_moments(model, setup, combo, st, sh, on_gpu)
    return first_layer + [
        (
            "backward, first reduction",
            MemoryBreakdown(
                **sh.static,
                gradients=sh.grads if first_reduce else 0,
                activations=sh.acts,
                temporaries=first_reduce + sh.dequant,
            ),
        ),
        ("end of backward", MemoryBreakdown(**common, gradients=sh.grads, activations=sh.kv_held, temporaries=tied)),
        (
            "optimizer step",
            MemoryBreakdown(
                **common,
                gradients=sh.grads,
                activations=sh.kv_held,
                temporaries=step_temp_bytes(model, setup, combo, st, on_gpu),
            ),
        ),
    ]


def _first_layer_moments(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, sh: _Shared, on_gpu: bool
) -> list[tuple[str, MemoryBreakdown]]:
    """Backward through the first layer, moment by moment (activations.first_layer_backward_moments), beside the
    gradients formed by then (pending_grad_bytes): the trace's peak for full fine-tuning under GC. Without GC the
    input side's gradients (an untied token table: neox-160m's, 147 MiB in fp32) are not formed yet while the
    first layer's tensors are held (the formulas used to count every gradient beside them: neox-160m full
    fine-tuning fp32, +0.97% against a measured CPU peak the trace matches)."""
    return [
        (
            "forward/backward",
            MemoryBreakdown(
                **sh.static,
                logits_loss=sh.held,
                gradients=sh.grads - pending_grad_bytes(model, setup, combo, st, done),
                activations=acts + sh.kv_held,
                temporaries=sh.dequant,
            ),
        )
        for acts, done in first_layer_backward_moments(model, setup, combo, st, on_gpu)
    ]


def pending_grad_bytes(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, done: frozenset[LinearGroup]
) -> int:
    """Gradients backward has not formed yet at a moment of the first layer's backward: that layer's
    linears whose backward has not run (`done`: those that have, layer_backward.layer_backward_moments) and the input
    side's, whose lookup's backward comes last (a trained token table, untied, and a learned position table;
    OPT's projections are left counted). A tied table's gradient is not pending: the LM head's partial gradient of
    it waits in autograd's input buffer, the same bytes. Counted only where gradients are formed as backward goes
    and held whole: not ZeRO-2's partition or ZeRO-3's buffer, nor gradients accumulation keeps."""
    if combo.zero >= 2 or gradients_resident(setup, combo):
        return 0
    layer = layer_trained_params(model, combo, frozenset(LinearGroup) - done)
    table = 0 if model.tie_embeddings else model.vocab_size * (model.embed_dim or model.hidden_size)
    inputs = 0 if combo.lora else table + model.learned_positions * model.hidden_size
    return (layer + inputs) * st.grad


def step_temp_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, on_gpu: bool) -> int:
    """Temporaries of the optimizer step beyond the states: DeepSpeed's fp32 copy of the rank's gradient partition
    (on the device unless offloaded) [DS], a bitsandbytes optimizer's [quant], or torch AdamW's
    (adamw_step_temp_bytes)."""
    if combo.optim is not Optim.ADAMW:
        return q8.bnb_step_temp_bytes(model, combo, on_gpu)
    if not combo.uses_deepspeed:
        return adamw_step_temp_bytes(trainable_params(model, combo), st, setup)
    return ceil_div(trainable_params(model, combo) * 4, setup.world_size) if combo.offload is Offload.NONE else 0


def device_bytes(reserved: int, combo: Combination, is_cpu: bool, world_size: int = 1) -> int:
    """What the device shows: the caching allocator's reserved peak (estimate/allocator.py) + CUDA context + NCCL
    buffers under DeepSpeed (which sets up NCCL even on one GPU) or plain DDP over several GPUs (stated
    constants)."""
    if is_cpu:
        return reserved
    nccl = NCCL_BUFFER_BYTES if combo.uses_deepspeed or world_size > 1 else 0
    return reserved + CUDA_CONTEXT_BYTES + nccl
