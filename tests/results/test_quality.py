"""Quality metrics: each figure against a hand-computed value; the user metric and the target parser's errors."""

import math
import sys

import pytest

from ftopt.results.quality import (
    QualityTarget,
    evaluate_generation,
    label_set,
    load_user_metric,
    perplexity,
    rouge_l,
    score,
    token_f1,
)
from ftopt.results.rows import Measured
from ftopt.spec.errors import FtoptError


def test_token_f1_and_rouge_l_by_hand():
    # prediction "a b x", reference "a b c d": 2 common tokens, precision 2/3, recall 2/4 -> F1 = 4/7
    assert token_f1("a b x", "a b c d") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0
    # LCS of (a c b) and (a b c) is 2 tokens: P = R = 2/3
    assert rouge_l("a c b", "a b c") == pytest.approx(2 / 3)


def test_score_adds_label_accuracy_only_for_a_label_set():
    refs = ["positive", "negative"] * 4
    preds = ["positive!", "negative", "negative", "negative", "Positive", "neutral", "positive", "negative"]
    s = score(preds, refs)
    assert s["label_accuracy"] == pytest.approx(6 / 8)  # 'positive!' and 'Positive' count, 'neutral' does not
    assert s["exact_match"] == pytest.approx(4 / 8)
    free = ["the cat sat", "a dog ran", "birds fly"]
    assert label_set(free) is None and "label_accuracy" not in score(free, free)


def test_user_metric_module_function(tmp_path, monkeypatch):
    (tmp_path / "mymetrics.py").write_text(
        "def length_ratio(p, r):\n    return len(p) / max(1, len(r))\ndef broken(p, r):\n    return 'x'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    s = score(["ab", "abcd"], ["abcd", "abcd"], ("mymetrics:length_ratio",))
    assert s["mymetrics:length_ratio"] == pytest.approx(0.75)
    with pytest.raises(FtoptError, match="must return a number"):
        score(["a"], ["a"], ("mymetrics:broken",))
    with pytest.raises(FtoptError, match="has no function nope"):
        load_user_metric("mymetrics:nope")
    with pytest.raises(FtoptError, match="module:function"):
        load_user_metric("not a ref")
    sys.modules.pop("mymetrics", None)


def test_perplexity():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e4) == float("inf") and perplexity(None) is None


def test_quality_target_parse_and_met():
    t = QualityTarget.parse("exact_match>=0.5")
    assert (t.metric, t.op, t.value) == ("exact_match", ">=", 0.5)
    m = lambda **kw: Measured(peak_bytes_per_gpu=1, **kw)  # noqa: E731
    assert t.met(m(quality={"exact_match": 0.5})) and not t.met(m(quality={"exact_match": 0.49}))
    assert not t.met(m(eval_loss=1.0))  # a run without the metric does not meet it
    loss = QualityTarget.parse(" eval_loss <= 1.2e-1 ")
    assert loss.met(m(eval_loss=0.1)) and not loss.met(m(eval_loss=0.2))
    assert QualityTarget.parse("mymod:fn>=.3").metric == "mymod:fn"
    for bad in ("exact_match>0.5", "exact_match", ">=0.5", "exact_match>=high"):
        with pytest.raises(FtoptError, match="METRIC>=VALUE"):
            QualityTarget.parse(bad)


def _tiny_llama():
    """A one-layer random llama the built-in task's tokenizer can drive."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=0,
        )
    )


def test_evaluate_generation_scores_a_real_model_and_caps_examples():
    """A tiny random model generates; the cap limits rows and progress is reported."""

    from ftopt.sweep import sample_task as S

    tok = S.tokenizer()
    model = _tiny_llama()
    rows = S.examples("back", 20, seed=1)
    lines = []
    q = evaluate_generation(model, tok, rows, "cpu", max_examples=5, log=lines.append)
    assert q["examples"] == 5 and 0 <= q["token_f1"] <= 1 and set(q) >= {"exact_match", "rouge_l"}
    assert lines[-1] == "quality: generated 5/5 held-out completions"
    assert evaluate_generation(model, tok, rows, "cpu", max_examples=0) == {}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--quality-target", "em>>1"], "METRIC>=VALUE"),
        (["--metric", "no_such_module_x:f"], "cannot import no_such_module_x"),
    ],
)
def test_bench_checks_quality_flags_before_running_anything(tmp_path, args, fragment):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "sweep"), *args])
    assert res.exit_code == 2 and fragment in res.output and not (tmp_path / "sweep" / "results.jsonl").exists()


def test_generation_uses_the_kv_cache_even_when_training_turned_it_off():
    """Generation uses the KV cache although the trained model's config says use_cache=False (training): every
    forward after the prompt's sees one new token and the cached keys/values, not the whole sequence again."""

    from ftopt.results.quality import generate
    from ftopt.sweep import sample_task as S

    tok = S.tokenizer()
    model = _tiny_llama()
    model.config.use_cache = False  # as ftopt.model.build builds a model for training
    model.eval()
    model.generation_config.use_cache = False  # as a saved generation_config may say (presets/base/tiny-base)
    model.generation_config.eos_token_id = None  # generate the full length: several cached steps to check
    calls = []
    model.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((kwargs["input_ids"].shape[1], kwargs.get("past_key_values"))),
        with_kwargs=True,
    )
    row = S.examples("back", 1, seed=1)[0]
    generate(model, tok, [row], "cpu", log=lambda m: None)
    assert len(calls) >= 3
    prompt_len = calls[0][0]
    assert prompt_len > 1 and all(n == 1 for n, _ in calls[1:])  # one new token per step, not the whole sequence
    assert all(p is not None and p.get_seq_length() > 0 for _, p in calls[1:])


def test_batched_generation_completes_each_row_as_if_alone():
    """Rows of different lengths go through generate() `batch` at a time, left-padded: each row's completion is
    the one it gets alone (greedy), in fewer generate() calls."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftopt.presets import base_model_dir
    from ftopt.results.quality import generate
    from ftopt.sweep import sample_task as S

    tok = AutoTokenizer.from_pretrained(base_model_dir())
    model = AutoModelForCausalLM.from_pretrained(base_model_dir(), use_safetensors=True).eval()
    rows = S.examples("shift", 6, seed=5) + S.examples("reverse", 4, seed=5)  # the base knows these: real answers
    assert len({len(r["prompt"]) for r in rows}) > 1  # prompts of several lengths: the batch pads
    alone = generate(model, tok, rows, "cpu", log=lambda m: None)
    calls = []
    model.register_forward_pre_hook(lambda m, args, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    batched = generate(model, tok, rows, "cpu", log=lambda m: None, batch=4)
    assert batched == alone and sum(a == r["completion"] for a, r in zip(alone, rows)) >= 5
    assert calls[0] == 4 and sorted(set(calls)) == [2, 4]  # 4 + 4 + 2 rows: three generate() calls


@pytest.mark.parametrize("n_rows", [1, 5, 6])
def test_zero3_ranks_each_generate_their_share_and_score_every_row(monkeypatch, n_rows):
    """Under ZeRO-3 the ranks generate in step; each completes rows rank::N, with as many generate calls as the
    others, and every rank scores all rows in their order."""
    import types

    from ftopt.results import quality

    rows = [{"prompt": f"p{i}", "completion": f"p{i}" if i % 2 else "other"} for i in range(n_rows)]
    generated: list[list[str]] = []

    def echo(model, tokenizer, share, device, log, synced=False, batch=1):  # completes each prompt with itself
        generated.append([r["prompt"] for r in share])
        return generated[-1]

    model = types.SimpleNamespace(training=False, eval=lambda: None, train=lambda: None)
    monkeypatch.setattr(quality, "generate", echo)
    monkeypatch.setattr(quality, "_all_gather", lambda preds, world: [preds, generated[0]])  # rank order
    monkeypatch.setattr(quality, "_generating_ranks", lambda synced: (0, 2))
    echo(None, None, quality.rank_rows(rows, 1, 2), None, None)  # rank 1's share, as the gather would bring it
    q = quality.evaluate_generation(model, None, rows, "cpu", 64)
    rank1, rank0 = generated
    assert rank0[: len(rows[0::2])] == [r["prompt"] for r in rows[0::2]] and len(rank0) == len(rank1)
    assert len(rank0) == -(-n_rows // 2)
    assert q["examples"] == n_rows and q["exact_match"] == pytest.approx((n_rows // 2) / n_rows)
