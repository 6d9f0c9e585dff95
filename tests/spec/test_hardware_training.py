import pytest
from pydantic import ValidationError

from ftopt.errors import FtoptError
from ftopt.spec import Combination, TrainingSetup, hardware_names, load_hardware


@pytest.mark.parametrize("name", [n for n in hardware_names() if n != "cpu"])
def test_hardware_presets_load(name):
    hw = load_hardware(name)
    assert hw.memory_bytes > 10 * 2**30
    assert hw.peak_flops["fp32"] > 1e12
    assert hw.source


def test_no_bf16_on_t4_and_v100():
    assert load_hardware("t4").flops_for("bf16") is None
    assert load_hardware("v100-32g").flops_for("bf16") is None


def test_cpu_spec_probes_and_caches():
    a = load_hardware("cpu")
    b = load_hardware("cpu")  # second call reads the cache
    assert a.is_cpu and a.memory_bytes > 2**30
    assert a.peak_flops["fp32"] == b.peak_flops["fp32"] > 1e8


def test_unknown_gpu_suggests():
    with pytest.raises(FtoptError, match="Did you mean: a100-80g"):
        load_hardware("a100-80")


@pytest.mark.parametrize("kw,fragment", [
    (dict(offload="all", zero=2), "needs ZeRO stage 3, got stage 2"),
    (dict(offload="optimizer", zero=0), "needs a ZeRO stage"),
    (dict(zero=4), "less than or equal to 3"),
    (dict(lora_r=-1), "greater than or equal to 0"),
    (dict(lora_r=0, lora_targets=("q_proj",)), "lora_r is 0"),
    (dict(gradient_checkpointing=True), "Extra inputs"),
    (dict(quant="nf4"), "quant=nf4.*needs LoRA"),
    (dict(quant="int8", lora_r=8, zero=3), "ZeRO stage 0, 1 or 2 only.*got stage 3"),
    (dict(optim="adamw-8bit", zero=2), "optim=adamw-8bit.*ZeRO stage 2"),
    (dict(quant="nf5", lora_r=8), "quant"),
])
def test_combination_rules(kw, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Combination(**kw)


def test_setup_steps_are_integer_ceil():
    s = TrainingSetup(seq_len=1000, micro_batch=2, grad_accum=3, gpus_per_node=4, dataset_tokens=24_001)
    assert s.tokens_per_step == 24_000
    assert s.steps_per_epoch() == 2


def test_quant_and_optim_in_key_and_label():
    c = Combination(lora_r=16, quant="nf4", optim="paged-adamw-8bit", gc=True)
    assert c.key()["quant"] == "nf4" and c.key()["optim"] == "paged-adamw-8bit"
    assert c.label() == "LoRA r16 + GC + NF4 + paged-adamw-8bit + sdpa"
    assert Combination(**c.key()) == c  # a plan JSON's combination reads back (train --plan)
    assert c.optim.hf_name == "paged_adamw_8bit" and Combination().optim.hf_name == "adamw_torch_fused"
