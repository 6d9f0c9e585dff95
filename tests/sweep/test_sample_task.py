"""The shipped base model: small, safetensors, loads offline with its tokenizer, knows its pretraining language
and has not seen the fine-tuning task. And a fine-tuning run on it scores every quality metric."""

import json
import math

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.presets import base_model_dir
from ftopt.results.quality import evaluate_generation
from ftopt.sweep import sample_task as S

BASE = base_model_dir()


def test_base_is_small_safetensors_with_tokenizer():
    files = {p.name: p.stat().st_size for p in BASE.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files and not any(n.endswith(".bin") for n in files)
    assert sum(files.values()) <= 20 * 2**20


def test_base_knows_its_language_but_not_the_finetuning_task():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE, use_safetensors=True)
    assert tok(S.examples("back", 1, seed=0)[0]["prompt"])["input_ids"].count(tok.unk_token_id) == 0
    known = evaluate_generation(model, tok, S.examples("shift", 16, seed=123), "cpu", max_examples=16)
    unseen = evaluate_generation(model, tok, S.examples(S.FINETUNE_OP, 16, seed=123), "cpu", max_examples=16)
    assert known["exact_match"] >= 0.9 and unseen["exact_match"] == 0.0


def test_finetune_task_is_held_out_and_deterministic():
    train, held_out = S.finetune_task(4000, 64)
    seen = {r["prompt"] for r in train}
    assert sum(r["prompt"] in seen for r in held_out) <= 2  # independent random words: a rare short-word repeat
    assert S.finetune_task(4000, 64) == (train, held_out)
    assert held_out[0]["completion"] == " ".join(
        S.LETTERS[S.LETTERS.index(c) - 1] for c in held_out[0]["prompt"].split()[2:-1]
    )


def test_finetuning_the_base_reports_every_metric(tmp_path, monkeypatch):
    (tmp_path / "mymetric.py").write_text("def first_letter(p, r):\n    return float(p[:1] == r[:1])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    train, held_out = S.finetune_task(400, 12)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(BASE),
            "--data",
            str(tmp_path / "train.jsonl"),
            "--eval-data",
            str(tmp_path / "eval.jsonl"),
            "--max-steps",
            "8",
            "--packing",
            "--out",
            str(out),
            "--json",
            "--metric",
            "mymetric:first_letter",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())["measured"]
    q = m["quality"]
    assert q["examples"] == 12 and {"exact_match", "token_f1", "rouge_l", "mymetric:first_letter"} <= set(q)
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert m["exact_match"] == q["exact_match"]
