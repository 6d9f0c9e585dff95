"""A random-init quantized base is quantized while it is built, as transformers quantizes a checkpoint while
loading it: the full-precision model never exists as a whole (estimate_accuracy's qwen2-tied-110m NF4 + GC run
peaked at that build, 513 MiB against a 413 MiB training peak, before this)."""

import pytest

pytest.importorskip("bitsandbytes")

# tied embeddings and q/k/v biases (qwen2): the tied head used to get its own weight before tie_weights dropped it
TINY_TIED = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8000,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


def _held_bytes(model) -> int:
    """Bytes the built model holds: parameter and buffer storages, and the quant_state tensors of Params4bit."""
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            tensors += [qs.absmax, qs.code, qs.state2.absmax, qs.state2.code]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_random_init_nf4_build_never_holds_the_full_precision_model():
    from ftopt.model.build import build_model
    from ftopt.results.measure import AllocatorPeak
    from ftopt.spec import Combination, Precision, from_hf_config

    spec = from_hf_config(TINY_TIED, "tiny-tied")
    peak = AllocatorPeak().start()
    model = build_model(spec, Combination(lora_r=8, gc=True, quant="nf4"), Precision.FP32)
    peak_bytes = peak.stop()
    largest_linear_bytes = 4 * 64 * 256  # an fp32 MLP weight
    # one full-precision linear at a time, plus bitsandbytes' quantization temporaries of about its size
    assert peak_bytes <= _held_bytes(model) + 4 * largest_linear_bytes, (peak_bytes, _held_bytes(model))
    assert peak_bytes < 4 * spec.param_count()  # an fp32 from_config build holds all of it (and the tied head twice)


def test_materialized_model_matches_a_plain_build():
    import bitsandbytes as bnb
    import torch

    from ftopt.model.build import build_base, build_model
    from ftopt.spec import Combination, Precision, from_hf_config

    spec = from_hf_config(TINY_TIED, "tiny-tied")
    model = build_model(spec, Combination(lora_r=8, quant="nf4"), Precision.FP32).get_base_model()
    plain = build_base(spec, Combination(lora_r=8), Precision.FP32)
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    for name, buf in plain.named_buffers():  # rotary inv_freq recomputed by transformers' _init_weights
        assert torch.equal(buf, model.get_buffer(name)), name
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # still tied
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7
    w = bnb.functional.dequantize_4bit(four_bit[0].weight.data, four_bit[0].weight.quant_state)
    assert w.shape == (64, 64) and 0.015 < w.std().item() < 0.025  # initializer_range 0.02, like a plain build
    assert all(torch.count_nonzero(m.bias) == 0 for m in four_bit if m.bias is not None)
    ids = torch.randint(0, 8000, (2, 16))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_generation_on_a_linear_bitsandbytes_cannot_pack_for_cpu():
    """bitsandbytes repacks NF4 weights for its AVX512-BF16 CPU kernel at the first no-grad eval forward; a 352-wide
    input (not a multiple of the 64-weight block) made that repack raise after training had finished (seen on this
    machine's CPU in test_cli_train_runs_qlora). The repack is forced here so the test does not depend on the CPU."""
    import torch

    from ftopt.model import quantize
    from ftopt.model.quantize import keep_cpu_inference_unpacked
    from ftopt.spec import Combination, Precision, Quant

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(352, 128), torch.nn.Linear(128, 64))
    reference = model(torch.ones(2, 352)).detach()
    combo = Combination(lora_r=4, quant=Quant.NF4)
    model = torch.nn.Sequential(*(quantize._quantized_linear(lin, combo, Precision.FP32) for lin in model))
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on an AVX512-BF16 CPU
    assert keep_cpu_inference_unpacked(model) == 1  # the 352-wide one; 128 x 64 packs
    model.eval()
    with torch.no_grad():
        out = model(torch.ones(2, 352))
    assert out.shape == (2, 64)
    assert torch.allclose(out, reference, atol=0.5)  # NF4 rounding, not garbage
