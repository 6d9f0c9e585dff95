"""Flags that cannot shape any candidate together are one sentence naming them, never dropped without a word."""

import re

import pytest

from ftopt.planner.candidates import DEFAULT_LORA_R, plan_combinations
from ftopt.planner.resolve import enum_list
from ftopt.spec import AdapterDtype, Precision, TrainingSetup, load_hardware

A100 = load_hardware("a100-80g")


def _plan(precision=Precision.BF16_MIXED, **given):
    levers = dict(
        full_only=False,
        lora_r=DEFAULT_LORA_R,
        lora_targets=None,
        adapter_dtype=None,
        quants=None,
        optims=None,
        engines=None,
        recipes=None,
        dora=False,
        rslora=False,
    )
    setup = TrainingSetup(seq_len=2048, micro_batch=1, precision=precision)
    return plan_combinations(A100, setup, **{**levers, **given})


@pytest.mark.parametrize(
    "given,said",
    [
        # each was ignored: the plan of full fine-tuning came back as if the flag had not been given
        ({"dora": True}, "--dora shape(s) the LoRA candidates, which --full-only leaves out"),
        ({"rslora": True, "lora_r": 8}, "--lora-r 8, --rslora shape(s) the LoRA candidates"),
        ({"lora_targets": ("q_proj",)}, "--lora-targets shape(s) the LoRA candidates"),
        ({"adapter_dtype": AdapterDtype.BASE}, "--adapter-dtype shape(s) the LoRA candidates"),
    ],
)
def test_lora_levers_beside_full_only_are_refused(given, said):
    from ftopt.spec.errors import FtoptError

    with pytest.raises(FtoptError, match=re.escape(said)):
        _plan(full_only=True, **given)
    assert any(c.lora_r for c in _plan(**given))  # without --full-only they shape the LoRA candidates


def test_full_only_alone_plans_full_fine_tuning():
    assert {c.lora_r for c in _plan(full_only=True)} == {0}


def test_an_empty_plan_names_the_flags_that_emptied_it():
    """--qlora-recipe with --quant none (no --full-only given) was blamed on --full-only."""
    from ftopt.spec.errors import FtoptError

    with pytest.raises(FtoptError) as e:
        _plan(Precision.BF16_TRUE, quants=enum_list("quant", "none"), recipes=enum_list("qlora_recipe", "torchtune"))
    assert "--qlora-recipe torchtune" in str(e.value) and "--full-only" not in str(e.value)
    with pytest.raises(FtoptError, match="with --optim adamw-8bit --engine fsdp; widen one of them"):
        _plan(optims=enum_list("optim", "adamw-8bit"), engines=enum_list("engine", "fsdp"))
