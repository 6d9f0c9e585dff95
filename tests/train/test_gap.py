"""`train`'s summary says when the padding assumption makes the prediction exceed the measured peak."""

import json

from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.train.gap import padding_gap_note


def test_summary_explains_the_padding_gap_of_a_real_run(tmp_path):
    # the built-in task's rows are ~14 tokens; predicted at --seq-len 256, they train in much shorter batches
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app, ["train", "--max-steps", "1", "--seq-len", "256", "--eval-max-examples", "0", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["predicted"]["analytic"]["peak_bytes_per_gpu"] > 1.1 * m["measured"]["peak_bytes_per_gpu"]
    text = " ".join(r.output.split())  # the console wraps long lines
    assert "because the prediction assumes every row is --seq-len 256 tokens" in text
    assert "--packing fills every row" in text


def _metrics(pred, meas, rows=100, tokens=1400, seq_len=256, packing=False):
    return {
        "packing": packing,
        "seq_len": seq_len,
        "measured": {"peak_bytes_per_gpu": meas},
        "predicted": {"analytic": {"peak_bytes_per_gpu": pred}},
        "data": {"rows": rows, "tokens": tokens},
    }


def test_no_padding_note_when_it_is_not_the_cause():
    assert padding_gap_note(_metrics(300, 100)) is not None
    assert padding_gap_note(_metrics(300, 100, packing=True)) is None  # packed rows are --seq-len long
    assert padding_gap_note(_metrics(105, 100)) is None  # within the estimator's error
    assert padding_gap_note(_metrics(300, 100, tokens=100 * 250)) is None  # rows about --seq-len: something else
    assert padding_gap_note({"measured": {}, "predicted": None}) is None  # a run without predictions


def test_summary_warns_when_the_prediction_was_tight(capsys):
    from ftopt.cli.display import print_train_metrics

    m = _metrics(110, 100, tokens=100 * 250) | {"model": "x", "label": "y", "world_size": 1}
    m["measured"] |= {"step_seconds": 1.0, "tokens_per_s": 1.0, "epoch_seconds": 1.0, "train_loss": 1.0}
    m["measured"]["eval_loss"] = None
    m["predicted"]["analytic"] |= {"step_seconds": 1.0, "tight": True}
    m["run"] = {"setup": {"headroom": 0.2}}
    print_train_metrics(m, "out")
    assert "not the 20% kept free (--headroom)" in " ".join(capsys.readouterr().out.split())
