"""Quantized bases and bitsandbytes optimizers: the formulas against their sources and against real bitsandbytes."""

import pytest

from ftopt import estimate
from ftopt.estimate import analytic
from ftopt.estimate import quant as q8
from ftopt.spec import Combination, Quant, TrainingSetup, load_hardware, load_model


def test_nf4_double_quant_is_4_127_bits_per_weight():
    # QLoRA paper sec. 3: 4 + 8/64 + 32/(64*256) bits per weight with double quantization
    n_in, n_out = 4096, 4096 * 64
    bits = 8 * q8.quantized_weight_bytes(Quant.NF4, n_in, n_out) / (n_in * n_out)
    assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), rel=1e-9)
    assert q8.quantized_weight_bytes(Quant.INT8, 4096, 1024) == 4096 * 1024 + 4 * 1024


def test_quantized_weight_bytes_match_real_bitsandbytes():
    """The bytes bitsandbytes really holds for one NF4 (double quant) and one int8 linear on this CPU."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from ftopt.model.quantize import _quantized_linear
    from ftopt.spec import Precision

    lin = torch.nn.Linear(768, 2048, bias=False)
    for quant in (Quant.NF4, Quant.INT8):
        q = _quantized_linear(lin, Combination(lora_r=8, quant=quant), Precision.BF16_MIXED)
        w = q.weight
        if quant is Quant.NF4:
            qs = w.quant_state
            real = (
                w.numel() * w.element_size()
                + qs.absmax.numel() * qs.absmax.element_size()
                + qs.state2.absmax.numel() * qs.state2.absmax.element_size()
            )
            assert isinstance(q, bnb.nn.Linear4bit) and qs.nested
        else:
            real = w.numel() * w.element_size() + w.SCB.numel() * w.SCB.element_size()
        assert real == q8.quantized_weight_bytes(quant, 768, 2048)


def test_prepare_for_kbit_leaves_non_quantized_params_in_fp32():
    """The formula's 'everything else in fp32' is what build_model really leaves (prepare_model_for_kbit_training)."""
    pytest.importorskip("bitsandbytes")
    import torch

    from ftopt.model.build import build_model
    from ftopt.spec import Precision

    spec = load_model("tiny-llama")
    model = build_model(spec, Combination(lora_r=4, quant="nf4"), Precision.BF16_MIXED)
    float_params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    assert float_params == {torch.float32}
    packed = sum(p.numel() * p.element_size() for p in model.parameters() if p.dtype == torch.uint8)
    # the packed 4-bit weights are the parameters (two weights per byte); absmax lives in each quant_state
    assert packed == spec.num_layers * sum(-(-l.in_features * l.out_features // 2) for l in spec.layer_linears())


def test_eight_bit_states_skip_embeddings_and_small_tensors():
    m = load_model("llama-2-7b")
    full8 = Combination(optim="adamw-8bit")
    dev, paged = q8.bnb_optimizer_bytes(m, full8, on_gpu=True)
    emb = m.vocab_size * m.hidden_size
    # the embedding (Trainer's override) keeps 8 bytes per parameter; the norms have exactly min_8bit_size = 4096
    # elements, so they are 8-bit like the linears (bitsandbytes falls back to 32 bits only below 4096)
    big = m.param_count() - emb
    assert dev == 8 * emb + 2 * big + 8 * sum(
        t.count * -(-t.numel // 256) for t in q8.trainable_tensors(m, full8) if q8._eight_bit(t)
    )
    assert paged == 0
    small = q8.bnb_optimizer_bytes(load_model("qwen2.5-0.5b"), full8, on_gpu=True)[0]  # h = 896 < 4096: fp32 norms
    assert small > 2 * load_model("qwen2.5-0.5b").param_count()
    # paged: large states go to unified memory (host-backed) on a GPU, stay ordinary tensors on a CPU
    pdev, ppaged = q8.bnb_optimizer_bytes(m, Combination(optim="paged-adamw-8bit"), on_gpu=True)
    assert pdev + ppaged == dev and ppaged > 0.99 * dev
    assert q8.bnb_optimizer_bytes(m, Combination(optim="paged-adamw-8bit"), on_gpu=False) == (dev, 0)


def test_cpu_step_temporaries_only_on_cpu():
    m = load_model("llama-2-7b")
    c = Combination(optim="adamw-8bit")
    assert q8.bnb_step_temp_bytes(m, c, on_gpu=True) == 0
    # the embedding keeps 32-bit states (12 bytes/element at the update's peak); the largest 8-bit tensor, the
    # untied LM head of the same size, 20 bytes/element
    assert q8.bnb_step_temp_bytes(m, c, on_gpu=False) == 20 * m.vocab_size * m.hidden_size
    tied = load_model("qwen2.5-0.5b")  # tied head = the embedding: 32-bit states, 12 bytes/element
    assert q8.bnb_step_temp_bytes(tied, c, on_gpu=False) == 12 * tied.vocab_size * tied.hidden_size


def test_qlora_13b_weights_and_fit_on_24gb():
    m, hw = load_model("llama-2-13b"), load_hardware("rtx4090")
    setup = TrainingSetup(seq_len=2048)
    bf16 = analytic.zero_states(
        m, setup, Combination(lora_r=16), analytic.storage(setup.precision, Combination(lora_r=16))
    )
    qc = Combination(lora_r=16, quant="nf4", gc=True, attn="flash")
    nf4 = analytic.zero_states(m, setup, qc, analytic.storage(setup.precision, qc))
    assert 3.0 < bf16.weights / nf4.weights < 4.0  # 16-bit -> ~4.1 bits, fp32 embeddings and head
    assert estimate(m, hw, setup, qc).fits
    assert not estimate(m, hw, setup, Combination(lora_r=16, gc=True, attn="flash")).fits


def test_paged_states_count_in_host_ram_not_device():
    m, hw = load_model("llama-2-7b"), load_hardware("a100-80g")
    setup = TrainingSetup(seq_len=1024)
    plain = estimate(m, hw, setup, Combination(optim="adamw-8bit", gc=True))
    paged = estimate(m, hw, setup, Combination(optim="paged-adamw-8bit", gc=True))
    assert paged.peak_bytes_per_gpu < plain.peak_bytes_per_gpu
    assert paged.cpu_bytes_per_node > 0.9 * plain.breakdown.optimizer_states
    assert paged.step_seconds > plain.step_seconds  # paging back over PCIe costs time


def test_traced_runs_quantized_and_8bit_with_stand_ins():
    """The tracer runs QLoRA and 8-bit AdamW (no fallback) and stores what the formulas store: the stand-ins hold the
    quantized bytes, the optimizer stand-in the 8-bit states; activations come from the trace itself."""
    from ftopt.estimate.traced import traced_memory

    m = load_model("tiny-llama")
    setup = TrainingSetup(seq_len=32, micro_batch=2, precision="bf16-mixed")
    qc = Combination(lora_r=4, quant="nf4", gc=True)
    bd, _, _ = traced_memory(m, setup, qc, target="cpu", layers=None)
    an, _, _ = analytic.memory(m, setup, qc, on_gpu=False)
    assert bd.weights == an.weights  # quantized base + fp32 rest + fp32 adapters, byte for byte
    oc = Combination(optim="adamw-8bit")
    fp32 = TrainingSetup(seq_len=32, micro_batch=2, precision="fp32")
    bd8, phase, _ = traced_memory(m, fp32, oc, target="cpu", layers=None)
    assert (
        phase == "optimizer step"
        and bd8.optimizer_states == analytic.memory(m, fp32, oc, on_gpu=False)[0].optimizer_states
    )
