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
    # nothing held out unless asked (preview is a look at the data, not a run)
    assert "4 training rows (prompt+completion), 0 held out" in r.output and "unk_fraction 0.0000" in r.output
    r = runner.invoke(app, ["preview", "--data", str(p), "-n", "1", "--eval-fraction", "0.25"])
    assert "3 training rows (prompt+completion), 1 held out" in r.output


def test_preview_one_record_and_packed_document_boundaries(tmp_path):
    one = _data(tmp_path, [CHAT])
    r = runner.invoke(app, ["preview", "--data", str(one), "--json"])  # was: too few to hold out 10%
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["summary"]["rows"] == 1
    rows = [{"prompt": "Question: 2+2?", "completion": " 4"}, {"prompt": "Question: 3+3?", "completion": " 6"}]
    p = _data(tmp_path, rows * 2)
    r = runner.invoke(app, ["preview", "--data", str(p), "--packing", "--seq-len", "64", "--json"])
    ex = json.loads(r.output)["examples"][0]
    assert len(ex["documents"]) == 4 and sum(ex["documents"]) == len(ex["input_ids"])
    r = runner.invoke(app, ["preview", "--data", str(p), "--packing", "--seq-len", "64", "-n", "1"])
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
