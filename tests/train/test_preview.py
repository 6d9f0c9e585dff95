"""`ftopt preview`: what the trainer will see, with trained tokens marked."""

import json
import re

from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()
CHAT = {
    "messages": [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "Low-rank adapters."}]
}


def _data(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_preview_json_marks_exactly_the_assistant_tokens(tmp_path):
    p = _data(tmp_path, [CHAT] * 3)
    r = runner.invoke(app, ["preview", "--data", str(p), "--eval-fraction", "0", "-n", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["examples"]) == 2 and out["summary"]["rows"] == 3 and out["summary"]["format"] == "messages"
    from transformers import AutoTokenizer

    cached = re.search(r", (/[^,]+)\)$", out["tokenizer"]).group(1)  # "byte-level BPE ... (..., <folder>)"
    tok = AutoTokenizer.from_pretrained(cached)
    ex = out["examples"][0]
    assert len(ex["input_ids"]) == len(ex["trained"])
    trained = tok.decode([t for t, m in zip(ex["input_ids"], ex["trained"]) if m])
    assert trained == "Low-rank adapters." + tok.eos_token


def test_preview_text_view_and_summary(tmp_path):
    p = _data(tmp_path, [{"prompt": "Question: 2+2?", "completion": " 4"}] * 4)
    r = runner.invoke(app, ["preview", "--data", str(p), "-n", "1"])
    assert r.exit_code == 0, r.output
    assert "\u27e6 4</s>\u27e7" in r.output  # only the completion (and its EOS) is trained
    # held out as train holds it out (its default share, 0.1 of 4 rows: 1), unless asked otherwise
    assert "3 training rows (prompt+completion), 1 held out" in r.output and "unk_fraction 0.0000" in r.output
    r = runner.invoke(app, ["preview", "--data", str(p), "-n", "1", "--eval-fraction", "0"])
    assert "4 training rows (prompt+completion), 0 held out" in r.output


def test_preview_one_record_and_packed_document_boundaries(tmp_path):
    one = _data(tmp_path, [CHAT])
    r = runner.invoke(app, ["preview", "--data", str(one), "--json"])  # as train says it, before a run
    assert r.exit_code == 2 and "1 record: too few to hold out 10% for evaluation (--eval-fraction)" in r.output
    r = runner.invoke(app, ["preview", "--data", str(one), "--json", "--eval-fraction", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["summary"]["rows"] == 1
    rows = [{"prompt": "Question: 2+2?", "completion": " 4"}, {"prompt": "Question: 3+3?", "completion": " 6"}]
    p = _data(tmp_path, rows * 2)
    packed = ["preview", "--data", str(p), "--packing", "--seq-len", "64", "--eval-fraction", "0"]  # all 4 rows
    r = runner.invoke(app, [*packed, "--json"])
    ex = json.loads(r.output)["examples"][0]
    assert len(ex["documents"]) == 4 and sum(ex["documents"]) == len(ex["input_ids"])
    r = runner.invoke(app, [*packed, "-n", "1"])
    assert r.exit_code == 0, r.output
    assert r.output.count("\u2016") == 3 + 1  # three boundaries in the row, one in the legend
    assert "in 4 documents" in r.output


def test_preview_errors_are_one_line(tmp_path):
    p = _data(tmp_path, [{"prompt": "a", "completion": "b"}, {"prompt": "a"}])
    r = runner.invoke(app, ["preview", "--data", str(p), "--eval-fraction", "0"])
    assert r.exit_code == 2 and "line 2: missing completion" in r.output and "Traceback" not in r.output


def test_preview_refuses_a_count_below_one(tmp_path):
    r = runner.invoke(app, ["preview", "--data", str(_data(tmp_path, [CHAT])), "-n", "-1"])
    assert r.exit_code == 2 and "-n is the number of examples to show" in r.output and "got -1" in r.output


def test_preview_refuses_a_non_positive_seq_len_by_its_flag(tmp_path):
    """Checked as train checks it, before the data is read (not as 'no row has a trained token left')."""
    r = runner.invoke(app, ["preview", "--data", str(_data(tmp_path, [CHAT])), "--seq-len", "0"])
    assert r.exit_code == 2 and "--seq-len: Input should be greater than 0 (got 0)" in r.output, r.output


def test_preview_help_states_each_default_once():
    r = runner.invoke(app, ["preview", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    options = re.split(r"\n  (?=-)", r.output.split("Options:")[1])
    assert len(options) > 10 and all(o.count("[default:") <= 1 for o in options), r.output


def test_preview_holds_out_by_default_what_train_holds_out(tmp_path):
    """preview's help says it holds rows out "as train would", but its --eval-fraction defaulted to 0 where
    train's is DataSpec's 0.1: the summary counted other training rows than the run then trained on."""
    from ftopt.spec.run import DataSpec
    from ftopt.train.prepare import read_data

    p = _data(tmp_path, [{"prompt": f"Question: {i}+{i}?", "completion": f" {2 * i}"} for i in range(20)])
    train, held, _ = read_data(DataSpec(train=str(p)), seed=0)  # what `ftopt train --data p` holds out
    r = runner.invoke(app, ["preview", "--data", str(p), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)["summary"]
    assert (summary["rows"], summary["eval_rows"]) == (len(train), len(held)) == (18, 2)
