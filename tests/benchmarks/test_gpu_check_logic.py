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
    """One full fine-tune per precision on full rows and on padded ones, DoRA and the 8B rows; every flag exists on
    `ftopt train` (an unknown flag is a usage error, exit 2 with "No such option"), except where the scenario says
    it needs a flag this ftopt lacks (then the check skips it, saying so)."""
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    scenarios = gc.scenarios()
    names = {sc.name for sc in scenarios}
    grid = {f"full-{p}-{layout}" for p in ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true") for layout in gc.LAYOUTS}
    assert grid | {"dora-bf16-full", "lora-flash-8b", "qlora-gc-8b"} <= names
    assert next(sc for sc in scenarios if sc.name == "dora-bf16-full").needs == ("--dora",)
    for sc in scenarios:
        if any(n.startswith("--") for n in gc.absent(sc.needs)):
            continue
        r = CliRunner().invoke(
            app, ["train", *sc.flags, "--gpu", "h200", "--out", "/nonexistent/x", "--max-steps", "0"]
        )
        assert "No such option" not in r.output, (sc.name, r.output)


def test_padded_rows_are_padded_and_full_rows_are_not(gc, tmp_path):
    """The data behind the two layouts: `long` rows reach --seq-len (nothing to pad), `short` rows never do."""
    files = gc.write_data(tmp_path)
    words = {k: [len(json.loads(x)["text"].split()) for x in f.read_text().splitlines()] for k, f in files.items()}
    assert min(words["long"]) >= gc.SEQ and max(words["short"]) < gc.SEQ // 2


def test_rows_print_as_the_published_table(gc):
    """The same columns as benchmarks/published.py: row, measured, what, then each estimator and its error."""
    published = load_benchmark("published")
    gib = 2**30
    row = {
        "scenario": "full-fp32-padded",
        "allocated_bytes": 10 * gib,
        "reserved_bytes": 11 * gib,
        "analytic_allocated_bytes": 11 * gib,
        "traced_allocated_bytes": 10 * gib,
        "analytic_reserved_bytes": 11 * gib,
        "traced_reserved_bytes": None,
    }
    allocated, reserved = gc.table_lines(row)
    head = published.header(["analytic", "traced"])
    assert len(allocated.split()) == len(reserved.split()) == len(head.split())
    assert allocated.split()[2:] == ["allocated", "11.00G", "+10.0%", "10.00G", "+0.0%"]
    assert reserved.split()[-2:] == ["-", "-"]  # a prediction the run did not give
    ctx = gc.table_lines({"scenario": "cuda-context", "context_bytes": gib, "predicted_bytes": gib // 2})
    assert ctx[0].split()[2:4] == ["context", "0.50G"] and "-50.0%" in ctx[0]
    assert gc.table_lines({"scenario": "x", "error": "skipped: no GPU"}) == [f"{'x':24} failed: skipped: no GPU"]


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
