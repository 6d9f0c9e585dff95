"""DoRA, all-linear and the QLoRA recipes in both estimators: the formulas agree with the trace of the module tree
the trainer builds, and the counts match what PEFT really creates."""

import pytest

from ftopt.estimate import estimate
from ftopt.estimate.analytic import trainable_params
from ftopt.spec import Combination, TrainingSetup, from_hf_config, load_hardware, load_model

UNTIED = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def _both(model, combo, precision, **setup):
    hw = load_hardware("cpu")
    s = TrainingSetup.for_hardware(True, precision=precision, **setup)
    return estimate(model, hw, s, combo, "analytic"), estimate(model, hw, s, combo, "traced")


def _built_trainable(model_spec, combo):
    from ftopt.model.build import build_model
    from ftopt.spec import Precision

    model = build_model(model_spec, combo, Precision.FP32, device="meta")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_dora_trainable_parameters_are_what_peft_creates():
    spec = load_model("tiny-llama")
    combo = Combination(lora_r=8, dora=True, lora_targets=("all-linear",))
    assert trainable_params(spec, combo) == _built_trainable(spec, combo)
    assert trainable_params(spec, combo) > trainable_params(spec, combo.model_copy(update={"dora": False}))


def test_all_linear_wraps_what_peft_all_linear_wraps():
    from peft import LoraConfig, get_peft_model

    from ftopt.model.build import build_base
    from ftopt.spec import Precision
    from ftopt.spec.policy import lora_targets

    spec = load_model("tiny-llama")
    base = build_base(spec, Combination(), Precision.FP32, device="meta")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(lora_targets(spec, Combination(lora_r=4, lora_targets=("all-linear",))))


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("gc", [False, True])
def test_dora_weight_norm_moment_agrees_with_the_trace(precision, gc):
    """Short sequences put the peak at DoRA's weight norm (eye(i) and three o x i tensors of the widest linear)."""
    combo = Combination(lora_r=8, dora=True, gc=gc, lora_targets=("all-linear",))
    a, t = _both(load_model("tiny-llama"), combo, precision, seq_len=4, micro_batch=1)
    assert abs(a.peak_bytes_per_gpu / t.peak_bytes_per_gpu - 1) <= 0.08, (a.breakdown, t.breakdown)


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_dora_saved_activations_agree_with_the_trace(precision):
    """Longer sequences: DoRA's extra saved tensors (base and LoRA outputs per wrapped linear) set its cost over
    LoRA; the formulas' DoRA-minus-LoRA difference matches the trace's."""
    spec = load_model("tiny-llama")
    dora, lora = Combination(lora_r=8, dora=True), Combination(lora_r=8)
    (ad, td), (al, tl) = _both(spec, dora, precision), _both(spec, lora, precision)
    traced_cost = td.peak_bytes_per_gpu - tl.peak_bytes_per_gpu
    assert traced_cost > 0
    assert abs((ad.peak_bytes_per_gpu - al.peak_bytes_per_gpu) / traced_cost - 1) <= 0.05


@pytest.mark.parametrize("recipe", ["peft", "torchtune", "litgpt"])
def test_bf16_true_qlora_recipes_agree_with_the_trace(recipe):
    combo = Combination(lora_r=8, quant="nf4", qlora_recipe=recipe)
    a, t = _both(from_hf_config(UNTIED, "tiny-untied"), combo, "bf16-true")
    assert not [n for n in t.notes if "traced estimator" in n]
    assert abs(a.peak_bytes_per_gpu / t.peak_bytes_per_gpu - 1) <= 0.08, (a.breakdown, t.breakdown)
    assert a.breakdown.weights == t.breakdown.weights


def test_recipes_differ_in_weights_as_their_dtypes_say():
    """PEFT's fp32 upcast holds the most; LitGPT's quantized head the least (traced: the built modules)."""
    spec = from_hf_config(UNTIED, "tiny-untied")
    weights = {
        r: _both(spec, Combination(lora_r=8, quant="nf4", qlora_recipe=r), "bf16-true")[1].breakdown.weights
        for r in ("peft", "torchtune", "litgpt")
    }
    assert weights["peft"] > weights["torchtune"] > weights["litgpt"], weights


def test_dora_costs_time_on_a_gpu():
    from ftopt.estimate.time import step_time
    from ftopt.spec import load_hardware

    spec, hw = load_model("llama-2-7b"), load_hardware("a100-80g")
    setup = TrainingSetup(seq_len=512)
    lora, dora = Combination(lora_r=16), Combination(lora_r=16, dora=True)
    assert step_time(spec, setup, dora, hw).step_seconds > step_time(spec, setup, lora, hw).step_seconds
    assert step_time(spec, setup, dora, hw).flops_per_step > step_time(spec, setup, lora, hw).flops_per_step


@pytest.mark.parametrize("gc", [False, True])
def test_dora_operator_count_is_what_a_step_dispatches(gc):
    from ftopt.estimate.kernels import DORA_OPS_PER_WRAPPED_LINEAR, count_kernels

    spec = load_model("tiny-llama")
    lora = Combination(lora_r=4, gc=gc, lora_targets=("all-linear",))
    extra = count_kernels(spec, lora.model_copy(update={"dora": True})).per_layer - count_kernels(spec, lora).per_layer
    assert extra == DORA_OPS_PER_WRAPPED_LINEAR[gc] * len(spec.all_linear_names())
