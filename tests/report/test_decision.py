"""A PoC decision that survives noise: per-step times with a spread, ties broken by quality, the
projected basis when the PoC ran on other hardware, the plan's pick beside the measured pick, and a report that
does not contradict itself. Synthetic results lines: no run is trained here."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.report.decision import Basis, Why, decide
from ftopt.report.projection import production_target_for, projections
from ftopt.report.render import build_report
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import WARMUP_STEPS, ResultRow, parse_rows, read_results, step_stats
from ftopt.spec import ProductionOptions
from tests.report.test_report import LORA, row

EM = QualityTarget.parse("exact_match>=0.5")
SDPA, EAGER = dict(LORA), dict(LORA, attn="eager")
STEPS_PER_EPOCH = 100


def timed(label, step, em, combination, jitter=0.05, pred_step=None, first_loss=1.5, peak=100 * 2**20, n=20):
    """A run with `n` per-step times around `step` seconds (+-jitter), two slow warm-up steps first."""
    r = row(label, em=em, combination=combination, peak=peak)
    times = [step * 5, step * 2] + [step * (1 + jitter * ((i % 5) - 2) / 2) for i in range(n)]
    med = step_stats(times).median
    r["measured"].update(
        step_times=times, warmup_steps=WARMUP_STEPS, step_seconds=med, epoch_seconds=med * STEPS_PER_EPOCH
    )
    r["measured"]["first_loss"] = first_loss
    r["predicted"]["analytic"]["step_seconds"] = pred_step or step
    return r


def test_warmup_steps_are_left_out_of_the_median_and_spread():
    s = step_stats([9.0, 4.0, 1.0, 1.2, 0.8, 1.0, 1.1])
    assert s.warmup == WARMUP_STEPS == 2 and s.median == pytest.approx(1.0) and s.high < 1.5  # 9 s and 4 s gone
    assert s.low <= s.median <= s.high


def test_a_gap_within_noise_is_a_tie_broken_by_quality():
    """The issue's demo: eager 6.38 s against sdpa 6.78 s (6%), eager scoring 75.0% against 79.7%. The old
    decision took the cheaper median (eager); within the spread it is a tie, and quality decides: sdpa."""
    rows = parse_rows(
        [timed("LoRA r8 + eager", 0.0638, 0.75, EAGER, jitter=0.15), timed("LoRA r8 + sdpa", 0.0678, 0.797, SDPA, 0.15)]
    )
    d = decide(rows, EM)
    assert d.basis is Basis.MEASURED and d.best.label == "LoRA r8 + sdpa"
    assert [r.label for r in d.tied] == ["LoRA r8 + eager"] and d.tie_break == "quality"


def test_a_gap_beyond_noise_decides_and_overrides_the_plan_with_the_reason(tmp_path):
    # the plan predicted sdpa faster; measured, eager is 30% faster with a 2% spread: beyond noise
    rows = [
        timed("LoRA r8 + eager", 0.05, 0.7, EAGER, jitter=0.02, pred_step=0.08),
        timed("LoRA r8 + sdpa", 0.065, 0.8, SDPA, jitter=0.02, pred_step=0.06),
    ]
    d = decide(parse_rows(rows), EM)
    assert d.best.label == "LoRA r8 + eager" and not d.tied
    assert d.plan_pick.label == "LoRA r8 + sdpa" and d.why is Why.SLOWER and not d.confirmed
    h = build_report(rows, tmp_path, lang="en", quality_target=EM)["html"].read_text()
    assert "The plan's pick was LoRA r8 + sdpa, but it was measured 30% costlier" in h
    assert "beyond the step-time spread" in h and "the recommendation is verified" not in h


@pytest.mark.parametrize("lang,text", [("en", "the recommendation is verified"), ("ja", "推奨は検証済みです")])
def test_the_report_says_when_the_measurement_confirms_the_plan(tmp_path, lang, text):
    rows = [
        timed("LoRA r8 + eager", 0.08, 0.8, EAGER, jitter=0.02, pred_step=0.09),
        timed("LoRA r8 + sdpa", 0.05, 0.8, SDPA, jitter=0.02, pred_step=0.06),
    ]
    d = decide(parse_rows(rows), EM)
    assert d.confirmed and d.plan_pick.label == d.best.label == "LoRA r8 + sdpa"
    h = build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()
    assert text in h
    assert ("warm-up" if lang == "en" else "ウォームアップ") in h  # the basis states the warm-up steps left out


def test_the_plan_pick_that_misses_the_bar_is_named_with_the_reason(tmp_path):
    rows = [
        timed("LoRA r8 + eager", 0.08, 0.8, EAGER, pred_step=0.09),
        timed("LoRA r8 + sdpa", 0.05, 0.2, SDPA, pred_step=0.06),
    ]
    d = decide(parse_rows(rows), EM)
    assert d.best.label == "LoRA r8 + eager" and d.why is Why.QUALITY
    h = build_report(rows, tmp_path, lang="en", quality_target=EM)["html"].read_text()
    assert "but it missed the quality bar (exact match 0.2)" in h


def test_the_tradeoff_compares_quality_with_the_run_it_names(tmp_path):
    """Old: 'The next-cheapest alternative, LoRA r8 + sdpa ... It gives up 0.25 on exact match' where 0.25 was the
    gap to another run (the full fine-tune) and sdpa scored higher. Now the sentence names its reference run."""
    rows = [
        timed("LoRA r8 + sdpa", 0.05, 0.75, SDPA, jitter=0.01),
        timed("full", 0.2, 1.0, dict(LORA, lora_r=0), jitter=0.01),
    ]
    h = build_report(rows, tmp_path, lang="en", quality_target=EM)["html"].read_text()
    assert "gives up 0.25 on exact match against full, the best-scoring run" in h


def _projected_rows():
    """On the PoC's CPU eager measured 6% faster; on an A100 the planner projects sdpa cheaper."""
    return [
        timed("LoRA r8 + eager", 0.0638, 0.75, EAGER, jitter=0.01),
        timed("LoRA r8 + sdpa", 0.0678, 0.797, SDPA, jitter=0.01),
    ]


def _target(rows, **kw):
    args = dict(target_gpu="a100-80g", target_gpus=8, dataset_tokens=10**9, cost_per_gpu_hour=3.0, currency="USD")
    return production_target_for(parse_rows(rows), ProductionOptions(**{**args, **kw}))


@pytest.mark.parametrize("lang,basis", [("en", "not by PoC seconds"), ("ja", "PoCの秒数ではなく")])
def test_other_target_hardware_decides_by_projected_cost(tmp_path, lang, basis):
    rows = _projected_rows()
    t = _target(rows, target_model="llama-3.1-8b")
    projs = projections(parse_rows(rows), t)
    eager, sdpa = (projs[r["key"]].gpu_hours_per_run for r in rows)
    assert sdpa < eager  # the premise: the A100 projection ranks them the other way round from the CPU
    h = build_report(rows, tmp_path, lang=lang, quality_target=EM, production=t, hardware="cpu")["html"].read_text()
    assert basis in h
    assert ("LoRA r8 + sdpa (recommended)" if lang == "en" else "LoRA r8 + sdpa (推奨)") in h


@pytest.mark.parametrize(
    "lang,says", [("en", "do not fit the production GPUs"), ("ja", "本番GPUのメモリに収まりません")]
)
def test_runs_that_met_the_bar_but_do_not_fit_the_target_are_named_as_such(tmp_path, lang, says):
    """Old: 'no run met the quality target' right after '2 of 2 runs met it', when none of them fits the target."""
    rows = _projected_rows()
    t = _target(rows, target_model="llama-3.1-405b", target_gpus=1)  # LoRA of 405B on one A100: nothing fits
    assert not any(p.fits_memory for p in projections(parse_rows(rows), t).values())
    md = build_report(rows, tmp_path, lang=lang, quality_target=EM, production=t, hardware="cpu")["markdown"]
    text = md.read_text()
    assert says in text and "LoRA r8 + eager" in text
    assert "no run met the quality target" not in text and "品質目標を達成した実行がない" not in text


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_next_cheapest_is_never_cheaper_than_the_pick(tmp_path, lang):
    """Old: 'the next-cheapest alternative' cost less than the recommendation (178.80 vs 179.00 USD). A tie within
    noise broken by quality may pick the dearer one; the cheaper one is then named as such, with the reason."""
    rows = [
        timed("LoRA r8 + sdpa", 0.05, 0.6, SDPA, jitter=0.2),
        timed("LoRA r8 + sdpa, GC", 0.052, 0.9, dict(SDPA, gc=True), jitter=0.2),
    ]
    t = _target(rows, target_gpu="cpu", target_gpus=1)  # same hardware as the PoC: the measured basis
    h = build_report(rows, tmp_path, lang=lang, quality_target=EM, production=t, hardware="cpu")["html"].read_text()
    d = decide(parse_rows(rows), EM)
    assert d.best.label == "LoRA r8 + sdpa, GC" and d.tie_break == "quality"
    assert ("next-cheapest" not in h) if lang == "en" else ("次に安い候補" not in h)
    assert ("is projected cheaper on the target" if lang == "en" else "のほうが安く") in h


def test_the_bench_quality_target_is_the_reports_default(tmp_path):
    """Old: the report derived its own target (best eval loss + 5%): 1 of 3 runs 'met' it while all scored 100%."""
    bar = QualityTarget.parse("exact_match>=0.9")
    rows = [dict(row(f"r{i}", loss=1.0 + i / 10, em=1.0), quality_target=bar.model_dump()) for i in range(3)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    h = (tmp_path / "rep" / "report.en.html").read_text()
    assert "3 of 3 successful runs met it" in h and "set with ftopt bench --quality-target" in h


def test_an_unknown_metric_is_one_line_and_exit_2(tmp_path):
    """Old: 'the closest was - at -'."""
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(row("a")) + "\n")
    res = CliRunner().invoke(
        app, ["report", str(path), "--out", str(tmp_path / "rep"), "--quality-target", "bleu>=0.3"]
    )
    assert res.exit_code == 2 and "'bleu'" in res.output and "exact_match" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "lang,text", [("en", "Nothing to learn"), ("ja", "ベースモデルはすでにこのタスクを解けており")]
)
def test_a_base_that_already_knew_the_task_is_flagged(tmp_path, lang, text):
    rows = [timed(f"r{i}", 0.05, 1.0, dict(LORA, lora_r=4 * (i + 1)), first_loss=0.00025) for i in range(2)]
    assert decide(parse_rows(rows), EM).nothing_to_learn
    assert text in build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()
    learning = [timed("r", 0.05, 1.0, LORA, first_loss=2.3)]
    assert not decide(parse_rows(learning), EM).nothing_to_learn


def test_yen_has_no_decimals_and_one_gpu_reads_as_one_gpu(tmp_path):
    rows = [timed("LoRA", 0.05, 0.9, LORA)]
    t = _target(rows, target_gpus=1, currency="JPY", cost_per_gpu_hour=450.0)
    md = build_report(rows, tmp_path, lang="en", quality_target=EM, production=t)["markdown"].read_text()
    assert "GPU(s)" not in md and "epoch(s)" not in md and "on 1 GPU," in md and "× 1 epoch" in md
    amounts = [w for line in md.splitlines() if "JPY" in line for w in line.split() if w[:1].isdigit()]
    assert amounts and not any("." in a.rstrip(".,") for a in amounts if a.replace(",", "").rstrip(".").isdigit())
    assert "JPY" in md and not any(f".{d}{d2} JPY" in md for d in "0123456789" for d2 in "0123456789")


def test_each_language_keeps_its_own_charts(tmp_path):
    rows = [timed("LoRA", 0.05, 0.9, LORA)]
    for lang in ("en", "ja"):
        build_report(rows, tmp_path, lang=lang, quality_target=EM)
    en, ja = (tmp_path / "pareto.en.png").read_bytes(), (tmp_path / "pareto.ja.png").read_bytes()
    assert en != ja and "(pareto.ja.png)" in (tmp_path / "report.ja.md").read_text()


def test_old_results_lines_load_migrated(tmp_path):
    """bench/1 (sweep flags, no run) and bench/2 (a median, no per-step times) lines load; the median stands."""
    v1 = dict(row("v1"), schema="ftopt.sweep.bench/1", sweep={"model_args": [], "seq_len": 64, "micro_batch": 8})
    v2 = dict(row("v2"), schema="ftopt.sweep.bench/2")
    v2["measured"] = dict(v2["measured"], tokens_per_s=100.0)
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(v1) + "\n" + json.dumps(v2) + "\n")
    rows = read_results(path)
    assert [r.key for r in rows] == ["v1", "v2"] and all(isinstance(r, ResultRow) for r in rows)
    s = rows[1].measured.stats()
    assert s.median == s.low == s.high == 0.1 and s.steps == 0  # no spread to claim
    assert rows[0].legacy_sweep["seq_len"] == 64 and rows[1].measured.warmup_steps == 1


def test_report_projects_the_8b_production_model_at_its_own_shape(tmp_path):
    """Hours and cost for llama-3.1-8b on 8 A100s, at the plan's sequence length for the
    A100 (2048), not the PoC's CPU length (64); quality stated as measured on the PoC model only."""
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _projected_rows()))
    args = ["--target-model", "llama-3.1-8b", "--target-gpu", "a100-80g", "--target-gpus", "8"]
    args += ["--dataset-tokens", "1000000000", "--cost-per-gpu-hour", "3"]
    res = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "rep"), *args])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.en.md").read_text()
    assert "For llama-3.1-8b on 8 × a100-80g with 1,000,000,000 tokens" in md
    assert "sequence length 2048, micro-batch 1" in md and "Quality was measured on the PoC model" in md
    line = next(l for l in md.split("## Production projection")[1].splitlines() if "(recommended)" in l)
    hours, cost = line.split("|")[4].strip(), float(line.split("|")[7].replace(",", ""))
    assert hours.endswith(" h") and float(hours[:-2]) > 1 and cost > 10  # 8B on 1e9 tokens: hours, not seconds
    res = CliRunner().invoke(
        app, ["report", str(path), "--out", str(tmp_path / "r2"), *args, "--target-seq-len", "4096"]
    )
    assert res.exit_code == 0 and "sequence length 4096" in (tmp_path / "r2" / "report.en.md").read_text()


def test_one_gpu_target_sets_deepspeed_aside_as_the_plan_does(tmp_path):
    """The demo's case: LoRA + ZeRO-2 scored higher in the PoC (two processes, twice the batch) and projects the
    same GPU-hours as plain LoRA on one A100; on one GPU ZeRO partitions nothing, so, as in `plan`, plain LoRA
    is the pick, and the plan's pick with it: verified."""
    zero2 = dict(row("LoRA r8 + ZeRO-2", em=1.0, gpus=2, combination=dict(SDPA, zero=2)))
    zero2["measured"].update(step_seconds=0.08, epoch_seconds=4.0)
    rows = [timed("LoRA r8 + sdpa", 0.05, 0.55, SDPA), zero2]
    t = _target(rows, target_model="llama-3.1-8b", target_gpus=1)
    h = build_report(rows, tmp_path, lang="en", quality_target=EM, production=t, hardware="cpu")["html"].read_text()
    assert "LoRA r8 + sdpa (recommended)" in h and "the recommendation is verified" in h
