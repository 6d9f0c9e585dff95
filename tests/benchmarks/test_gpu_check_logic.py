"""The GPU check (benchmarks/gpu_check.sh -> gpu_check.py) cannot run here; its logic can: it refuses with what is
missing, its scenarios are valid `ftopt train` runs, and its comparison turns a metrics.json into the right errors."""

import json
import subprocess
import sys

import pytest

from tests.benchmarks import ROOT, load_benchmark


@pytest.fixture(scope="module")
def gc():
    return load_benchmark("gpu_check")


def test_fails_fast_naming_what_is_missing(gc):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 2 and "missing a CUDA build of torch" in p.stderr and "flash-attn" in p.stderr


def test_scenarios_are_valid_train_runs(gc):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    names = [n for n, _ in gc.SCENARIOS]
    assert {"lora-flash-8b", "full-gc-0.5b", "lora-zero2-8b", "qlora-gc-8b"} <= set(names)
    for name, flags in gc.SCENARIOS:
        if "--quant" in flags and not gc.has_flag("--quant"):
            continue
        # every flag must exist on `ftopt train` (an unknown flag is a usage error, exit 2 with "No such option")
        r = CliRunner().invoke(app, ["train", *flags, "--gpu", "h200", "--out", "/nonexistent/x", "--max-steps", "0"])
        assert "No such option" not in r.output, (name, r.output)


def test_compare_reports_signed_errors(gc):
    from ftopt.estimate.analytic import device_bytes
    from ftopt.spec import Combination

    gib = 2**30
    m = {
        "label": "LoRA r16 + flash",
        "combination": {"lora_r": 16, "attn": "flash"},
        "mfu": 0.4,
        "measured": {
            "peak_bytes_per_gpu": 20 * gib,
            "peak_reserved_bytes_per_gpu": 22 * gib,
            "device_used_bytes_per_gpu": 24 * gib,
            "step_seconds": 1.0,
        },
        "predicted": {
            "analytic": {"peak_bytes_per_gpu": 21 * gib, "step_seconds": 0.9},
            "traced": {"peak_bytes_per_gpu": 20 * gib, "reserved_bytes_per_gpu": 21 * gib, "step_seconds": 0.9},
        },
    }
    row = gc.compare("x", m, 10.0)
    assert row["analytic_allocated_error"] == pytest.approx(0.05)
    assert row["traced_allocated_error"] == pytest.approx(0.0)
    assert row["traced_reserved_error"] == pytest.approx(21 / 22 - 1)
    predicted_device = device_bytes(21 * gib, Combination(lora_r=16, attn="flash"), False)
    assert row["traced_device_error"] == pytest.approx(predicted_device / (24 * gib) - 1)
    assert row["step_time_error"] == pytest.approx(-0.1)
    json.dumps(row)
