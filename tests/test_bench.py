"""Sweep with injected OOM and crash, resume, corrupt results, grids, calibration, atomic appends."""
import json
import os

import pytest

from ftopt.bench import (BenchRun, Sweep, calibrate, fit_time_model, load_grid, read_results, run_sweep, spearman)
from ftopt.errors import FtoptError
from ftopt.io import append_line_atomic
from ftopt.spec import Combination, load_model


def test_sweep_records_oom_and_crash_and_resumes(tmp_path):
    sweep = Sweep(max_steps=3, seq_len=32, micro_batch=4)
    combos = [Combination(), Combination(lora_r=4), Combination(gc=True)]
    keys = [BenchRun(combination=c).key() for c in combos]
    results = tmp_path / "results.jsonl"
    events = []
    rows = run_sweep(sweep, combos, results, tmp_path / "runs", spec=load_model("tiny-llama"),
                     inject={keys[0]: "oom", keys[1]: "crash"}, on_event=lambda k, i: events.append(k))
    status = {r["key"]: r["status"] for r in rows}
    assert status == {keys[0]: "oom", keys[1]: "error", keys[2]: "ok"}
    oom = next(r for r in rows if r["status"] == "oom")
    assert "out of memory" in oom["error_tail"] and oom["predicted"]["analytic"]["peak_bytes_per_gpu"] > 0
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["measured"]["peak_bytes_per_gpu"] > 0 and "traced" in ok["predicted"]
    # a second run of the same sweep skips everything already recorded
    events.clear()
    rows2 = run_sweep(sweep, combos, results, tmp_path / "runs")
    assert len(rows2) == 3 and len(results.read_text().splitlines()) == 3


def test_resume_after_interrupt_runs_only_the_rest(tmp_path):
    sweep = Sweep(max_steps=2, seq_len=32, micro_batch=4)
    combos = [Combination(lora_r=4), Combination(lora_r=4, gc=True)]
    results = tmp_path / "r.jsonl"
    first = BenchRun(combination=combos[0]).key()
    # as if the sweep was interrupted after the first run finished
    append_line_atomic(results, json.dumps({"key": first, "status": "ok", "label": "x", "measured": {}}))
    started = []
    run_sweep(sweep, combos, results, tmp_path / "runs", on_event=lambda k, i: started.append((k, i["key"])))
    assert ("skip", first) in started and sum(k == "start" for k, _ in started) == 1


def test_corrupt_results_keep_good_lines(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"key": "a", "status": "ok"}\n{"key": "b", "sta\n[1]\n{"key": "c", "status": "oom"}\n')
    warnings = []
    rows = read_results(p, warn=warnings.append)
    assert [r["key"] for r in rows] == ["a", "c"]
    assert any("line 2" in w for w in warnings) and any("line 3" in w for w in warnings)


def test_append_on_full_disk_leaves_no_partial_line(tmp_path, monkeypatch):
    p = tmp_path / "r.jsonl"
    append_line_atomic(p, '{"key": "a", "status": "ok"}')
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:7]))  # the disk fills mid-line
    with pytest.raises(OSError):
        append_line_atomic(p, '{"key": "b", "status": "ok"}')
    monkeypatch.setattr(os, "write", real_write)
    assert p.read_text() == '{"key": "a", "status": "ok"}\n'


def test_grid_yaml(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("grid:\n  gc: [false, true]\n  lora_r: [0, 8]\n  zero: [0, 2]\n  offload: [none, optimizer]\n")
    combos = load_grid(g)
    assert len(combos) == 12  # 16 minus the 4 with optimizer offload and no ZeRO
    g.write_text("grid:\n  gc: [true]\n  flash: [true]\n")
    with pytest.raises(FtoptError, match="unknown option"):
        load_grid(g)
    g.write_text("combinations:\n  - {lora_r: 8, zero: 5}\n")
    with pytest.raises(FtoptError, match="zero"):
        load_grid(g)


def test_calibration_recovers_known_constants():
    mfu, fixed = 0.37, 0.021
    xs = [0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.3, 0.5]
    pts = [(x, x / mfu + fixed) for x in xs]
    got_mfu, got_fixed = fit_time_model(pts)
    assert abs(got_mfu - mfu) < 1e-9 and abs(got_fixed - fixed) < 1e-9
    zero_extra = {2: 0.15, 3: 0.9}  # DeepSpeed engine overhead per step, by stage
    rows = [{"status": "ok", "combination": {"zero": z}, "predicted": {"analytic": {"flops_per_step": x * 1e12}},
             "measured": {"step_seconds": x / mfu + fixed + zero_extra.get(z, 0.0)}}
            for x in xs for z in (0, 2, 3)]
    fit = calibrate(rows, 1e12)
    assert fit.mfu == pytest.approx(mfu) and fit.fixed_step_seconds == pytest.approx(fixed)
    assert fit.zero_step_seconds == pytest.approx(zero_extra)
    assert fit.holdout_runs == len(rows)  # every run predicted by a fit that did not see it
    assert fit.holdout_median_abs_error < 1e-9 and fit.spearman_rho == pytest.approx(1.0)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
