"""The GPU check (benchmarks/gpu_check.sh -> estimate_accuracy.py --gpu) cannot run here; its scenario logic can."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("estimate_accuracy", ROOT / "benchmarks" / "estimate_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_scenarios_are_valid_and_include_flash(acc):
    from ftopt.spec import Combination, load_model

    scs = acc.scenarios(quick=False, gpu=True)
    assert {s["arch"] for s in scs} == set(acc.GPU_PRESETS)
    assert any(s["attn"] == "flash" for s in scs) and all(s["device"] == "cuda" for s in scs)
    for s in scs:
        Combination(lora_r=s["lora_r"], gc=s["gc"], attn=s["attn"])
        load_model(s["arch"])


def test_gpu_scenario_estimates_run_on_cpu(acc):
    est = acc.estimates(dict(arch="qwen2.5-0.5b", lora_r=8, gc=True, attn="flash", precision="bf16-mixed",
                             device="cuda"))
    assert est["traced"] > 0 and est["analytic"] > 0
    assert abs(est["traced"] - est["analytic"]) / est["traced"] < 0.5


def test_gpu_check_script_calls_the_gpu_mode():
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "estimate_accuracy.py --gpu" in text and "timeout" in text
