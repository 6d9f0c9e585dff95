"""The QLoRA recipes are built as they say: which parameters are quantized and which dtype the rest is in."""

import pytest

pytest.importorskip("bitsandbytes")

# untied head (LitGPT's recipe quantizes it), llama layout
TINY_UNTIED = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def _build(recipe: str, config: dict = TINY_UNTIED):
    from ftopt.model.build import build_model
    from ftopt.spec import Combination, Precision, from_hf_config

    spec = from_hf_config(config, "tiny")
    combo = Combination(lora_r=4, quant="nf4", qlora_recipe=recipe)
    return build_model(spec, combo, Precision.BF16_TRUE).get_base_model()


def _dtypes(model):
    import torch

    frozen = {
        p.dtype
        for n, p in model.named_parameters()
        if not p.requires_grad and p.dtype.is_floating_point and "lora" not in n
    }
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings().weight.dtype
    norm = model.model.norm.weight.dtype
    return frozen - {torch.uint8}, trainable, type(head).__name__, embed, norm


@pytest.mark.parametrize(
    "recipe, rest, adapters, head",
    [
        ("peft", "float32", "float32", "Linear"),  # prepare_model_for_kbit_training's fp32 cast
        ("torchtune", "bfloat16", "bfloat16", "Linear"),
        ("litgpt", "bfloat16", "bfloat16", "Linear4bit"),
    ],
)
def test_each_recipe_builds_its_dtypes_under_bf16_true(recipe, rest, adapters, head):
    import torch

    model = _build(recipe)
    frozen, trainable, head_cls, embed, norm = _dtypes(model)
    want = getattr(torch, rest)
    assert embed == want and norm == want, (embed, norm)
    assert trainable == {getattr(torch, adapters)}
    assert head_cls == head
    assert frozen <= {want, torch.float32} and want in frozen


def test_litgpt_keeps_a_tied_head_with_its_embedding():
    import torch

    model = _build("litgpt", {**TINY_UNTIED, "tie_word_embeddings": True})
    head = model.get_output_embeddings()
    assert type(head).__name__ == "Linear" and head.weight is model.get_input_embeddings().weight
    assert head.weight.dtype == torch.bfloat16


def test_torchtune_recipe_trains_under_bf16_true():
    """A loss check of the bf16 QLoRA recipe on the tiny preset (the worker's Trainer, bf16 without autocast)."""
    import math

    from ftopt.spec import Combination, Precision
    from tests.train.test_quant_train import _train

    combo = Combination(lora_r=8, lora_targets=("all-linear",), quant="nf4", qlora_recipe="torchtune")
    _, _, losses = _train(combo, Precision.BF16_TRUE, steps=20, lr=1e-2)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
