"""Report in both languages with hostile strings; zero successful runs; rendered in headless Chromium if present."""
import shutil
import subprocess

import pytest

from ftopt.report.render import build_report, decide

HOSTILE = "<script>alert('x')</script>&\"quote\""


def row(label, status="ok", loss=1.0, epoch=10.0, peak=100 * 2**20, gpus=1):
    r = {"key": label, "label": label, "status": status, "gpus": gpus,
         "combination": {"gc": False, "lora_r": 8, "zero": 0, "offload": "none", "attn": "sdpa", "lora_targets": None},
         "predicted": {"analytic": {"peak_bytes_per_gpu": int(peak * 1.02), "breakdown": {"weights": peak // 2, "activations": peak // 2}}}}
    if status == "ok":
        r["measured"] = {"peak_bytes_per_gpu": peak, "epoch_seconds": epoch, "eval_loss": loss, "exact_match": 0.5,
                         "step_seconds": 0.1}
    else:
        r["error_tail"] = "CUDA out of memory"
    return r


ROWS = [row(HOSTILE, loss=1.0, epoch=20), row("LoRA fast", loss=1.03, epoch=10), row("full", status="oom")]


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_both_languages_escapes_strings(tmp_path, lang):
    paths = build_report(ROWS, tmp_path, lang=lang, title=HOSTILE, hardware=HOSTILE, cost_per_gpu_hour=2.0)
    h = paths["html"].read_text()
    assert "<script>" not in h and "&lt;script&gt;" in h
    assert h.count("data:image/png;base64,") == 4  # self-contained charts
    assert (tmp_path / "pareto.png").exists() and paths["markdown"].exists()
    if lang == "ja":
        assert "実測で最もコスト効率の良い組み合わせ" in h
    else:
        assert "Most cost-efficient measured combination" in h
    assert "LoRA fast" in h  # within 5% of the best loss and twice as fast: chosen


def test_decision_tradeoff():
    d = decide(ROWS)
    assert d.best["label"] == "LoRA fast" and d.tradeoff == [("quality", "0.030")]
    assert d.failed == ["full (oom)"]


def test_report_with_zero_successful_runs(tmp_path):
    paths = build_report([row("a", status="oom"), row("b", status="error")], tmp_path, lang="en")
    h = paths["html"].read_text()
    assert "No run finished successfully" in h and "a (oom)" in h


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_html_renders_in_chromium(tmp_path):
    paths = build_report(ROWS, tmp_path, lang="ja")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
                    f"--screenshot={shot}", "--window-size=1100,2400", paths["html"].as_uri()],
                   check=True, timeout=120, capture_output=True)
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_states_the_calibration_check(tmp_path, lang):
    cal = {"fit_runs": 7, "holdout_runs": 5, "holdout_median_abs_error": 0.03, "holdout_worst_abs_error": 0.038,
           "spearman_rho": 1.0, "pairs_ordered": 6, "pairs_compared": 6}
    h = build_report(ROWS, tmp_path, lang=lang, calibration=cal)["html"].read_text()
    assert "3.0%" in h and "3.8%" in h and "1.00" in h and "6/6" in h
