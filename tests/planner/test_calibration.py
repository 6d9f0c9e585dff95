"""Calibration you can see: stored with provenance, merged with earlier fits, applied only where it matches (or
when named), bounds reported, and every estimate/plan says which calibration it used."""

import json

import pytest

from ftopt import estimate, plan
from ftopt.cli.display import calibration_line
from ftopt.planner.calibration_store import (
    Calibration,
    calibrate_and_store,
    calibrated_hardware,
    calibration_path,
    find_calibration,
)
from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model
from ftopt.spec.calibration import SoftwareVersions
from ftopt.spec.errors import FtoptError

A100 = load_hardware("a100-80g")
FP32 = A100.flops_for("fp32")
MFU, PER_KERNEL, FIXED = 0.37, 2e-5, 0.021


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTOPT_CACHE", str(tmp_path / "cache"))


def rows(n_combos, repeats=1, mfu=MFU, slow=1.0, steps=None, noise=None):
    """Synthetic bench rows on a100-80g: `n_combos` combinations with `repeats` runs each, following the model
    (times `noise[i]` for combination i). `steps`: each run's per-step times, that many (2 of warm-up); None = only
    the median, as results written before per-step times."""
    xs = [0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.3, 0.5][:n_combos]
    ks = [900, 1500, 1100, 2500, 1300, 800, 2000, 1700][:n_combos]
    noise = noise or [1.0] * n_combos

    def measured(i, x, k):
        t = slow * noise[i] * (x / mfu + k * PER_KERNEL + FIXED)
        return {
            "peak_bytes_per_gpu": 1,
            "step_seconds": t,
            **({"step_times": [t] * steps, "warmup_steps": 2} if steps else {}),
        }

    return [
        {
            "status": "ok",
            "key": f"c{i}-{r}",
            "label": f"c{i}",
            "gpus": 1,
            "combination": Combination(lora_r=i + 1).model_dump(mode="json"),  # one distinct combination each
            "sweep": {"precision": "fp32"},
            "predicted": {"analytic": {"flops_per_step": x * FP32, "kernels_per_step": k}},
            "measured": measured(i, x, k),
        }
        for i, (x, k) in enumerate(zip(xs, ks))
        for r in range(repeats)
    ]


def test_stored_with_provenance_and_applied_explicitly():
    fit, _, path = calibrate_and_store(rows(8), A100, "/runs/a.jsonl", "llama-2-7b")
    assert path == calibration_path("a100-80g", SoftwareVersions.installed()) and path.exists()
    cal = find_calibration("a100-80g")
    prov = cal.provenance
    assert prov.hardware == "a100-80g" and prov.models == ["llama-2-7b"] and prov.runs == 8
    assert prov.versions == SoftwareVersions.installed() and prov.versions.torch and prov.date
    assert prov.sources == ["/runs/a.jsonl"]
    # load_hardware leaves the preset alone; calibrated_hardware applies the matching fit and records it
    assert load_hardware("a100-80g").time_constants == A100.time_constants
    assert load_hardware("a100-80g").calibration is None
    hw = calibrated_hardware(load_hardware("a100-80g"))
    tc = hw.time_constants
    assert tc.mfu == pytest.approx(MFU) and tc.seconds_per_kernel == pytest.approx(PER_KERNEL)
    assert hw.model_dump(exclude={"time_constants"}) == A100.model_dump(exclude={"time_constants"})  # facts as is
    assert hw.calibration.runs == 8 and hw.calibration.file == str(path)


def test_not_applied_under_other_library_versions_unless_named(monkeypatch):
    _, _, path = calibrate_and_store(rows(8), A100, "/runs/a.jsonl", "llama-2-7b")
    other = SoftwareVersions(torch="9.9.9", transformers="9.9", deepspeed=None)
    monkeypatch.setattr(SoftwareVersions, "installed", classmethod(lambda cls: other))
    assert calibrated_hardware(A100).calibration is None  # another torch: the fit is not applied silently
    named = calibrated_hardware(A100, path)  # --calibration FILE: the user asked for it
    assert named.time_constants.mfu == pytest.approx(MFU) and named.calibration.file == str(path)
    with pytest.raises(FtoptError, match="fitted on a100-80g, not h100-80g; use --gpu a100-80g"):
        calibrated_hardware(load_hardware("h100-80g"), path)


def test_a_smoke_bench_is_merged_not_a_replacement():
    """A two-run smoke bench into another results file joins the stored eight-run fit rather than replacing it."""
    calibrate_and_store(rows(8), A100, "/runs/full.jsonl", "llama-2-7b")
    fit, _, _ = calibrate_and_store(rows(2, slow=1.5), A100, "/runs/smoke.jsonl", "tiny-llama")
    prov = find_calibration("a100-80g").provenance
    assert fit.fit_runs == prov.runs == 10 and prov.sources == ["/runs/full.jsonl", "/runs/smoke.jsonl"]
    assert prov.models == ["llama-2-7b", "tiny-llama"]
    # the same results file again (append-only, re-read whole) replaces its own points: no double counting
    fit, _, _ = calibrate_and_store(rows(8, repeats=2), A100, "/runs/full.jsonl", "llama-2-7b")
    assert fit.fit_runs == 16 + 2


def test_identical_points_from_two_files_are_pooled_by_runs():
    calibrate_and_store(rows(3, repeats=3), A100, "/runs/a.jsonl", "m")
    fit, _, _ = calibrate_and_store(rows(3, repeats=1, slow=2.0), A100, "/runs/b.jsonl", "m")
    assert fit.combinations == 3 and fit.fit_runs == 12
    cal = find_calibration("a100-80g")
    assert len(cal.points) == 6  # stored per source; pooled only for the fit


def test_the_check_names_each_point_by_its_combination():
    """The held-out table names the combination; the model only when the fit spans several, by name, not path."""
    fit, _, _ = calibrate_and_store(rows(3), A100, "/runs/a.jsonl", "/home/u/presets/base/tiny-base")
    assert sorted(h.label for h in fit.holdout) == ["c0", "c1", "c2"]
    fit, _, _ = calibrate_and_store(rows(3), A100, "/runs/b.jsonl", "llama-2-7b")
    assert "tiny-base: c0" in {h.label for h in fit.holdout}
    assert not any("/" in h.label for h in fit.holdout)


def test_a_fit_on_a_bound_is_reported():
    # measured faster than the datasheet allows: mfu pins at its 100% bound
    bad = rows(3, mfu=2.0)
    fit, _, _ = calibrate_and_store(bad, A100, "/runs/fast.jsonl", "m")
    assert fit.mfu == 1.0 and "mfu at its 100% bound" in fit.at_bound
    hw = calibrated_hardware(A100)  # stored, but not applied unasked: the default constants stand, saying why
    assert hw.calibration is None and hw.time_constants.mfu == A100.time_constants.mfu
    assert "its mfu sits at the 100% bound" in hw.time_constants.provenance.not_applied
    named = calibrated_hardware(A100, calibration_path("a100-80g", SoftwareVersions.installed()))
    assert "mfu at its 100% bound" in named.calibration.summary() and named.calibration.mfu_at_bound
    line = calibration_line(named.calibration, named.name)
    assert "applied as named, though its mfu sits at the 100% bound" in line


def test_every_estimate_and_plan_says_which_calibration():
    m, s = load_model("llama-2-7b"), TrainingSetup(seq_len=2048)
    e = estimate(m, A100, s, Combination(lora_r=8))
    assert e.calibration is None and e.to_json()["calibration"] is None
    assert "uncalibrated" in calibration_line(e.calibration, e.hardware)
    calibrate_and_store(rows(8), A100, "/runs/a.jsonl", "llama-2-7b")
    hw = calibrated_hardware(A100)
    e2 = estimate(m, hw, s, Combination(lora_r=8))
    assert e2.to_json()["calibration"]["runs"] == 8 and e2.step_seconds != e.step_seconds
    p = plan(m, hw, s, what_ifs=False).to_json()
    assert p["calibration"]["hardware"] == "a100-80g" and p["calibration"]["versions"]["torch"]


def test_a_corrupt_store_is_ignored_and_a_bad_named_file_is_one_line(tmp_path):
    path = calibration_path("a100-80g", SoftwareVersions.installed())
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert find_calibration("a100-80g") is None and calibrated_hardware(A100).calibration is None
    with pytest.raises(FtoptError, match="is not a calibration written by 'ftopt bench'"):
        calibrated_hardware(A100, path)
    with pytest.raises(FtoptError, match="Cannot read the calibration file"):
        calibrated_hardware(A100, tmp_path / "missing.json")


def test_stored_file_round_trips():
    _, _, path = calibrate_and_store(rows(4), A100, "/runs/a.jsonl", "m")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "ftopt.calibration/3" and doc["constants"]["provenance"]["runs"] == 4
    assert Calibration.model_validate(doc).constants.mfu == pytest.approx(MFU)


def test_bench_output_names_a_fit_on_its_bound(capsys):
    """A fit that hit its bound is not printed as if measured ("mfu 100.0%")."""
    from ftopt.cli.display import print_calibration

    fit, _, _ = calibrate_and_store(rows(3, mfu=2.0), A100, "/runs/fast.jsonl", "m")
    print_calibration(fit)
    out = capsys.readouterr().out
    assert "mfu 100.0%" in out and "at a bound: mfu at its 100% bound" in out


def test_a_hardware_name_cannot_escape_the_cache(tmp_path):
    root = (tmp_path / "cache" / "calibration").resolve()
    for name in ("../../etc", "a/b", ".."):
        path = calibration_path(name, SoftwareVersions.installed()).resolve()
        assert path.parent.parent == root


def test_a_run_spec_records_the_calibration_it_was_predicted_with():
    from ftopt.spec import RunSpec

    calibrate_and_store(rows(4), A100, "/runs/a.jsonl", "llama-2-7b")
    spec = RunSpec(hardware=calibrated_hardware(A100), setup=TrainingSetup())
    again = RunSpec.model_validate(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.hardware.calibration.runs == 4
    assert again.hardware.compute_capability == (8, 0)


def test_fsdp_runs_fit_their_engine_cost_per_mode():
    """Bench rows of FSDP2 runs (typed result rows) add an engine cost per mode, fitted like a ZeRO stage's."""
    from ftopt.planner.calibration import calibrate
    from ftopt.spec import Fsdp

    extra = {Fsdp.FULL: 0.3, Fsdp.GRAD_OP: 0.1}
    fsdp = [
        {
            "status": "ok",
            "key": f"f-{f.value}-{i}",
            "label": f"FSDP2-{f.value} {i}",
            "gpus": 2,
            "combination": Combination(lora_r=i + 1, fsdp=f).model_dump(mode="json"),
            "sweep": {"precision": "fp32"},
            "predicted": {"analytic": {"flops_per_step": x * FP32, "kernels_per_step": 1000}},
            "measured": {"peak_bytes_per_gpu": 1, "step_seconds": x / MFU + 1000 * PER_KERNEL + FIXED + s},
        }
        for f, s in extra.items()
        for i, x in enumerate((0.05, 0.2))
    ]
    fit = calibrate(rows(8) + fsdp, A100)
    assert fit.fsdp_step_seconds == pytest.approx({f.value: s for f, s in extra.items()}, rel=1e-3)
    assert fit.zero_step_seconds == {}


def _applied(hw=A100):
    return calibrated_hardware(hw).calibration is not None


def test_a_fit_whose_held_out_error_is_above_the_threshold_is_stored_but_not_applied():
    """A smoke bench's fit with a 31.9% median held-out error changed every later cpu plan. Above
    MAX_HOLDOUT_ERROR the default constants stand and plan/estimate say which calibration was refused and why."""
    from ftopt.planner.calibration_store import MAX_HOLDOUT_ERROR

    noisy = [1.0, 1.6, 0.7, 1.5, 0.6, 1.4, 0.8, 1.3]
    fit, cal, path = calibrate_and_store(rows(8, noise=noisy), A100, "/runs/noisy.jsonl", "m")
    assert fit.holdout_median_abs_error > MAX_HOLDOUT_ERROR and "mfu at its 100% bound" not in fit.at_bound
    assert path.exists() and find_calibration("a100-80g").provenance.holdout_median_abs_error == pytest.approx(
        fit.holdout_median_abs_error
    )
    m, s = load_model("llama-2-7b"), TrainingSetup(seq_len=2048)
    hw = calibrated_hardware(A100)
    e = estimate(m, hw, s, Combination(lora_r=8))
    assert e.calibration is None and e.step_seconds == estimate(m, A100, s, Combination(lora_r=8)).step_seconds
    said = e.to_json()["time_constants"]["provenance"]["not_applied"]
    assert f"held-out step-time error is {fit.holdout_median_abs_error:.1%} median, above the 15% allowed" in said
    assert str(path) in said
    line = calibration_line(e.calibration, e.hardware, e.time_constants)
    assert "uncalibrated" in line and "is not applied" in line
    p = plan(m, hw, s, what_ifs=False).to_json()
    assert p["calibration"] is None and "not applied" in p["time_constants"]["provenance"]["not_applied"]
    # the same runs without the noise pass and apply
    calibrate_and_store(rows(8), A100, "/runs/noisy.jsonl", "m")
    assert _applied()


def test_a_fit_on_too_few_measured_steps_is_not_applied():
    """`bench --max-steps 4` measures 2 steps per run (2 of warm-up): a median of two steps is not a step time."""
    from ftopt.planner.calibration import MIN_STEADY_STEPS
    from ftopt.results.rows import WARMUP_STEPS

    calibrate_and_store(rows(8, steps=WARMUP_STEPS + MIN_STEADY_STEPS - 1), A100, "/runs/short.jsonl", "m")
    prov = find_calibration("a100-80g").provenance
    assert prov.fewest_steps == MIN_STEADY_STEPS - 1 and not _applied()
    said = calibrated_hardware(A100).time_constants.provenance.not_applied
    assert "a point stands on 2 measured steps, fewer than 3 (raise --max-steps)" in said
    calibrate_and_store(rows(8, steps=WARMUP_STEPS + MIN_STEADY_STEPS), A100, "/runs/short.jsonl", "m")
    assert find_calibration("a100-80g").provenance.fewest_steps == MIN_STEADY_STEPS and _applied()
    # two repeats of 2 steps each: 4 steps behind the point's median
    calibrate_and_store(rows(8, repeats=2, steps=WARMUP_STEPS + 2), A100, "/runs/short.jsonl", "m")
    assert find_calibration("a100-80g").provenance.fewest_steps == 4 and _applied()


def _figures(cal):
    return cal.constants.model_dump(exclude={"provenance"})


@pytest.mark.parametrize("smoke_source", ["/runs/smoke.jsonl", "/runs/full.jsonl"])
def test_a_smoke_bench_added_to_a_good_fit_leaves_it_as_it_was(smoke_source, capsys):
    """A `--max-steps 4` smoke bench (2 steady steps a run) added to a good stored fit leaves that fit applied: short
    points stay out of the fit (stored, each with why), into another results file or the same one; were they in, the
    refit would stand on 2-step points and be refused, and the good fit would stop applying too."""
    from ftopt.cli.display import print_calibration

    _, good, _ = calibrate_and_store(rows(8, steps=10), A100, "/runs/full.jsonl", "m")
    assert _applied()
    # short and 1.5 times slower, on two combinations the good fit measured (the same points, as a smoke bench has)
    fit, cal, _ = calibrate_and_store(rows(2, slow=1.5, steps=4), A100, smoke_source, "m")
    assert _applied() and _figures(cal) == _figures(good)
    assert cal.provenance.fewest_steps == 8 and cal.provenance.runs == 8
    assert cal.provenance.sources == ["/runs/full.jsonl"]  # the smoke file contributed nothing to the fit
    excluded = {p.label: p.excluded for p in find_calibration("a100-80g").points if p.excluded}
    assert excluded == {"c0": "2 measured steps, fewer than 3 (raise --max-steps)", "c1": excluded["c0"]}
    assert len(find_calibration("a100-80g").points) == 8 + 2  # kept: a longer rerun of them replaces them
    print_calibration(fit)
    assert f"c1 ({smoke_source}): 2 measured steps, fewer than 3" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("order", ["smoke first", "full first"])
def test_a_longer_point_replaces_a_short_one_of_its_file_and_never_the_reverse(order):
    """A smoke bench and the full bench into one results file, in either order: the file keeps the full bench's
    points only when the smoke bench came first (its short points superseded), and keeps both when it came last
    (a short point never displaces a longer one)."""
    benches = [rows(2, steps=4), rows(8, steps=10)]
    for bench in benches if order == "smoke first" else benches[::-1]:
        fit, cal, _ = calibrate_and_store(bench, A100, "/runs/r.jsonl", "m")
    short = sorted(p.label for p in cal.points if p.excluded)
    assert short == ([] if order == "smoke first" else ["c0", "c1"])
    assert len(cal.points) == 8 + len(short) and len(fit.left_out) == len(short)
    assert cal.provenance.runs == 8 and _applied()


def test_short_points_alone_are_fitted_and_refused_as_before():
    fit, cal, _ = calibrate_and_store(rows(8, steps=4), A100, "/runs/smoke.jsonl", "m")
    assert fit.fit_runs == 8 and fit.left_out == [] and not any(p.excluded for p in cal.points)
    hw = calibrated_hardware(A100)
    assert hw.calibration is None
    assert "a point stands on 2 measured steps, fewer than 3 (raise --max-steps)" in (
        hw.time_constants.provenance.not_applied
    )


def test_a_fit_from_results_leaves_short_points_out():
    """The report's check fits a results file directly: the same rule."""
    from ftopt.planner.calibration import calibrate

    good = calibrate(rows(8, steps=10), A100)
    smoke = [
        dict(r, key=f"s-{r['key']}", label=f"s{r['label']}", combination=Combination(lora_r=20 + i).model_dump())
        for i, r in enumerate(rows(2, slow=1.5, steps=4))
    ]
    mixed = calibrate(rows(8, steps=10) + smoke, A100)
    assert mixed.model_dump(exclude={"left_out"}) == good.model_dump(exclude={"left_out"})
    assert [x.split(":")[0] for x in mixed.left_out] == ["sc0", "sc1"]
