"""Analytic time model: FLOPs per step over achieved FLOP/s, plus exposed communication and offload.

Sources:
  [Kaplan]  Kaplan et al. 2020 / Narayanan et al. 2021: forward ~ 2 FLOPs per matmul parameter per token; the
            attention scores add 2 * 2 * s * (heads*head_dim) per layer per token (QK^T and PV).
  [Backward] weight-gradient and input-gradient matmuls each cost one forward: 2x forward for trained weights,
            1x (input gradient only) for frozen weights under LoRA.
  [GC]      checkpointing recomputes the forward once more during backward (Chen et al. 2016); Hugging Face
            checkpoints only the decoder layers (modeling_layers.GradientCheckpointingLayer), not the LM head.
  [ZeRO]    communication per step (ZeRO paper sec. 7): all-reduce of 2(N-1)/N x gradient bytes for DP and ZeRO-1,
            once per step; ZeRO-2/3 reduce-scatter (N-1)/N x gradient bytes every micro-batch (gradient_sync_bytes),
            ZeRO-2 all-gathers the updated weights once, ZeRO-3 all-gathers them in forward and backward.
  [Offload] Ren et al. 2021 (ZeRO-Offload): gradients go to the host and updated 16-bit weights come back each
            step over PCIe; Adam runs on the CPU (CPU_ADAM_PARAMS_PER_S below).
  [NCCL]    nccl-tests doc/PERFORMANCE.md: a ring all-reduce moves 2(N-1)/N x the data through every rank, at the
            bus bandwidth of the slowest hop; across nodes NCCL runs one ring per NIC, so on rail-optimised
            clusters (one NIC per GPU) that hop is each GPU's own NIC, not the node's NICs divided among its GPUs.
  [Operators] each dispatched operator costs a fixed time whatever its size (estimate/kernels.py counts them per
            family); exposed when kernels are short: small models, short sequences, CPUs. Calibrated per hardware.
  [Dequant] a 4-bit/int8 matmul dequantizes its whole weight first (bitsandbytes _gemm_4bit_default_impl; the
            CUDA path of MatMul4Bit for batches > 1 does the same with its dequantize kernel), in forward, backward
            and GC's recomputation. The dequantization is memory-bound: it reads the quantized weight and writes
            the 16-bit one. GPU assumption: it runs at the HBM bandwidth (no overlap with the matmuls); on a CPU the
            same bytes at the CPU's memory bandwidth. This is why QLoRA steps are slower than LoRA's (QLoRA paper
            reports the same, sec. 4 / appendix).
  [Optimizer] the AdamW update is memory-bound: per trainable parameter it reads weight, gradient and both
            states and writes weight and states: 28 bytes with fp32 states, 4+4+2+4+2 = 16 with 8-bit ones (plus
            the block constants); at the HBM bandwidth. Paged states that were evicted come back over the host link
            each step (assumed: one picks a paged optimizer only when states do not stay resident).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftopt.estimate import fsdp
from ftopt.estimate import quant as q8
from ftopt.estimate.analytic import trainable_params
from ftopt.estimate.kernels import kernels_per_step
from ftopt.estimate.layout import sdpa_gets_mask
from ftopt.spec import Attention, Combination, HardwareSpec, ModelSpec, Offload, Quant, TrainingSetup
from ftopt.spec.policy import lora_targets, storage

# Fraction of gradient communication hidden behind backward compute by bucketed, overlapped reduction (DeepSpeed
# overlap_comm=true). A stated assumption: calibrate with `ftopt bench` on the target cluster.
COMM_OVERLAP_FRACTION = 0.5
# DeepSpeedCPUAdam throughput per node (AVX-512, ~1 B params/s per socket, ZeRO-Offload paper Fig. 9). Assumption.
CPU_ADAM_PARAMS_PER_S = 2e9


@dataclass(frozen=True)
class StepTime:
    flops_per_step: float  # per GPU
    compute_seconds: float
    comm_seconds: float  # exposed (not overlapped) communication + offload per step
    kernels_per_step: int  # dispatched operators per step per GPU [Operators]
    overhead_seconds: float  # per-operator + fixed framework + DeepSpeed engine cost per step (calibrated)
    step_seconds: float


def lm_head_flops_per_token(model: ModelSpec) -> float:
    """The LM head's matmul, forward, per token [Kaplan] (tied or not, it runs)."""
    return float(2 * model.vocab_size * (model.embed_dim or model.hidden_size))


def forward_flops_per_token(
    model: ModelSpec, seq_len: int, attn: Attention, masked: bool = False
) -> tuple[float, float]:
    """(matmul FLOPs of trained-or-frozen weights, attention-score FLOPs), per token, forward only [Kaplan].
    Causal kernels (sdpa, flash) skip the masked half of the score matrix; eager, and sdpa given a mask (`masked`:
    packed rows, estimate/layout.py), compute it all. Packed flash runs each document causally, at most half of
    the seq_len x seq_len scores: counted as half (an upper bound, document lengths unknown)."""
    linear = 2 * model.num_layers * sum(
        lin.in_features * lin.out_features for lin in model.layer_linears()
    ) + lm_head_flops_per_token(model)
    causal_factor = 1.0 if attn is Attention.EAGER or masked else 0.5
    attention = 2 * 2 * seq_len * model.q_dim * model.num_layers * causal_factor
    return float(linear), float(attention)


def step_flops(model: ModelSpec, setup: TrainingSetup, combo: Combination) -> float:
    """FLOPs per optimizer step per GPU: forward + backward (+ recomputation under GC)."""
    lin, att = forward_flops_per_token(model, setup.seq_len, combo.attn, sdpa_gets_mask(setup, combo))
    fwd = lin + att
    if combo.lora:
        # frozen base: input gradient only (1x); adapters: 2x their (small) forward; attention always 2x.
        targets = set(lora_targets(model, combo))
        adapters = (
            2
            * model.num_layers
            * sum(combo.lora_r * (l.in_features + l.out_features) for l in model.layer_linears() if l.name in targets)
        )
        fwd += adapters
        bwd = lin + 2 * att + 2 * adapters
    else:
        bwd = 2 * fwd
    # Hugging Face checkpoints the decoder layers only (GradientCheckpointingLayer): the LM head is not re-run.
    recompute = fwd - lm_head_flops_per_token(model) if combo.gc else 0.0
    tokens = setup.tokens_per_micro_batch * setup.grad_accum
    return (fwd + bwd + recompute) * tokens


def per_gpu_bandwidth(hw: HardwareSpec, setup: TrainingSetup) -> float:
    """Bytes/s each rank's collectives run at [NCCL]: NVLink/PCIe within one node; across nodes the slower of that
    and the GPU's share of the network (`inter_node_bandwidth_per_gpu_bytes_per_s`, per GPU NIC in the presets)."""
    if setup.nodes == 1:
        return hw.intra_node_bandwidth_bytes_per_s
    return min(hw.intra_node_bandwidth_bytes_per_s, hw.inter_node_bandwidth_per_gpu_bytes_per_s)


def gradient_sync_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination) -> float:
    """Bytes each rank sends per optimizer step to synchronize gradients [ZeRO], [NCCL]. Plain data parallel and
    ZeRO-1 all-reduce the accumulated gradients once, at the accumulation boundary (accelerate's no_sync; DeepSpeed
    engine.allreduce_gradients only when is_gradient_accumulation_boundary): 2(N-1)/N x gradients. ZeRO-2/3
    reduce-scatter every micro-batch's gradients into the rank's partition, which holds reduced gradients only
    (stage_1_and_2 / stage3 reduce_ready_partitions_and_remove_grads in each backward): (N-1)/N x gradients x
    grad_accum; ZeRO-2 then all-gathers the updated 16-bit weights once per step, (N-1)/N x weights (ZeRO-3
    gathers them in forward and backward instead, counted in comm_seconds)."""
    n = setup.world_size
    st = storage(setup.precision, combo)
    train = trainable_params(model, combo)
    if combo.zero < 2:
        return 2 * (n - 1) / n * train * st.grad
    reduce_scatter = (n - 1) / n * train * st.grad * setup.grad_accum
    return reduce_scatter + ((n - 1) / n * train * st.trainable_weight if combo.zero == 2 else 0)


def comm_seconds(model: ModelSpec, setup: TrainingSetup, combo: Combination, hw: HardwareSpec) -> float:
    """Exposed communication and offload transfer time per optimizer step, per GPU [ZeRO], [Offload]."""
    n = setup.world_size
    st = storage(setup.precision, combo)
    train = trainable_params(model, combo)
    seconds = 0.0
    if n > 1:
        bw = per_gpu_bandwidth(hw, setup)
        seconds += gradient_sync_bytes(model, setup, combo) / bw * (1 - COMM_OVERLAP_FRACTION)
        if combo.zero == 3:
            # forward and backward all-gathers of all 16-bit weights (and once more to recompute under GC)
            gathers = 2 + (1 if combo.gc else 0)
            seconds += gathers * (n - 1) / n * model.param_count() * st.frozen_weight / bw * setup.grad_accum
    if combo.offload is not Offload.NONE:
        part = train / n
        seconds += (part * 2 + part * 2) / hw.host_link_bandwidth_bytes_per_s  # grads down, 16-bit weights up
        seconds += part * setup.gpus_per_node / CPU_ADAM_PARAMS_PER_S  # CPU Adam shared by the node's GPUs
    if combo.offload is Offload.ALL:
        gathers = 2 + (1 if combo.gc else 0)
        seconds += (
            gathers * model.param_count() / n * st.frozen_weight / hw.host_link_bandwidth_bytes_per_s * setup.grad_accum
        )
    return seconds


ADAMW_BYTES_PER_PARAM = 28  # fp32 p, g, m, v read + p, m, v written [Optimizer]
ADAMW_8BIT_BYTES_PER_PARAM = 16  # fp32 p, g read + p written, uint8 m, v read and written [Optimizer]


def dequant_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination) -> float:
    """Bytes the dequantization of the quantized base moves per step: once per matmul pass (forward, backward,
    GC recompute), reading the quantized weight and writing the 16-bit one [Dequant]."""
    if combo.quant is Quant.NONE:
        return 0.0
    per_weight = (0.5 if combo.quant.four_bit else 1.0) + 2.0  # read quantized, write the 16-bit weight
    passes = (3 if combo.gc else 2) * setup.grad_accum
    return passes * q8.quantized_params(model) * per_weight


def dequant_seconds(model: ModelSpec, setup: TrainingSetup, combo: Combination, hw: HardwareSpec) -> float:
    return dequant_bytes(model, setup, combo) / (hw.time_constants.dequant_bytes_per_s or hw.hbm_bandwidth_bytes_per_s)


def optimizer_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination) -> float:
    """Bytes the AdamW update moves per step per GPU (its ZeRO share of the states) [Optimizer]; 0 with
    offload (Adam runs on the host: comm_seconds counts it)."""
    if combo.offload is not Offload.NONE:
        return 0.0
    per_param = ADAMW_8BIT_BYTES_PER_PARAM if combo.optim.eight_bit else ADAMW_BYTES_PER_PARAM
    share = setup.world_size if combo.zero >= 1 or combo.uses_fsdp else 1  # FSDP2 steps each rank's shard
    return trainable_params(model, combo) / share * per_param


def optimizer_seconds(model: ModelSpec, setup: TrainingSetup, combo: Combination, hw: HardwareSpec) -> float:
    """The update's memory traffic at the device's rate (bitsandbytes' own rate for 8-bit states where measured),
    plus paged states brought back over the host link."""
    tc = hw.time_constants
    rate = (tc.bnb_optimizer_bytes_per_s if combo.optim.eight_bit else None) or hw.hbm_bandwidth_bytes_per_s
    seconds = optimizer_bytes(model, setup, combo) / rate
    if combo.optim.paged and not hw.is_cpu and combo.offload is Offload.NONE:
        seconds += 2 * q8.bnb_optimizer_bytes(model, combo, on_gpu=True)[1] / hw.host_link_bandwidth_bytes_per_s
    return seconds


def step_time(model: ModelSpec, setup: TrainingSetup, combo: Combination, hw: HardwareSpec) -> StepTime:
    """Compute at the achieved FLOP/s, plus exposed communication, plus the overheads per step: per dispatched
    operator [Operators], a fixed framework cost, and the DeepSpeed engine's per-stage cost (collective latency,
    partition bookkeeping). mfu and the overheads are the hardware's time constants (hw.time_constants: the
    shipped default, overheads 0, until `ftopt bench` calibrates them)."""
    tc = hw.time_constants
    flops = step_flops(model, setup, combo)
    peak = hw.flops_for(setup.precision.compute_dtype) or hw.flops_for("fp32")
    compute = (
        flops / (peak * tc.mfu) + dequant_seconds(model, setup, combo, hw) + optimizer_seconds(model, setup, combo, hw)
    )
    if combo.uses_fsdp:  # FSDP2's all-gathers and reduce-scatters, hidden behind compute as it prefetches
        bw = per_gpu_bandwidth(hw, setup)
        comm = fsdp.comm_seconds(model, setup, combo, hw, compute, bw, CPU_ADAM_PARAMS_PER_S)
    else:
        comm = comm_seconds(model, setup, combo, hw)
    kernels = kernels_per_step(model, setup, combo)
    engine = tc.zero_step_seconds.get(combo.zero, 0.0) if combo.zero else 0.0
    engine += tc.fsdp_step_seconds.get(combo.fsdp.value, 0.0)  # FSDP2's, calibrated by bench like ZeRO's
    overhead = kernels * tc.seconds_per_kernel + tc.fixed_step_seconds + engine
    return StepTime(flops, compute, comm, kernels, overhead, compute + comm + overhead)
