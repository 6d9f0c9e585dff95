"""Every input is checked before work: wrong-typed data fields, --metric, --resume of a finished run, and errors
that name the flag the user typed."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.spec.errors import FtoptError

runner = CliRunner()


def _data(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ({"prompt": 1, "completion": 2}, "line 3: 'prompt' must be text, got int '1'"),
        ({"prompt": "a", "completion": ["b"]}, "line 3: 'completion' must be text, got list \"['b']\""),
        ({"text": {"a": 1}}, "line 3: 'text' must be text, got dict"),
        ({"messages": [{"role": "user", "content": 5}]}, "line 3: messages[0].content must be text, got int"),
    ],
)
def test_wrong_typed_fields_are_refused_with_their_line(tmp_path, bad, fragment):
    good = {k: "x" for k in bad} if "messages" not in bad else {"messages": [{"role": "user", "content": "x"}]}
    p = _data(tmp_path, [good, good, bad])
    r = runner.invoke(app, ["preview", "--data", str(p)])
    assert r.exit_code == 2 and fragment in r.output, r.output


def test_metric_is_imported_before_training(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--out", str(out), "--max-steps", "2", "--metric", "nomodule_xyz:fn"])
    assert r.exit_code == 2 and "--metric nomodule_xyz:fn: cannot import nomodule_xyz" in r.output
    assert not out.exists()  # nothing trained, nothing saved


def test_flag_names_in_errors(tmp_path):
    for args, flag, field in [
        (["--seq-len", "0"], "--seq-len:", "seq_len:"),
        (["--gpus", "0"], "--gpus:", "gpus_per_node:"),
        (["--lr", "-1"], "--lr:", "learning_rate:"),
    ]:
        r = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), *args])
        assert r.exit_code == 2 and flag in r.output and field not in r.output, r.output


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--max-steps", "3", "--eval-max-examples", "0", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    before = (out / "metrics.json").read_text()
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "is complete (3 steps); nothing to train" in r.output
    assert [json.loads(x)["step"] for x in (out / "steps.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    "args,said",
    [
        # numpy's seeding refused these after the data was tokenized and the model built: a traceback
        (["--seed", "-1"], "--seed: Input should be greater than or equal to 0 (got -1)"),
        (["--seed", str(2**64)], f"--seed: Input should be less than 4294967296 (got {2**64})"),
        # the built-in task was trained and the file never read
        (["--eval-data", "held.jsonl"], "--eval-data held.jsonl needs --data"),
    ],
)
def test_train_refuses_before_anything_runs(tmp_path, monkeypatch, args, said):
    import ftopt.train.engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ftopt.train.engine, "launch", lambda *a, **k: pytest.fail("the run started"))
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), *args])
    assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "run").exists()


@pytest.fixture
def no_launch(monkeypatch):
    """The run's start, replaced: a refusal must come before it (nothing built, nothing downloaded)."""
    import ftopt.train.engine

    started = []

    def launch(spec, *a, **k):
        started.append(spec.output_dir)
        raise FtoptError("stand-in: the run started")

    monkeypatch.setattr(ftopt.train.engine, "launch", launch)
    return started


def test_resume_of_a_folder_that_does_not_exist_is_refused(tmp_path, no_launch):
    """A mistyped --out with --resume started a new run there, silently."""
    out = tmp_path / "runn"
    r = runner.invoke(app, ["train", "--out", str(out), "--max-steps", "2", "--resume"])
    assert r.exit_code == 2 and f"--resume: {out} does not exist, so there is no run to continue" in r.output
    assert len(r.output.strip().splitlines()) == 1 and no_launch == [] and not out.exists()


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path, no_launch):
    out = tmp_path / "empty"
    out.mkdir()
    r = runner.invoke(app, ["train", "--out", str(out), "--max-steps", "2", "--resume"])
    assert r.exit_code == 2 and f"--resume: {out} holds no run of ftopt's to continue" in r.output
    assert no_launch == [] and list(out.iterdir()) == []


def test_resume_before_the_first_checkpoint_says_it_starts_again(tmp_path, no_launch):
    """A run stopped before its first save (ranks.interrupted_line: '--resume starts the run again from step 0'):
    allowed, and said."""
    from ftopt.train import manifest

    out = tmp_path / "run"
    manifest.claim(out, resume=False, overwrite=False)  # what the stopped run's start left
    r = runner.invoke(app, ["train", "--out", str(out), "--max-steps", "2", "--resume"])
    assert f"--resume: {out} holds no checkpoint yet; the run starts again from step 0." in r.output
    assert no_launch == [out]


def test_resume_with_a_longer_schedule_trains_on_from_the_last_checkpoint(tmp_path):
    """--max-steps 5 --resume on a finished 3-step run was refused ("holds a different run: schedule.max_steps
    (3 then, 5 now)"): it trains on from checkpoint-3 to step 5, and says so. A shorter schedule, or anything else
    changed, is refused as before."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--eval-max-examples", "0", "--json"]
    assert runner.invoke(app, [*args, "--max-steps", "3"]).exit_code == 0
    first = (out / "steps.jsonl").read_text().splitlines()
    for more, said in (
        (["--max-steps", "5", "--lr", "0.01"], "holds a different run: schedule.learning_rate (0.001 then, 0.01 now)"),
        (["--max-steps", "2"], "holds a different run: schedule.max_steps (3 then, 2 now)"),
    ):
        r = runner.invoke(app, [*args, "--resume", *more])
        assert r.exit_code == 2 and said in r.output, r.output
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "5"])
    assert r.exit_code == 0, r.output
    assert f"--resume: the run in {out} was 3 steps long; it continues from step 3 to step 5." in r.output
    lines = (out / "steps.jsonl").read_text().splitlines()
    assert lines[:3] == first and [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5]
    m = json.loads((out / "metrics.json").read_text())
    assert m["measured"]["steps"] == 5 and m["run"]["schedule"]["max_steps"] == 5
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "5"])
    assert r.exit_code == 0 and "is complete (5 steps); nothing to train" in r.output, r.output


def test_only_the_schedules_length_may_grow_on_resume():
    from ftopt.planner import resolve
    from ftopt.spec import load_hardware
    from ftopt.train.outputs import lengthened

    hw = load_hardware("cpu")
    base = resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw), resolve.combination())

    def run(max_steps=-1, epochs=1.0, **schedule):
        s = base.model_copy(update={"setup": base.setup.model_copy(update={"epochs": epochs})})
        return resolve.finish_run(s, data={}, schedule={"max_steps": max_steps, **schedule}, output={}).identity()

    assert lengthened(run(3), run(5)) == ("3 steps", "step 5")
    assert lengthened(run(1), run(2)) == ("1 step", "step 2")
    assert lengthened(run(epochs=1), run(epochs=2.5)) == ("1 epoch", "2.5 epochs")
    for before, now in (
        (run(5), run(3)),  # shorter
        (run(3), run(3)),  # the same run: resumed as it always was
        (run(3), run(-1)),  # steps to epochs: not known to be longer
        (run(3), run(5, seed=1)),  # something else changed too
        (run(3, epochs=1), run(5, epochs=2)),
    ):
        assert lengthened(before, now) is None
