"""The operator counts behind the time model's per-operator overhead term (estimate/kernels.py)."""

import json
from pathlib import Path

import pytest

from ftopt.estimate.kernels import count_kernels, kernel_counts, kernels_per_step, variant
from ftopt.estimate.time import step_time
from ftopt.spec import Attention, Combination, TrainingSetup, from_hf_config, load_hardware, load_model

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads((ROOT / "src" / "ftopt" / "presets" / "kernels.json").read_text())


def version_mismatch(recorded: dict[str, str]) -> str | None:
    """Which installed library differs from the one the table was counted with (a GPU user's own torch build
    must not fail `make test`), or None. Local build tags (+cpu, +cu124) do not change the operators counted."""
    from importlib import metadata

    diffs = [
        f"{name} {metadata.version(name).split('+')[0]} (counted with {want})"
        for name, want in recorded.items()
        if metadata.version(name).split("+")[0] != want
    ]
    return ", ".join(diffs) or None


def test_version_mismatch_is_detected():
    from importlib import metadata

    assert version_mismatch({"peft": "0.0.1"}) == f"peft {metadata.version('peft')} (counted with 0.0.1)"
    assert version_mismatch({"peft": metadata.version("peft")}) is None


@pytest.mark.parametrize("family", sorted(TABLE["families"]))
def test_table_matches_a_recount(family):
    """presets/kernels.json is what benchmarks/count_kernels.py writes; recounting must give the same numbers,
    or the installed torch/transformers/peft changed the step and the file must be regenerated."""
    mismatch = version_mismatch(TABLE["versions"])
    if mismatch:
        pytest.skip(
            f"installed {mismatch}: operator counts are only comparable under the recorded versions; "
            "regenerate with benchmarks/count_kernels.py"
        )
    entry = TABLE["families"][family]
    spec = from_hf_config({"model_type": family, **entry["config"]}, family)
    for lora in (0, 8):
        for gc in (False, True):
            combo = Combination(lora_r=lora, gc=gc, attn=Attention.SDPA if family != "gemma2" else Attention.EAGER)
            assert count_kernels(spec, combo).model_dump() == entry["counts"][variant(combo)], variant(combo)


def test_every_family_has_the_main_variants():
    for family, entry in TABLE["families"].items():
        assert {"full+eager", "full+gc+eager", "lora+eager", "lora+gc+eager"} <= set(entry["counts"]), family


def test_operators_per_step_follow_the_optimizations():
    m = load_model("llama-2-7b")
    s = TrainingSetup(seq_len=2048)
    full, gc, lora, lora_gc, eager = (
        kernels_per_step(m, s, Combination(**c))
        for c in ({}, {"gc": True}, {"lora_r": 16}, {"lora_r": 16, "gc": True}, {"attn": "eager"})
    )
    assert full < gc and full < lora < lora_gc and full < eager
    # checkpointing re-runs the forward: roughly a third more operators per layer (forward ~ half of backward)
    assert 1.3 < gc / full < 1.8
    # gradient accumulation repeats the micro-batch part, not the optimizer
    k = kernel_counts(m, Combination())
    s4 = s.model_copy(update={"grad_accum": 4})
    assert kernels_per_step(m, s4, Combination()) - full == 3 * (m.num_layers * k.per_layer + k.outside_layers)


def test_custom_lora_targets_scale_the_adapter_operators():
    m = load_model("llama-2-7b")
    base = kernel_counts(m, Combination()).per_layer
    default = kernel_counts(m, Combination(lora_r=8)).per_layer  # q, k, v, o
    two = kernel_counts(m, Combination(lora_r=8, lora_targets=["q_proj", "v_proj"])).per_layer
    assert two - base == pytest.approx((default - base) / 2, abs=1)


def test_unknown_family_falls_back_and_gemma2_uses_eager():
    g = load_model("gemma-2-9b")
    assert kernel_counts(g, Combination(attn="sdpa")) == kernel_counts(g, Combination(attn="eager"))


def test_per_operator_cost_enters_the_step_time():
    m, s = load_model("tiny-llama"), TrainingSetup(seq_len=64, micro_batch=8)
    hw = load_hardware("a100-80g")
    slow = hw.with_time(hw.time_constants.model_copy(update={"seconds_per_kernel": 1e-5}))
    a, b = step_time(m, s, Combination(), hw), step_time(m, s, Combination(), slow)
    assert a.kernels_per_step == b.kernels_per_step > 0
    assert b.step_seconds - a.step_seconds == pytest.approx(a.kernels_per_step * 1e-5)
