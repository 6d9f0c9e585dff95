"""Each memory term against a hand-worked llama-2-7b example, and ZeRO scaling with GPU count."""

import pytest

from ftopt.estimate import activations, analytic, estimate, layer_saved
from ftopt.spec import Combination, Precision, TrainingSetup, load_hardware, load_model
from ftopt.spec.errors import FtoptError
from ftopt.spec.policy import storage

P = 6_738_415_616  # llama-2-7b parameters
H, L, I, V = 4096, 32, 11008, 32000


@pytest.fixture(scope="module")
def m7():
    return load_model("llama-2-7b")


def states(m, combo, n=1, precision=Precision.BF16_MIXED):
    setup = TrainingSetup(gpus_per_node=n, precision=precision)
    return analytic.zero_states(m, setup, combo, analytic.storage(precision, combo))


def test_trainer_mixed_full_is_16_bytes_per_param(m7):
    s = states(m7, Combination())
    assert (s.weights, s.grads, s.optim, s.master) == (4 * P, 4 * P, 8 * P, 0)


def test_deepspeed_is_2_2_12_bytes_per_param(m7):
    # [ZeRO] 2 + 2 + K with K = 12 (4 master + 8 Adam) on one GPU with stage 1.
    s = states(m7, Combination(zero=1))
    assert (s.weights, s.grads, s.master, s.optim) == (2 * P, 2 * P, 4 * P, 8 * P)


def test_bf16_true_and_fp32(m7):
    s = states(m7, Combination(), precision=Precision.BF16_TRUE)
    assert (s.weights, s.grads, s.optim) == (2 * P, 2 * P, 4 * P)
    s = states(m7, Combination(), precision=Precision.FP32)
    assert (s.weights, s.grads, s.optim) == (4 * P, 4 * P, 8 * P)


def test_bf16_true_rejected_with_deepspeed(m7):
    with pytest.raises(FtoptError, match="bf16-true"):
        states(m7, Combination(zero=2), precision=Precision.BF16_TRUE)


def test_lora_trainable_count_and_storage(m7):
    lora = 32 * 4 * 16 * (4096 + 4096)  # q,k,v,o of every layer, A (r x in) + B (out x r)
    assert analytic.trainable_params(m7, Combination(lora_r=16)) == lora == 16_777_216
    s = states(m7, Combination(lora_r=16))
    assert s.weights == P * 2 + lora * 4  # every base weight frozen in bf16, the adapters beside them in fp32
    assert (s.grads, s.optim) == (4 * lora, 8 * lora)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_zero_scaling(m7, n):
    s1, s2, s3 = (states(m7, Combination(zero=z), n) for z in (1, 2, 3))
    ceil = lambda a: -(-a // n)
    assert s1.optim == ceil(8 * P) and s1.master == ceil(4 * P) and s1.grads == 2 * P and s1.weights == 2 * P
    assert s2.grads == ceil(2 * P) and s2.weights == 2 * P
    assert s3.weights == ceil(2 * P) and s3.grads == ceil(2 * P) and s3.optim == ceil(8 * P)


def test_offload_moves_states_to_host(m7):
    s = states(m7, Combination(zero=3, offload="all"), n=8)
    assert s.weights == 0 and s.optim == 0 and s.master == 0
    assert s.cpu_bytes == -(-12 * P // 8) + -(-4 * P // 8) + -(-2 * P // 8)


def test_lora_activation_terms_hand_worked(m7):
    # HF Trainer, bf16 autocast, LoRA on q,k,v,o, sdpa, per token per layer:
    #   2 RMSNorms x fp32 upcast (4h) and fp32 1/rms (4) = 32776
    #   q/k/v adapters each save their own bf16 copy of the norm output (PEFT casts it to the fp32 adapter's
    #   dtype, autocast casts that back)          = 3 * 8192 = 24576
    #   sdpa: q, k, v, out in bf16 + fp32 lse/head = 2*(2*4096 + 2*4096) + 4*32 = 32896
    #   o adapter saves the attention output      =  8192
    #   SwiGLU: gate, act, up outputs (down frozen) = 2*3*11008 = 66048
    #   each lora_B saves its lora_A's r-wide bf16 output = 4 * 16 * 2 = 128
    # plus, per layer, autocast's cached bf16 casts of the fp32 adapters: 2 B x 16 x (4 x 8192) = 1048576
    combo = Combination(lora_r=16, attn="sdpa")
    st = analytic.storage(Precision.BF16_MIXED, combo)
    assert layer_saved.layer_activation_bytes_per_token(m7, combo, st, 2048) == 164_616
    acts, one = activations.activation_bytes(m7, TrainingSetup(seq_len=2048), combo, st)
    assert one == 164_616 * 2048 + 1_048_576
    # the first layer reads the frozen embeddings' output, which needs no gradient: its input norm keeps nothing
    # (4H + 4 per token: the final norm's fp32 upcast and 1/rms, which the head adds, are the same bytes) and
    # q/k/v's lora_A keep no bf16 cast of their fp32 weight (3 x 2 B x 16 x 4096)
    first = one - (4 * H + 4) * 2048 - 3 * 2 * 16 * H
    assert acts == 31 * one + first + (4 * H + 4) * 2048 == 32 * one - 393_216
    # fp32 upcast, log_softmax output and the two fp32 gradients; the bf16 logits are dead by backward
    assert activations.logits_loss_bytes(m7, st, 2048) == 2048 * V * 12


def test_fp32_activation_terms_hand_worked(m7):
    # fp32 (no autocast), sdpa, per token per layer. LoRA r16 on q,k,v,o:
    #   2 RMSNorms: the input pow() saves (fp32 already: no copy), 4h, and 1/rms = 2 * 16388 = 32776
    #   q/k/v's lora_A save the norm output they share (adapters fp32: no cast) = 4 * 4096 = 16384
    #   sdpa: q, k, v, out in fp32 + fp32 lse per head = 4*(2*4096 + 2*4096) + 4*32 = 65664
    #   o's lora_A saves the attention output: SDPA's saved `out`, counted above   = 0
    #   SwiGLU: gate, act, up outputs (down frozen) = 4*3*11008                  = 132096
    #   each lora_B saves its lora_A's r-wide fp32 output = 4 * 16 * 4           = 256
    lora = Combination(lora_r=16, attn="sdpa")
    st = analytic.storage(Precision.FP32, lora)
    assert layer_saved.layer_activation_bytes_per_token(m7, lora, st, 2048) == 247_176
    # full fine-tuning, same kernel:
    #   2 RMSNorms: input (4h), 1/rms (4), the normalized input `weight * x` saves (4h) = 2 * 32772 = 65544
    #   q/k/v save the norm's output (the product: not a tensor the norm saves), once  = 16384
    #   sdpa as above                                                                  = 65664
    #   o_proj's input: SDPA's saved `out`                                             = 0
    #   gate/up save the post-attention norm's output                                  = 16384
    #   SwiGLU: gate, act, up outputs, and down's input (the product) = 4*4*11008      = 176128
    full = Combination(attn="sdpa")
    st = analytic.storage(Precision.FP32, full)
    assert layer_saved.layer_activation_bytes_per_token(m7, full, st, 2048) == 340_104
    # eager: o_proj's input is a copy of its own (+16384); q and the repeated k, v (no lse, no out) and the fp32
    # probabilities (4 x 32 heads x 2048 keys) replace sdpa's terms
    eager = Combination(attn="eager")
    sdpa_core = 4 * (2 * H + 2 * H) + 4 * 32
    eager_core = 4 * 3 * H + 4 * 32 * 2048
    assert layer_saved.layer_activation_bytes_per_token(m7, eager, st, 2048) == 340_104 - sdpa_core + eager_core + 4 * H


def test_eager_adds_quadratic_scores(m7):
    st = analytic.storage(Precision.BF16_MIXED, Combination(lora_r=16))
    sdpa = layer_saved.layer_activation_bytes_per_token(m7, Combination(lora_r=16, attn="sdpa"), st, 2048)
    eager = layer_saved.layer_activation_bytes_per_token(m7, Combination(lora_r=16, attn="eager"), st, 2048)
    # fp32 softmax (4 B) + its bf16 copy (2 B) per head per key, minus the lse, plus repeated k/v copies
    assert eager - sdpa == (4 + 2) * 32 * 2048 + 2 * 3 * 4096 - (2 * (2 * 4096 + 2 * 4096) + 4 * 32)


def test_gc_keeps_layer_inputs_only(m7):
    setup = TrainingSetup(seq_len=2048)
    c = Combination(lora_r=16, gc=True)
    st = analytic.storage(setup.precision, c)
    acts, one = activations.activation_bytes(m7, setup, c, st)
    # at the start of backward: each layer's bf16 input and the final norm's fp32 input and 1/rms; no layer is
    # recomputed yet
    assert acts == 32 * 2 * H * 2048 + (4 * H + 4) * 2048
    # the recompute of one layer comes later, once the loss's tensors are gone; its backward peaks in the MLP's
    # (sdpa: no softmax moment), per token beyond the layer's saved tensors:
    #   the layer output's gradient, bf16 h                           = 2 * 4096 = 8192
    #   down's grad-input and the product's two gradients, bf16 3 x I = 3 * 2 * 11008 = 66048
    #   (down is frozen: no saved input of its to free; the fp32 RMSNorm upcast is a copy, not the checkpoint)
    assert activations.gc_recompute_activation_bytes(m7, setup, c, st) == 32 * 2 * H * 2048 + one + 74_240 * 2048


def test_gc_eager_backward_peaks_in_the_softmax_backward(m7):
    setup = TrainingSetup(seq_len=2048)
    c = Combination(lora_r=16, gc=True, attn="eager")
    st = analytic.storage(setup.precision, c)
    _, one = activations.activation_bytes(m7, setup, c, st)
    # per token beyond the layer's saved tensors: the softmax's two fp32 gradients (2 x 4 x 32 heads x 2048 keys =
    # 524288) less what backward has freed by then: the MLP block (gate, act, up outputs: 2 x 3 x I = 66048), the
    # post-attention norm's fp32 upcast and 1/rms (4 x H + 4 = 16388), o_proj's adapter input and lora_A output
    # (2 x H + 2 x 16 = 8224) and the probabilities' bf16 copy (2 x 32 x 2048 = 131072): 302556, above the MLP's
    # 66048; plus the layer output's bf16 gradient (8192)
    per_token = 8192 + 524_288 - 66_048 - 16_388 - 8_224 - 131_072
    casts = 2 * 16 * (H + H)  # o_proj's adapters' bf16 casts, freed with its backward
    mask = 2048 * 2048 * 2  # eager's bf16 float mask, an input of every checkpoint
    expected = 32 * 2 * H * 2048 + mask + one + per_token * 2048 - casts
    assert activations.gc_recompute_activation_bytes(m7, setup, c, st) == expected


def test_estimate_breakdown_sums_to_peak(m7):
    e = estimate(m7, load_hardware("a100-80g"), TrainingSetup(gpus_per_node=8), Combination(zero=2))
    assert e.breakdown.total() == e.peak_bytes_per_gpu
    assert e.device_bytes_per_gpu > e.peak_bytes_per_gpu
    assert e.fits


def test_more_gpus_never_need_more_memory(m7):
    hw = load_hardware("a100-80g")
    for c in (Combination(zero=1), Combination(zero=2), Combination(zero=3), Combination(zero=3, lora_r=8)):
        peaks = [estimate(m7, hw, TrainingSetup(gpus_per_node=n), c).peak_bytes_per_gpu for n in (1, 2, 4, 8)]
        assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]


def test_ddp_over_several_gpus_holds_a_second_copy_of_the_gradients_in_its_buckets(m7):
    """Plain data parallelism (zero=0) over 2+ ranks: torch DDP without gradient_as_bucket_view allocates all its
    buckets at construction (bucket_cap_mb only sets how many), one more full gradient copy; NCCL adds its buffers
    outside the allocator. One GPU has neither."""
    hw, c = load_hardware("a100-80g"), Combination(lora_r=16)
    one, two = (estimate(m7, hw, TrainingSetup(gpus_per_node=n), c) for n in (1, 2))
    grads = analytic.trainable_params(m7, c) * analytic.storage(Precision.BF16_MIXED, c).grad
    assert one.breakdown.engine_buffers == 0
    assert two.breakdown.engine_buffers == grads
    assert two.peak_bytes_per_gpu - one.peak_bytes_per_gpu == grads
    assert two.device_bytes_per_gpu - two.reserved_bytes_per_gpu == (
        analytic.CUDA_CONTEXT_BYTES + analytic.NCCL_BUFFER_BYTES
    )
    assert one.device_bytes_per_gpu - one.reserved_bytes_per_gpu == analytic.CUDA_CONTEXT_BYTES
    # on a CPU (gloo) the buckets exist but there is no NCCL and no CUDA context
    cpu = analytic.device_bytes(two.peak_bytes_per_gpu, c, is_cpu=True, world_size=2)
    assert cpu == two.peak_bytes_per_gpu


def test_zero3_live_parameters_are_bounded_by_the_model():
    """min(stage3_max_live_parameters, parameters): 1e9 for 70B (two of its 0.86e9-parameter layers, the old
    floor, were 1.7e9), the whole model for a small one."""
    big, small = load_model("llama-2-70b"), load_model("tiny-llama")
    assert 2 * big.layer_params() > analytic.STAGE3_MAX_LIVE_PARAMETERS
    assert analytic.stage3_live_params(big) == analytic.STAGE3_MAX_LIVE_PARAMETERS
    assert analytic.stage3_live_params(small) == small.param_count()
    setup = TrainingSetup(gpus_per_node=8, seq_len=512)
    st = analytic.storage(setup.precision, Combination(zero=3))
    s = analytic.zero_states(small, setup, Combination(zero=3), st)
    # beside the gathered parameters: stage 3's one reduce bucket (test_zero3_buffers checks it on a real engine)
    assert analytic.reduce_bucket_bytes(small, Combination(zero=3), st) == small.hidden_size**2 * st.grad
    assert s.buffers - small.hidden_size**2 * st.grad == small.param_count() * st.frozen_weight


@pytest.mark.parametrize("combo", [Combination(), Combination(lora_r=4)], ids=["full", "lora"])
def test_ddp_bucket_term_matches_the_buckets_torch_allocates(combo):
    """Against real torch DDP, built as Trainer builds it (default bucket_cap_mb, no gradient_as_bucket_view), on a
    one-rank gloo group: the buckets it allocates add up to the analytic term, a full copy of the trainable
    gradients, not one 25 MiB bucket."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ftopt.model.build import build_model
    from ftopt.spec import from_hf_config
    from tests.spec.test_model import TINY

    spec = from_hf_config({"model_type": "llama", **TINY["llama"]}, "t")
    setup = TrainingSetup(gpus_per_node=2, precision="fp32", seq_len=32)
    term = analytic.zero_states(spec, setup, combo, analytic.storage(setup.precision, combo)).buffers
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        info = DistributedDataParallel(build_model(spec, combo, setup.precision))._get_ddp_logging_data()
    finally:
        dist.destroy_process_group()
    assert info["gradient_as_bucket_view"] == 0
    assert sum(int(x) for x in str(info["bucket_sizes"]).split(",")) == term > 0


@pytest.mark.parametrize("gc", [True, False])
def test_mixed_precision_counts_every_autocast_weight_cast(gc):
    """Under bf16-mixed autocast caches every layer's 16-bit weight cast until its region exits, so with
    GC the loss moment holds all of them (counting one layer's would give 103.2 vs 114.4 GiB traced for this
    run). The traced estimator runs torch's real autocast and checkpoint code; the two agree within 1%."""
    spec, hw = load_model("llama-2-7b"), load_hardware("a100-80g")
    setup = TrainingSetup(precision="bf16-mixed", grad_accum=2)
    combo = Combination(gc=gc)
    a = estimate(spec, hw, setup, combo, "analytic").peak_bytes_per_gpu
    t = estimate(spec, hw, setup, combo, "traced").peak_bytes_per_gpu
    assert abs(a - t) / t < 0.01
    linear = spec.num_layers * sum(lin.params for lin in spec.layer_linears())
    loss_moment = activations.gc_loss_moment_activation_bytes(spec, setup, combo, storage(setup.precision, combo))
    assert loss_moment > 2 * linear if gc else loss_moment == 0


def test_the_first_layers_backward_comes_before_the_input_sides_gradients():
    """Without GC the first layer's saved tensors are held through its backward, before the lookup's backward forms
    the token table's gradient. neox-160m (benchmarks/estimate_accuracy.py; its untied 50,304 x 768 table has a
    147 MiB fp32 gradient), full fine-tuning, fp32, seq 256 x 2: both estimators peak at the start of backward and
    agree within 0.01%; the measured CPU peak (benchmarks/results/estimate_accuracy.json) is the trace's to
    0.001%. Counted beside every gradient, the first layer's moment would be 1.0% above it."""
    from ftopt.spec import from_hf_config
    from tests.benchmarks import load_benchmark

    config = load_benchmark("estimate_accuracy").ARCHS["neox-160m"]  # the measured run's model
    spec, cpu = from_hf_config(config, "neox-160m"), load_hardware("cpu")
    setup = TrainingSetup(seq_len=256, micro_batch=2, precision="fp32")
    combo = Combination(attn="sdpa")
    a, t = (estimate(spec, cpu, setup, combo, m) for m in ("analytic", "traced"))
    assert a.peak_phase == t.peak_phase == "forward/backward"
    assert abs(a.peak_bytes_per_gpu / t.peak_bytes_per_gpu - 1) < 1e-4
