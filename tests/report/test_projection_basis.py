"""The report's basis and tie band follow what the target is: projected cost whenever the PoC ran another GPU,
model or GPU count; the target's own time-model error as the tie band; the target's shape as `plan` would set it
for the target model and GPU. Synthetic results lines: no run is trained here."""

import pytest

import ftopt.report.projection as projection
from ftopt.report.decision import Basis
from ftopt.report.render import ReportSettings, build_report
from ftopt.report.render import _decide as decide_for
from ftopt.results.rows import parse_rows
from ftopt.spec import ProductionOptions, load_model
from tests.planner.test_headroom import calibration_with_error
from tests.report.test_decision import EM, _projected_rows, _target


def _settings(rows, **kw):
    return ReportSettings(hardware="cpu", quality_target=EM, production=_target(rows, **kw))


@pytest.mark.parametrize(
    "kw,says",
    [
        (dict(target_model="tiny-base"), "its model (tiny-llama, not tiny-base)"),
        (dict(target_gpus=2), "its GPU count (1, not 2)"),
    ],
)
def test_the_same_gpu_with_another_model_or_gpu_count_decides_by_projection(tmp_path, kw, says):
    rows = _projected_rows()
    d, _ = decide_for(parse_rows(rows), _settings(rows, target_gpu="cpu", **kw))
    assert d.basis is Basis.PROJECTED
    t = _target(rows, target_gpu="cpu", **kw)
    h = build_report(rows, tmp_path, lang="en", quality_target=EM, production=t, hardware="cpu")["html"].read_text()
    assert says in h and "not by PoC seconds" in h
    assert "its GPU (" not in h  # the GPU is the same: not named as a difference


def test_what_the_poc_ran_is_decided_by_measurement():
    rows = _projected_rows()
    d, _ = decide_for(parse_rows(rows), _settings(rows, target_gpu="cpu", target_gpus=1))
    assert d.basis is Basis.MEASURED


def test_the_projected_tie_band_is_the_targets_calibrated_error(tmp_path, monkeypatch):
    cal = calibration_with_error("a100-80g", 0.12)
    real = projection.calibrated_hardware

    def calibrated(hw):
        hw = real(hw)
        return hw.with_time(hw.time_constants.model_copy(update={"provenance": cal}))

    monkeypatch.setattr(projection, "calibrated_hardware", calibrated)
    rows = _projected_rows()
    d, _ = decide_for(parse_rows(rows), _settings(rows))
    assert d.basis is Basis.PROJECTED and d.projected_tie == 0.12
    t = _target(rows)
    h = build_report(rows, tmp_path, lang="en", quality_target=EM, production=t, hardware="cpu")["html"].read_text()
    assert "projections within 12% of each other" in h


def test_the_default_target_shape_is_the_plans_for_the_target_model():
    """tiny-llama has 512 positions: `plan` for it on an A100 trains 512-token sequences, not 2048."""
    rows = _projected_rows()
    t = projection.production_target_for(
        parse_rows(rows), ProductionOptions(target_gpu="a100-80g", target_model="tiny-llama", dataset_tokens=10**6)
    )
    assert t.seq_len == load_model("tiny-llama").max_positions < 2048 and t.micro_batch == 1
    assert not t.shape_given
    big = _target(rows, target_model="llama-3.1-8b")
    assert big.seq_len == 2048  # the plan's default on a GPU, within the 8B model's positions
