import pytest
from pydantic import ValidationError

from ftopt.spec import Combination, TrainingSetup, hardware_names, load_hardware
from ftopt.spec.errors import FtoptError


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


@pytest.mark.parametrize(
    "kw,fragment",
    [
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
    ],
)
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


# ---- capabilities: what each device can run ----------------------------------------------------------------------
from ftopt.spec import Attention, Precision  # noqa: E402

FLASH_GPUS = ["a100-40g", "a100-80g", "h100-80g", "h200", "l4", "a10g", "rtx4090", "l40s", "rtx-a6000"]


@pytest.mark.parametrize("name", [n for n in hardware_names() if n != "cpu"])
def test_presets_state_capability_and_kernels(name):
    hw = load_hardware(name)
    ampere = hw.compute_capability >= (8, 0)
    assert (Attention.FLASH in hw.attention_kernels) == ampere == (name in FLASH_GPUS)
    assert Attention.SDPA in hw.attention_kernels and Attention.EAGER in hw.attention_kernels
    assert ("bf16" in hw.peak_flops) == ampere
    assert "inter-node" in hw.source and "per GPU" in hw.source  # the bandwidth's source is cited


@pytest.mark.parametrize(
    "name,precision,attn,fragment",
    [
        (
            "v100-32g",
            "bf16-mixed",
            "sdpa",
            "v100-32g cannot run bf16 (no bf16 units, compute capability 7.0); use --precision fp32 or fp16-mixed.",
        ),
        ("t4", "bf16-true", "eager", "t4 cannot run bf16 (no bf16 units, compute capability 7.5)"),
        (
            "v100-16g",
            "fp16-mixed",
            "flash",
            "v100-16g cannot run flash attention (FlashAttention 2 needs compute "
            "capability 8.0 or newer, this GPU has compute capability 7.0); use --attn eager or sdpa.",
        ),
        (
            "cpu",
            "fp32",
            "flash",
            "cpu cannot run flash attention (flash attention needs a CUDA GPU); use --attn eager or sdpa.",
        ),
        # `estimate` accepted what `train` refuses
        ("cpu", "fp16-mixed", "sdpa", "fp16-mixed needs a CUDA GPU (loss scaling runs on the GPU)"),
    ],
)
def test_check_runs_refuses_in_one_sentence(name, precision, attn, fragment):
    with pytest.raises(FtoptError) as e:
        load_hardware(name).check_runs(Precision(precision), Attention(attn))
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", FLASH_GPUS)
def test_check_runs_accepts_what_ampere_and_newer_run(name):
    hw = load_hardware(name)
    for p in Precision:
        for a in Attention:
            if a.runs_in(p):
                hw.check_runs(p, a)
            else:  # flash-attn rejects fp32 inputs
                assert (p, a) == (Precision.FP32, Attention.FLASH)
                with pytest.raises(FtoptError, match="flash-attn takes fp16/bf16"):
                    hw.check_runs(p, a)


def test_hardware_file_cannot_claim_flash_or_bf16_below_sm80(tmp_path):
    import json

    data = load_hardware("v100-32g").model_dump(mode="json")
    for bad in (
        {"attention_kernels": ["eager", "sdpa", "flash"]},
        {"peak_flops": {**data["peak_flops"], "bf16": 1e14}},
    ):
        f = tmp_path / "x.json"
        f.write_text(json.dumps({**data, **bad}))
        with pytest.raises(FtoptError, match="compute capability 8.0 or newer"):
            load_hardware(str(f))


def test_old_per_node_bandwidth_key_is_named_in_the_error(tmp_path):
    import json

    data = load_hardware("a100-80g").model_dump(mode="json")
    data["inter_node_bandwidth_bytes_per_s"] = data.pop("inter_node_bandwidth_per_gpu_bytes_per_s")
    f = tmp_path / "old.json"
    f.write_text(json.dumps(data))
    with pytest.raises(FtoptError, match="now inter_node_bandwidth_per_gpu_bytes_per_s"):
        load_hardware(str(f))


def test_load_hardware_never_applies_a_stored_calibration(tmp_path, monkeypatch):
    """spec does not import calibration any more: a stored fit changes nothing until applied explicitly."""
    import ast
    from pathlib import Path

    import ftopt.spec.hardware as mod

    imported = {
        n.module
        for n in ast.walk(ast.parse(Path(mod.__file__).read_text()))
        if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not any(m.startswith("ftopt.planner.calibration") for m in imported)
    assert load_hardware("a100-80g").calibration is None


def test_packing_is_part_of_the_setup_and_old_run_files_still_load():
    from ftopt.spec.run import RunSpec

    new = RunSpec(hardware=load_hardware("cpu"), setup=TrainingSetup(packing=True))
    old = new.to_json()
    assert old["setup"].pop("batching") == "packed"
    old["data"]["packing"] = True  # resolved_config.json before packing moved to the setup (and became batching)
    assert RunSpec.model_validate(old) == new
    assert RunSpec.model_validate({**old, "data": {**old["data"], "packing": False}}).setup.packing is False


def test_cpu_peak_flops_keeps_the_best_probe(tmp_path, monkeypatch):
    """A probe taken under load must not stay cached as the peak (it capped calibrations at mfu = 1); a lower
    probe later must not lower it either."""
    import json

    from ftopt.spec import hardware

    monkeypatch.setenv("FTOPT_CACHE", str(tmp_path))
    (tmp_path / "cpu_probe.json").write_text(json.dumps({"fp32_flops": 2e10, "cores": 2}))  # taken under load
    probes = iter([1.8e11, 5e10])
    monkeypatch.setattr(hardware, "probe_cpu_flops", lambda: next(probes))
    try:
        hardware.cpu_peak_flops.cache_clear()
        assert hardware.cpu_peak_flops() == 1.8e11  # the quiet probe wins and is stored
        hardware.cpu_peak_flops.cache_clear()
        assert hardware.cpu_peak_flops() == 1.8e11  # a loaded one later does not lower it
        assert json.loads((tmp_path / "cpu_probe.json").read_text())["fp32_flops"] == 1.8e11
    finally:
        hardware.cpu_peak_flops.cache_clear()


@pytest.mark.parametrize(
    "gpu, precision",
    [("a100-80g", "bf16-mixed"), ("l4", "bf16-mixed"), ("t4", "fp16-mixed"), ("v100-16g", "fp16-mixed")],
)
def test_precision_defaults_to_the_best_the_hardware_runs(gpu, precision):
    """`plan --gpu t4` chooses fp16-mixed, which a T4 runs, not bf16."""
    hw = load_hardware(gpu)
    assert TrainingSetup.for_hardware(hw.is_cpu, hw.peak_flops).precision.value == precision
    assert TrainingSetup.for_hardware(True, load_hardware("cpu").peak_flops).precision.value == "fp32"
    assert TrainingSetup.for_hardware(hw.is_cpu, hw.peak_flops, precision="fp32").precision.value == "fp32"


def test_flash_with_fp32_is_refused_before_anything_runs():
    with pytest.raises(FtoptError, match="--attn flash cannot run --precision fp32: flash-attn takes fp16/bf16"):
        load_hardware("a100-80g").check_runs(Precision.FP32, Attention.FLASH)
    load_hardware("a100-80g").check_runs(Precision.BF16_MIXED, Attention.FLASH)
