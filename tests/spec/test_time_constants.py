"""The time model's constants are their own object with provenance, apart from the device's facts: a calibration
produces a new constants object (never edits the device), it changes the predicted step time, and the estimate,
plan and report say where the constants came from. Files written before the split still load."""

import json

import pytest

from ftopt import estimate, plan
from ftopt.cli.display import print_estimate
from ftopt.planner.calibration_store import calibrate_and_store, calibrated_hardware, calibration_path
from ftopt.spec import Combination, HardwareSpec, TrainingSetup, hardware_names, load_hardware, load_model
from ftopt.spec.calibration import SoftwareVersions
from ftopt.spec.errors import FtoptError
from ftopt.spec.time_constants import DefaultProvenance, TimeConstants

A100 = load_hardware("a100-80g")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTOPT_CACHE", str(tmp_path / "cache"))


def _rows(n=4, slow=1.0):
    """Bench rows on a100-80g at 15% of peak (the default assumes 45%), 10 µs per operator and 20 ms per step."""
    fp32, ks = A100.flops_for("fp32"), (900, 1500, 1100, 2500)
    return [
        {
            "status": "ok",
            "key": f"c{i}",
            "label": f"c{i}",
            "gpus": 1,
            "combination": {"lora_r": i + 1},
            "sweep": {"precision": "fp32"},
            "measured": {"peak_bytes_per_gpu": 1, "step_seconds": slow * (0.1 * (i + 1) / 0.15 + ks[i] * 1e-5 + 0.02)},
            "predicted": {"analytic": {"flops_per_step": 0.1 * (i + 1) * fp32, "kernels_per_step": ks[i]}},
        }
        for i in range(n)
    ]


def test_every_device_has_default_constants_with_a_source():
    for name in hardware_names():
        tc = load_hardware(name).time_constants
        assert tc.calibration is None and isinstance(tc.provenance, DefaultProvenance)
        fitted = tc.provenance.rows and tc.provenance.fitted_on
        assert fitted or "assumption" in tc.provenance.source
    # the CPU's bitsandbytes rates are measured constants, not device facts
    cpu = load_hardware("cpu")
    assert cpu.time_constants.dequant_bytes_per_s and "quant_time.py" in cpu.time_constants.provenance.source
    assert "mfu" not in HardwareSpec.model_fields and "dequant_bytes_per_s" not in HardwareSpec.model_fields


def test_a_calibration_is_a_new_constants_object_that_changes_the_step_time(capsys):
    m, s, c = load_model("llama-2-7b"), TrainingSetup(seq_len=2048), Combination(lora_r=8)
    before = estimate(m, A100, s, c)
    _, cal, path = calibrate_and_store(_rows(), A100, "/runs/a100.jsonl", "llama-2-7b")
    hw = calibrated_hardware(A100)
    assert A100.time_constants.calibration is None  # the preset object was not touched
    assert hw.model_dump(exclude={"time_constants"}) == A100.model_dump(exclude={"time_constants"})
    assert hw.time_constants.mfu == pytest.approx(0.15) and hw.time_constants.fixed_step_seconds == pytest.approx(0.02)
    after = estimate(m, hw, s, c)
    assert after.step_seconds > 2 * before.step_seconds  # fitted slower than the 45% default
    prov = after.time_constants.calibration
    assert prov.sources == ["/runs/a100.jsonl"] and prov.runs == 4 and prov.file == str(path) and prov.date
    print_estimate(after)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "calibrated, 4 runs" in out and "/runs/a100.jsonl" in out and "mfu 15.0%" in out
    print_estimate(before)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "uncalibrated for a100-80g" in out and "mfu 45.0%" in out and "Narayanan" in out
    j = plan(m, hw, s, what_ifs=False).to_json()["time_constants"]
    assert j["provenance"]["kind"] == "calibrated" and j["provenance"]["sources"] == ["/runs/a100.jsonl"]
    assert j["mfu"] == pytest.approx(0.15) and cal.constants.mfu == pytest.approx(0.15)


def test_a_calibration_keeps_the_rates_it_does_not_fit():
    cpu = load_hardware("cpu")
    rows = [dict(r, combination={"lora_r": i + 1}) for i, r in enumerate(_rows())]
    _, cal, path = calibrate_and_store(rows, cpu, "/runs/cpu.jsonl", "tiny")
    hw = calibrated_hardware(cpu, path)  # named: rows shaped for an A100 fail the check applied unasked
    assert hw.time_constants.dequant_bytes_per_s == cpu.time_constants.dequant_bytes_per_s
    assert hw.time_constants.calibration is not None


def test_a_calibration_file_of_the_old_schema_still_applies(tmp_path):
    """ftopt.calibration/2 kept the constants and the provenance at the top level."""
    old = {
        "schema": "ftopt.calibration/2",
        "mfu": 0.3,
        "fixed_step_seconds": 0.01,
        "seconds_per_kernel": 2e-6,
        "zero_step_seconds": {"2": 0.05},
        "provenance": {
            "hardware": "a100-80g",
            "models": ["llama-2-7b"],
            "versions": SoftwareVersions.installed().model_dump(),
            "runs": 6,
            "combinations": 3,
            "sources": ["/runs/old.jsonl"],
            "date": "2026-11-01",
        },
        "points": [],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    hw = calibrated_hardware(A100, path)
    tc = hw.time_constants
    assert (tc.mfu, tc.zero_step_seconds, tc.calibration.runs) == (0.3, {2: 0.05}, 6)
    # and the stored one in the cache too
    stored = calibration_path("a100-80g", SoftwareVersions.installed())
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(old))
    assert calibrated_hardware(A100).time_constants.calibration.sources == ["/runs/old.jsonl"]


def test_hardware_and_run_files_written_before_the_split_still_load(tmp_path):
    from ftopt.spec import RunSpec

    facts = A100.model_dump(mode="json", exclude={"time_constants"})
    f = tmp_path / "my-gpu.json"
    f.write_text(json.dumps({**facts, "name": "my-gpu", "mfu": 0.33, "fixed_step_seconds": 0.002}))
    hw = load_hardware(str(f))
    assert (hw.time_constants.mfu, hw.time_constants.fixed_step_seconds) == (0.33, 0.002)
    assert "my-gpu" in hw.time_constants.provenance.source and hw.memory_bytes == A100.memory_bytes
    # a run.json of then: the applied calibration sat beside the constants
    prov = {
        "hardware": "a100-80g",
        "models": ["m"],
        "versions": {},
        "runs": 2,
        "combinations": 2,
        "sources": ["/r.jsonl"],
        "date": "2026-11-02",
    }
    run = RunSpec(hardware=A100, setup=TrainingSetup()).to_json()
    run["hardware"] = {**facts, "mfu": 0.2, "calibration": prov}
    again = RunSpec.model_validate(run)
    assert again.hardware.time_constants.mfu == 0.2 and again.hardware.calibration.runs == 2


def test_constants_given_twice_or_out_of_range_are_one_clear_error(tmp_path):
    facts = A100.model_dump(mode="json")
    f = tmp_path / "twice.json"
    f.write_text(json.dumps({**facts, "mfu": 0.3}))
    with pytest.raises(FtoptError, match="under 'time_constants' only.*mfu"):
        load_hardware(str(f))
    bad = {**facts, "time_constants": {**facts["time_constants"], "mfu": 1.5}}
    f.write_text(json.dumps(bad))
    with pytest.raises(FtoptError, match=r"time_constants\.mfu: Input should be less than or equal to 1") as e:
        load_hardware(str(f))
    assert "1.5" not in str(e.value)  # the field and its rule; a file's values are never repeated
    with pytest.raises(ValueError):
        TimeConstants(mfu=0.4, provenance={"kind": "default", "source": ""})


@pytest.mark.parametrize(
    "lang,default,calibrated",
    [
        ("en", "uses the default constants (MFU 45.0%", "uses constants calibrated on 4 runs from /runs/a100.jsonl"),
        ("ja", "定数は既定値(MFU 45.0%", "/runs/a100.jsonlの4回の実行で較正した定数(MFU 15.0%"),
    ],
)
def test_the_report_says_where_the_projection_constants_came_from(tmp_path, lang, default, calibrated):
    from typer.testing import CliRunner

    from ftopt.cli.app import app
    from tests.report.test_decision import _projected_rows

    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _projected_rows()))
    args = ["report", str(path), "--lang", lang, "--target-model", "llama-3.1-8b", "--target-gpu", "a100-80g"]
    args += ["--dataset-tokens", "100000000"]

    def md(out):
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / out)])
        assert res.exit_code == 0, res.output
        return (tmp_path / out / f"report.{lang}.md").read_text()

    assert default in md("before")
    calibrate_and_store(_rows(), A100, "/runs/a100.jsonl", "llama-2-7b")
    after = md("after")
    assert calibrated in after and default not in after


def test_a_calibrated_fsdp2_engine_cost_reaches_the_fsdp2_step_time():
    """FSDP2's engine cost per mode (fitted like a ZeRO stage's) is a time constant: stored, applied, and added to
    an FSDP2 step only."""
    from ftopt.estimate.time import step_time
    from ftopt.spec import Fsdp

    fp32, ks = A100.flops_for("fp32"), (900, 1500, 1100, 2500)
    fsdp = [
        {
            "status": "ok",
            "key": f"f{i}",
            "label": f"f{i}",
            "gpus": 2,
            "combination": Combination(lora_r=i + 1, fsdp=Fsdp.FULL).model_dump(mode="json"),
            "sweep": {"precision": "fp32"},
            "measured": {"peak_bytes_per_gpu": 1, "step_seconds": 0.1 * (i + 1) / 0.15 + ks[i] * 1e-5 + 0.02 + 0.3},
            "predicted": {"analytic": {"flops_per_step": 0.1 * (i + 1) * fp32, "kernels_per_step": ks[i]}},
        }
        for i in range(2)
    ]
    _, cal, _ = calibrate_and_store(_rows() + fsdp, A100, "/runs/fsdp.jsonl", "llama-2-7b")
    assert cal.constants.fsdp_step_seconds == pytest.approx({"full": 0.3}, rel=1e-3)
    hw = calibrated_hardware(A100)
    m, s = load_model("llama-2-7b"), TrainingSetup(seq_len=2048, gpus_per_node=2)
    no_engine = hw.with_time(hw.time_constants.model_copy(update={"fsdp_step_seconds": {}}))
    for combo, extra in ((Combination(lora_r=8, fsdp=Fsdp.FULL), 0.3), (Combination(lora_r=8), 0.0)):
        gap = step_time(m, s, combo, hw).step_seconds - step_time(m, s, combo, no_engine).step_seconds
        assert gap == pytest.approx(extra, abs=1e-3)
    assert "FSDP2-full +300 ms" in hw.time_constants.figures()
