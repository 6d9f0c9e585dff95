"""Step-0 quality: `ftopt train` scores the model before its first step on the same held-out rows and metrics as at
the end (its memory left out of the training peak), stores it in metrics.json, and the report flags a sweep whose
every run already scored full marks before training as "nothing to learn", even when the training loss was not
near zero (the old check)."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.presets import base_model_dir
from ftopt.report.decision import decide
from ftopt.report.render import build_report
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import ResultRow, read_metrics
from ftopt.sweep.sample_task import examples

EM = QualityTarget.parse("exact_match>=0.5")


def test_an_excluded_span_is_left_out_of_the_cpu_peak():
    import torch

    from ftopt.results.measure import EXCLUDED_SCOPE, AllocatorPeak

    def peak(excluded: bool) -> int:
        p = AllocatorPeak().start()
        keep = torch.ones(250_000)  # 1 MB, counted either way
        scope = torch.profiler.record_function(EXCLUDED_SCOPE if excluded else "counted")
        with scope:
            big = torch.ones(4_000_000)  # 16 MB, freed inside the span
            del big
        after = torch.ones(500_000)  # 2 MB, counted either way
        del keep, after
        return p.stop()

    assert peak(excluded=False) >= 17_000_000
    assert 3_000_000 <= peak(excluded=True) < 4_000_000


@pytest.fixture(scope="module")
def known_task_run(tmp_path_factory):
    """The shipped base was pretrained on `copy` (ftopt.sweep.sample_task): held-out `copy` rows are full marks before
    training, while the training rows mix in `back`, which it never saw, so the first loss is far from zero."""
    d = tmp_path_factory.mktemp("known")
    train = [r for pair in zip(examples("copy", 48, 1), examples("back", 48, 2)) for r in pair]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in examples("copy", 8, 3)))
    out = d / "run"
    args = ["train", "--model", str(base_model_dir()), "--data", str(d / "train.jsonl")]
    args += ["--eval-data", str(d / "eval.jsonl"), "--eval-max-examples", "8", "--lora-r", "4", "--max-steps", "3"]
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out


def _row(out, label="LoRA r4 + sdpa") -> ResultRow:
    m = read_metrics(out / "metrics.json")
    return ResultRow(key=label, label=label, combination=m.combination, status="ok", run=m.run, measured=m.measured)


def test_train_scores_the_base_before_the_first_step(known_task_run):
    m = json.loads((known_task_run / "metrics.json").read_text())
    assert m["schema"] == "ftopt.metrics/4"
    base = m["measured"]["base_quality"]
    assert base["examples"] == 8 and base["exact_match"] == 1.0 and "token_f1" in base
    assert m["measured"]["first_loss"] > 0.1  # the old near-zero-loss check cannot see it
    assert json.loads((known_task_run / "base_quality.json").read_text()) == base  # kept for --resume


@pytest.mark.parametrize("lang,text", [("en", "Nothing to learn: before any training (step 0)"), ("ja", "満点でした")])
def test_a_sweep_already_at_full_marks_is_flagged(known_task_run, tmp_path, lang, text):
    rows = [_row(known_task_run, "a"), _row(known_task_run, "b")]
    d = decide(rows, EM)
    assert not d.nothing_to_learn and len(d.full_marks_at_start) == 2
    assert text in build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()
    # one run whose base score was below full marks: there was something to learn
    below = rows[1].measured.model_copy(update={"base_quality": {"exact_match": 0.75}})
    assert not decide([rows[0], rows[1].model_copy(update={"measured": below})], EM).full_marks_at_start
    # metrics written before step-0 scoring (no base_quality) say nothing either way
    old = rows[0].measured.model_copy(update={"base_quality": {}})
    assert not decide([rows[0].model_copy(update={"measured": old})], EM).full_marks_at_start


def test_a_resumed_run_keeps_its_step_0_score(known_task_run, tmp_path):
    """Crash after step 2, resume: the step-0 score is the one stored before the crash (base_quality.json), not
    a second generation."""
    from ftopt.train.outputs import prepare_output
    from ftopt.train.worker import run_worker

    first = read_metrics(known_task_run / "metrics.json").run
    out = tmp_path / "crash"
    spec = first.model_copy(
        update={
            "schedule": first.schedule.model_copy(update={"max_steps": 4, "save_steps": 2}),
            "output": first.output.model_copy(update={"dir": str(out)}),
        }
    )
    prepare_output(spec)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_worker(spec, fail_at_step=3)
    stored = json.loads((out / "base_quality.json").read_text())
    assert stored["exact_match"] == 1.0
    marked = {**stored, "exact_match": 0.625}  # what only the stored file says
    (out / "base_quality.json").write_text(json.dumps(marked))
    resumed = spec.model_copy(update={"output": spec.output.model_copy(update={"resume": True})})
    assert run_worker(resumed)["measured"]["base_quality"] == marked
