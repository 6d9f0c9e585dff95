"""DoRA, rsLoRA, all-linear and the QLoRA recipes on the command line: accepted where they make sense, refused in
one sentence with exit code 2 where they do not."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()
EST = ["estimate", "--model", "tiny-llama", "--gpu", "cpu"]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--dora"], "dora is a LoRA variant"),
        (["--rslora"], "rslora is a LoRA variant"),
        (["--lora-r", "8", "--qlora-recipe", "torchtune"], "needs a quantized base"),
        (
            ["--lora-r", "8", "--quant", "nf4", "--qlora-recipe", "litgpt", "--precision", "fp32"],
            "needs --precision bf16-true, got fp32",
        ),
        (["--lora-r", "8", "--qlora-recipe", "unsloth"], "--qlora-recipe must be one of peft, torchtune, litgpt"),
        (["--lora-r", "8", "--lora-targets", "all-linear,q_proj"], "'all-linear' already names every linear"),
        (["--lora-r", "8", "--dora", "--zero", "3", "--gpus", "2"], "dora runs with ZeRO stage 0-2"),
    ],
)
def test_bad_combinations_are_one_sentence_and_exit_2(flags, fragment):
    r = runner.invoke(app, [*EST, *flags])
    assert r.exit_code == 2 and fragment in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def _estimate(*flags) -> dict:
    r = runner.invoke(app, [*EST, "--json", *flags])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_bf16_true_nf4_is_estimated_in_each_recipe():
    peaks = {
        recipe: _estimate("--precision", "bf16-true", "--quant", "nf4", "--lora-r", "8", "--qlora-recipe", recipe)
        for recipe in ("peft", "torchtune")
    }
    assert peaks["peft"]["combination"]["qlora_recipe"] == "peft"
    assert peaks["torchtune"]["peak_bytes_per_gpu"] < peaks["peft"]["peak_bytes_per_gpu"]  # no fp32 upcast


def test_dora_and_all_linear_are_estimated_with_both_methods():
    for method in ("analytic", "traced"):
        lora = _estimate("--lora-r", "8", "--lora-targets", "all-linear", "--method", method)
        dora = _estimate("--lora-r", "8", "--lora-targets", "all-linear", "--dora", "--rslora", "--method", method)
        assert dora["method"] == method and dora["combination"]["dora"] and dora["combination"]["rslora"]
        assert dora["peak_bytes_per_gpu"] > lora["peak_bytes_per_gpu"]
        assert dora["trainable_params"] > lora["trainable_params"]


def _plan(*flags) -> dict:
    r = runner.invoke(app, ["plan", "--method", "analytic", "--model", "llama-2-7b", "--json", *flags])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_plan_tries_every_recipe_under_bf16_true_and_dora_as_the_lora_variant():
    cands = _plan("--precision", "bf16-true", "--quant", "none,nf4", "--optim", "adamw", "--dora")["candidates"]
    quantized = {c["qlora_recipe"] for c in cands if c["quant"] == "nf4"}
    assert quantized == {"peft", "torchtune", "litgpt"}
    assert all(c["dora"] for c in cands if c["lora_r"]) and not any(c["dora"] for c in cands if not c["lora_r"])


def test_plan_refuses_a_bf16_recipe_under_mixed_precision():
    r = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--precision", "bf16-mixed", "--qlora-recipe", "litgpt"])
    assert r.exit_code == 2 and "needs --precision bf16-true" in r.output, r.output


def test_train_refuses_dora_without_lora_before_any_work(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--dora"])
    assert r.exit_code == 2 and "LoRA variant" in r.output
    assert not (tmp_path / "x").exists()


def test_bench_dora_adds_each_lora_points_dora_twin():
    from ftopt.spec import Combination
    from ftopt.sweep.bench import dora_variants

    combos = [Combination(), Combination(lora_r=8), Combination(lora_r=8, zero=3, gc=True)]
    assert dora_variants(combos) == [Combination(lora_r=8, dora=True)]


def test_run_identity_keeps_its_old_form_at_the_defaults():
    """Bench keys and resume checks of runs made before these fields stay the same at their defaults."""
    from ftopt.planner.resolve import new_run
    from ftopt.spec import Combination, ModelRef, TrainingSetup, load_hardware

    hw, ref = load_hardware("cpu"), ModelRef(ref="tiny-llama", weights=False)
    plain = new_run(hw, ref, TrainingSetup(), Combination(lora_r=8)).identity()["combination"]
    assert not {"dora", "rslora", "qlora_recipe"} & set(plain)
    dora = new_run(hw, ref, TrainingSetup(), Combination(lora_r=8, dora=True)).identity()["combination"]
    assert dora["dora"] is True


def test_planner_page_tells_candidates_of_different_recipes_apart():
    """The planner page indexes a plan's candidates by their combination: the bf16-true recipes of one quantized
    combination are three candidates, not one."""
    from ftopt.serve.views import _key

    cands = _plan("--precision", "bf16-true", "--quant", "nf4", "--optim", "adamw")["candidates"]
    quantized = [c for c in cands if c["quant"] == "nf4"]
    assert len({_key(c) for c in quantized}) == len(quantized)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--lora-r", "8", "--lora-dropout", "1.5"], "must be at least 0 and below 1, got 1.5"),
        (["--lora-r", "8", "--lora-dropout", "1"], "must be at least 0 and below 1, got 1.0"),
        (["--lora-r", "8", "--lora-dropout", "-0.1"], "got -0.1"),
        (["--lora-r", "8", "--lora-dropout", "nan"], "got nan"),
        (
            ["--lora-dropout", "0.1"],
            "--lora-dropout=0.1 drops the LoRA adapters' input, so it needs LoRA (--lora-r > 0)",
        ),
    ],
)
def test_a_bad_lora_dropout_is_one_sentence_quoting_it(flags, fragment):
    r = runner.invoke(app, [*EST, *flags])
    assert r.exit_code == 2 and fragment in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_lora_dropout_is_estimated_with_both_methods():
    for method in ("analytic", "traced"):
        plain = _estimate("--lora-r", "8", "--method", method)
        drop = _estimate("--lora-r", "8", "--lora-dropout", "0.1", "--method", method)
        assert drop["method"] == method and drop["combination"]["lora_dropout"] == 0.1
        assert drop["breakdown"]["activations"] > plain["breakdown"]["activations"]
        assert plain["combination"]["lora_dropout"] == 0.0


def test_plan_gives_the_lora_candidates_the_dropout_and_refuses_a_bad_one():
    plain = {c["label"]: c for c in _plan("--quant", "none", "--optim", "adamw")["candidates"]}
    cands = _plan("--quant", "none", "--optim", "adamw", "--lora-dropout", "0.05")["candidates"]
    assert all(c["lora_dropout"] == 0.05 for c in cands if c["lora_r"])
    assert not any(c["lora_dropout"] for c in cands if not c["lora_r"])
    for c in cands:
        peak, twin = c["peak_bytes_per_gpu"], plain[c["label"].replace(" + dropout 0.05", "")]["peak_bytes_per_gpu"]
        if not c["lora_r"]:
            assert peak == twin, c["label"]
        elif c["gc"]:  # the peak is the loss's, which dropout does not change
            assert peak >= twin, c["label"]
        else:  # every layer's masks
            assert peak > twin, c["label"]
    r = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--full-only", "--lora-dropout", "1.2"])
    assert r.exit_code == 2 and "got 1.2" in r.output, r.output


def test_train_refuses_lora_dropout_without_lora_before_any_work(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--lora-dropout", "0.1"])
    assert r.exit_code == 2 and "needs LoRA" in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_bench_lora_dropout_adds_each_lora_points_dropout_twin():
    from pydantic import ValidationError

    from ftopt.spec import Combination
    from ftopt.sweep.bench import dropout_variants

    combos = [Combination(), Combination(lora_r=8), Combination(lora_r=8, zero=3, gc=True)]
    assert dropout_variants(combos, 0.1) == [
        Combination(lora_r=8, lora_dropout=0.1),
        Combination(lora_r=8, zero=3, gc=True, lora_dropout=0.1),
    ]
    assert dropout_variants(combos, 0.0) == []
    with pytest.raises(ValidationError, match="got 2"):
        dropout_variants([Combination()], 2)


def test_run_identity_leaves_out_lora_dropout_at_its_default():
    from ftopt.planner.resolve import new_run
    from ftopt.spec import Combination, ModelRef, TrainingSetup, load_hardware

    hw, ref = load_hardware("cpu"), ModelRef(ref="tiny-llama", weights=False)
    assert "lora_dropout" not in new_run(hw, ref, TrainingSetup(), Combination(lora_r=8)).identity()["combination"]
    run = new_run(hw, ref, TrainingSetup(), Combination(lora_r=8, lora_dropout=0.1))
    assert run.identity()["combination"]["lora_dropout"] == 0.1
