"""Production projection: money and GPU-hours follow from the planner's time, per run and per year; the time
budget check; the next-cheapest alternative; the staged roadmap; and the report command's flags."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.report.projection import PILOT_DATA_FRACTION, ProductionTarget, plan_production, project, projections
from ftopt.results.rows import parse_rows
from ftopt.spec import Combination
from tests.report.test_report import FULL, LORA, ROWS, row

TARGET = dict(
    model="tiny-llama",
    gpu="a100-80g",
    gpus_per_node=8,
    dataset_tokens=1_000_000_000,
    epochs=1.0,
    retrains_per_year=12,
    cost_per_gpu_hour=3.0,
    currency="USD",
    seq_len=512,
    micro_batch=8,
    nodes=1,
    max_hours=None,
    poc_model=None,
    shape_given=False,
    headroom=0.1,
)


def test_projection_cost_is_gpu_hours_times_price_and_scales_with_data():
    t = ProductionTarget(**TARGET)
    p = project(Combination(lora_r=8), "LoRA", t)
    assert p.gpus == 8 and p.gpu_hours_per_run == pytest.approx(8 * p.hours_per_run)
    assert p.cost_per_run == pytest.approx(3.0 * p.gpu_hours_per_run)
    assert p.cost_per_year == pytest.approx(12 * p.cost_per_run)
    twice = project(Combination(lora_r=8), "LoRA", t.model_copy(update={"dataset_tokens": 2_000_000_000}))
    assert twice.hours_per_run == pytest.approx(2 * p.hours_per_run, rel=0.01)
    assert p.fits_budget is None  # no --max-hours: no verdict
    tight = project(Combination(lora_r=8), "LoRA", t.model_copy(update={"max_hours": p.hours_per_run / 2}))
    assert tight.fits_budget is False


def test_plan_production_alternative_and_roadmap():
    t = ProductionTarget(**TARGET)
    rows = parse_rows([row("LoRA", combination=LORA), row("full", combination=FULL), row("again", combination=LORA)])
    p = projections(rows, t)
    plan = plan_production(t, p["LoRA"], [p["LoRA"], p["full"], p["again"]], poc_gpu_hours=0.02, poc_cost=None)
    assert (
        plan.alternative is not None and plan.alternative.label == "full"
    )  # the chosen one is not its own alternative
    assert [s.name for s in plan.stages] == ["poc", "pilot", "production"]
    poc, pilot, prod = plan.stages
    assert poc.measured and poc.gpu_hours == 0.02 and poc.cost is None
    assert pilot.gpu_hours == pytest.approx(PILOT_DATA_FRACTION * plan.chosen.gpu_hours_per_run, rel=0.02)
    assert prod.cost == pytest.approx(plan.chosen.cost_per_year)


def test_report_command_projects_production(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = [
        dict(r, sweep={"model_args": ["--random-init", "tiny-llama"], "seq_len": 64, "micro_batch": 8}) for r in ROWS
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(
        app,
        [
            "report",
            str(results),
            "--out",
            str(tmp_path / "rep"),
            "--target-gpu",
            "a100-80g",
            "--target-gpus",
            "8",
            "--dataset-tokens",
            "1000000000",
            "--retrains-per-year",
            "12",
            "--cost-per-gpu-hour",
            "3",
            "--currency",
            "USD",
            "--quality-target",
            "exact_match>=0.5",
            "--max-hours",
            "10",
        ],
    )
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.en.md").read_text()
    assert "per year at 12 runs a year" in md and "USD" in md and "## Roadmap" in md
    assert "within the budget of 10.0 h" in md


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--quality-target", "exact_match=0.5"], "METRIC>=VALUE"),
        (["--target-gpu", "a100-80g"], "Give --target-gpu and --dataset-tokens together"),
        (["--target-gpu", "no-such-gpu", "--dataset-tokens", "1000"], "no-such-gpu"),
        # production flags without a projection were dropped without a word; inf priced a run at inf USD
        (["--target-nodes", "2"], "--target-nodes describes the production run"),
        (["--retrains-per-year", "4"], "--retrains-per-year describes the production run"),
        (["--cost-per-gpu-hour", "inf"], "--cost-per-gpu-hour: Input should be a finite number"),
        (["--headroom", "1.5"], "--headroom is the share of GPU memory kept free"),
    ],
)
def test_report_flag_errors_are_one_line(tmp_path, args, fragment):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    res = CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "rep"), *args])
    assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output
