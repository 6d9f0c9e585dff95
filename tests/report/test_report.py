"""Report in both languages with hostile strings; the decision's three points; the quality bar (met, not met,
nothing learned); 'no memory technique needed'; production projection and roadmap; zero successful runs."""

import re

import pytest

from ftopt.report.projection import production_target_for
from ftopt.report.render import build_report, decide
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import parse_rows
from ftopt.spec import ProductionOptions

HOSTILE = "<script>alert('x')</script>&\"quote\""
LORA = {"gc": False, "lora_r": 8, "zero": 0, "offload": "none", "attn": "sdpa", "lora_targets": None}
FULL = {**LORA, "lora_r": 0}


def row(label, status="ok", loss=1.0, epoch=10.0, peak=100 * 2**20, gpus=1, em=0.5, combination=LORA):
    r = {
        "key": label,
        "label": label,
        "status": status,
        "gpus": gpus,
        "combination": dict(combination),
        "sweep": {"model_args": [], "seq_len": 64, "micro_batch": 8},
        "predicted": {
            "analytic": {
                "peak_bytes_per_gpu": int(peak * 1.02),
                "breakdown": {"weights": peak // 2, "activations": peak // 2},
            }
        },
    }
    if status == "ok":
        r["measured"] = {
            "peak_bytes_per_gpu": peak,
            "epoch_seconds": epoch,
            "eval_loss": loss,
            "exact_match": em,
            "step_seconds": 0.1,
            "train_seconds": 36.0,
            "quality": {"exact_match": em, "token_f1": em},
        }
    else:
        r["error_tail"] = "CUDA out of memory"
    return r


def run_json(hw=None, **setup) -> dict:
    """A complete run specification as a results line holds it (`run`)."""
    from ftopt.planner import resolve
    from ftopt.spec import load_hardware

    hw = hw or load_hardware("cpu")
    spec = resolve.new_run(
        hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw, **setup), resolve.combination()
    )
    return spec.to_json()


ROWS = [row(HOSTILE, loss=1.0, epoch=20), row("LoRA fast", loss=1.03, epoch=10), row("full", status="oom")]
EM = QualityTarget.parse("exact_match>=0.5")


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_both_languages_escapes_strings(tmp_path, lang):
    paths = build_report(
        ROWS, tmp_path, lang=lang, title=HOSTILE, hardware=HOSTILE, cost_per_gpu_hour=2.0, currency="<b>€</b>"
    )
    h = paths["html"].read_text()
    assert "<script>" not in h and "&lt;script&gt;" in h and "<b>€</b>" not in h
    assert h.count("data:image/png;base64,") == 4  # self-contained charts
    assert (tmp_path / f"pareto.{lang}.png").exists() and paths["markdown"].exists()
    md = paths["markdown"].read_text()
    assert f"(pareto.{lang}.png)" in md  # each language links its own charts
    assert not re.search(r"&(lt|gt|amp|quot|#x?[0-9a-f]+);", md) and "\\<script\\>" in md  # no HTML entities
    assert ("結論" if lang == "ja" else "Decision") in h
    assert "LoRA fast" in h  # within 5% of the best loss and twice as fast: chosen


def test_decision_tradeoff_and_derived_target():
    d = decide(parse_rows(ROWS))
    assert not d.target_given and d.target.metric == "eval_loss" and d.target.value == pytest.approx(1.05)
    assert d.best.label == "LoRA fast" and d.top.label == HOSTILE  # the better-scoring run, named
    assert d.failed == ["full (oom)"]


def test_time_tradeoff_compares_runs_on_the_same_gpu_count():
    """A 1-GPU run is not called slower than a 2-GPU run: the fastest on the same GPU count is the reference."""
    rows = [row("one", epoch=12, em=0.9), row("two", epoch=6, gpus=2, em=0.4), row("fast one", epoch=10, em=0.3)]
    d = decide(parse_rows(rows), EM)
    assert d.best.label == "one" and d.fastest.label == "fast one"


def test_no_run_meets_the_target_and_nothing_to_scale(tmp_path):
    rows = [row("a", em=0.2), row("b", em=0.31)]
    d = decide(parse_rows(rows), EM)
    assert d.best is None and d.closest.label == "b" and d.learned
    h = build_report(rows, tmp_path, lang="en", quality_target=EM)["html"].read_text()
    assert "No run met it; the closest was b at 31.0%" in h and "There is nothing to scale yet" in h


@pytest.mark.parametrize(
    "lang,text", [("en", "Nothing of the task was learned"), ("ja", "タスクはまったく学習されていません")]
)
def test_report_says_when_nothing_was_learned(tmp_path, lang, text):
    rows = [row("a", em=0.0), row("b", em=0.0)]
    assert not decide(parse_rows(rows), EM).learned
    assert text in build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()


@pytest.mark.parametrize("lang,text", [("en", "No memory technique is needed"), ("ja", "メモリ削減手法は不要です")])
def test_no_memory_technique_needed(tmp_path, lang, text):
    rows = [row("full", combination=FULL, em=0.9, epoch=5), row("LoRA", em=0.9, epoch=8)]
    assert text in build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()


def test_every_row_has_gpu_count_and_gpu_hours(tmp_path):
    md = build_report([row("zero2", gpus=2, epoch=3600, em=0.9)], tmp_path, lang="en", quality_target=EM)[
        "markdown"
    ].read_text()
    header = next(l for l in md.splitlines() if l.startswith("| combination"))
    assert "GPUs" in header and "GPU-hours per epoch" in header
    cells = [c.strip() for c in next(l for l in md.splitlines() if l.startswith("| zero2")).split("|")[1:-1]]
    assert cells[1] == "2" and cells[7] == "2"  # 2 GPUs x 1 h per epoch = 2 GPU-hours (after the spread)


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_production_projection_cost_per_run_and_year_with_roadmap(tmp_path, lang):
    prod = production_target_for(
        parse_rows(ROWS),
        ProductionOptions(
            target_gpu="a100-80g",
            target_gpus=8,
            dataset_tokens=1_000_000_000,
            retrains_per_year=12,
            cost_per_gpu_hour=3.0,
            max_hours=10,
        ),
    )
    md = build_report(ROWS, tmp_path, lang=lang, quality_target=EM, production=prod)["markdown"].read_text()
    assert ("Production projection" if lang == "en" else "本番の予測") in md
    assert ("Roadmap" if lang == "en" else "段階的な進め方") in md and "USD" in md
    projection = md.split("## " + ("Production projection" if lang == "en" else "本番の予測"))[1]
    tag = "(recommended)" if lang == "en" else "(推奨)"
    line = next(l for l in projection.splitlines() if l.startswith("| ") and tag in l)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    per_run, per_year = float(cells[6].replace(",", "")), float(cells[7].replace(",", ""))
    assert per_year == pytest.approx(12 * per_run, rel=0.02)  # rounding of the printed figures only


def test_report_with_zero_successful_runs(tmp_path):
    paths = build_report([row("a", status="oom"), row("b", status="error")], tmp_path, lang="en")
    h = paths["html"].read_text()
    assert "No run finished successfully" in h and "a (oom)" in h


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_states_the_calibration_check(tmp_path, lang):
    cal = {
        "fit_runs": 7,
        "holdout_runs": 5,
        "holdout_median_abs_error": 0.03,
        "holdout_worst_abs_error": 0.038,
        "spearman_rho": 1.0,
        "pairs_ordered": 6,
        "pairs_compared": 6,
    }
    h = build_report(ROWS, tmp_path, lang=lang, calibration=cal)["html"].read_text()
    assert "3.0%" in h and "3.8%" in h and "1.00" in h and "6/6" in h


@pytest.mark.parametrize("lang,ranked", [("en", "ordered right"), ("ja", "大小関係")])
def test_a_calibration_with_nothing_to_rank_states_no_ranking(tmp_path, lang, ranked):
    """A two-run bench's report read 'rank correlation (Spearman) n/a; 0/0 pairs of combinations more than 10%
    apart are ordered right'; the console says nothing of either, and now the report neither."""
    cal = {
        "fit_runs": 2,
        "holdout_runs": 2,
        "holdout_median_abs_error": 0.307,
        "holdout_worst_abs_error": 0.529,
        "spearman_rho": None,
        "pairs_ordered": 0,
        "pairs_compared": 0,
    }
    md = build_report(ROWS, tmp_path, lang=lang, calibration=cal)["markdown"].read_text()
    line = next(x for x in md.splitlines() if "30.7%" in x)
    assert "52.9%" in line and "0/0" not in line and "n/a" not in line and ranked not in line


@pytest.mark.parametrize(
    "lang,text", [("en", "assume every sequence is --seq-len"), ("ja", "--seq-len のトークン数ちょうど")]
)
def test_unpacked_runs_say_the_prediction_assumes_full_rows(tmp_path, lang, text):
    """Predicted 35 MiB against a measured 16 MiB is explained where the results are: an unpacked run's batches
    are padded only to their longest row, the prediction assumes --seq-len rows."""

    def run(packing, where="setup"):
        r = row(f"packed={packing}")
        r["run"] = run_json()
        r["run"]["setup"].pop("batching")
        r["run"][where]["packing"] = packing
        return r

    said = lambda rows: text in build_report(rows, tmp_path, lang=lang)["html"].read_text()
    assert said([run(True), run(False)]) and said([run(False, where="data")])  # files from before the move too
    assert not said([run(True)]) and not said([run(True, where="data")])


def _results_on(tmp_path, *gpus):
    """A results file whose lines record the hardware they ran on (run.hardware), as `ftopt bench` writes it."""
    import json

    from ftopt.spec import load_hardware

    path = tmp_path / "results.jsonl"
    lines = [{**row(f"run{i}", loss=1.0 + i / 100), "run": run_json(load_hardware(g))} for i, g in enumerate(gpus)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_report_defaults_to_the_hardware_the_rows_ran_on(tmp_path):
    from typer.testing import CliRunner

    from ftopt.cli.app import app
    from ftopt.report.cli_support import report_settings
    from ftopt.results.rows import read_results
    from ftopt.spec import load_hardware

    path = _results_on(tmp_path, "rtx4090", "rtx4090")
    r = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "rtx4090" in (tmp_path / "rep" / "report.en.html").read_text()
    s = report_settings(read_results(path))  # report's own defaults: no --gpu
    assert s["hardware"] == "rtx4090" and s["capacity_bytes"] == load_hardware("rtx4090").memory_bytes


def test_report_rows_on_different_hardware_ask_for_gpu(tmp_path):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    path = _results_on(tmp_path, "rtx4090", "a100-80g")
    r = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "--gpu" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep"), "--gpu", "a100-80g"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "lang,qlora,adam8",
    [
        ("en", "QLoRA (NF4 base, rank 8)", "8-bit AdamW"),
        ("ja", "QLoRA(ベースモデルをNF4で4ビット量子化、ランク8)", "8ビットAdamW"),
    ],
)
def test_quantized_base_and_8bit_optimizer_are_named_as_techniques(tmp_path, lang, qlora, adam8):
    best = row("QLoRA run", combination=dict(LORA, gc=True, quant="nf4", optim="adamw-8bit"))
    h = build_report([best], tmp_path, lang=lang)["html"].read_text()
    assert qlora in h and adam8 in h
    plain = row("full run", combination=dict(FULL, optim="adamw-8bit"))  # an 8-bit optimizer alone is a technique
    h = build_report([plain], tmp_path / "b", lang=lang)["html"].read_text()
    assert adam8 in h and "QLoRA" not in h


def test_a_file_with_no_result_row_is_one_error_line(tmp_path):
    """Old: one warning per line, then the error. Now the error alone, with the count and the first line's problem."""
    import json

    from typer.testing import CliRunner

    from ftopt.cli.app import app

    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "status": "ok"}) + "\n" for i in range(30)) + "\nnot json\n")
    r = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        f"error: The results file {path} has no valid result line: none of its 31 lines is a result row; line 1 is "
        "an invalid result (label: Field required; combination: Field required)."
    ]
    assert not (tmp_path / "rep").exists()


def test_lines_that_are_not_rows_beside_good_ones_are_warned_first_few_by_line_then_counted(tmp_path):
    import json

    from typer.testing import CliRunner

    from ftopt.cli.app import app
    from ftopt.results.rows import MAX_LINE_WARNINGS

    path = tmp_path / "results.jsonl"
    bad = ["{broken"] * (MAX_LINE_WARNINGS + 4)
    path.write_text("\n".join([json.dumps(row("a")), *bad, json.dumps(row("b"))]) + "\n")
    r = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert [f"line {n}: skipped a corrupt result" in w for n, w in enumerate(warned[:-1], 2)] == [True] * 3
    assert (
        warned[-1]
        == f"warning: {path}: skipped 4 more lines that are not result rows (lines 5 to 8); 2 valid result lines read"
    )
    assert (tmp_path / "rep" / "report.en.html").exists()
