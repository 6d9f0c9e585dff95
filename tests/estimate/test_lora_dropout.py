"""LoRA adapter dropout in both estimators: the formulas' term worked by hand, and the formulas' cost of dropout is
the trace's (the traced model is built with the same nn.Dropout and runs in training mode), on a CPU (the unfused
dropout's noise tensor) and on a GPU (native_dropout's bool mask, as estimate/dropout.py traces it)."""

import pytest

from ftopt.estimate import activations, estimate, layer_saved
from ftopt.spec import Combination, Precision, TrainingSetup, from_hf_config, load_hardware, load_model
from ftopt.spec.policy import storage
from tests.estimate.test_lora_levers import UNTIED

H = 4096  # llama-2-7b: hidden size = q_dim = 4096, 32 layers, LoRA's default targets q, k, v, o


def _extra_per_token(spec, combo, precision, on_gpu, attn="sdpa"):
    """Bytes per token per layer that dropout 0.1 adds to `combo` (formulas)."""
    plain = Combination(**{**combo.model_dump(), "attn": attn})
    drop = Combination(**{**plain.model_dump(), "lora_dropout": 0.1})
    st = storage(Precision(precision), plain)
    per = layer_saved.layer_activation_bytes_per_token
    return per(spec, drop, st, 2048, on_gpu=on_gpu) - per(spec, plain, st, 2048, on_gpu=on_gpu)


def test_fp32_adapters_add_the_mask_only():
    """bf16-mixed, fp32 adapters (PEFT's default): each wrapped linear's input is cast to fp32 before the dropout,
    and lora_A saves the bf16 cast of the dropped tensor where it saved the bf16 cast of the input: the same bytes.
    What is new is the mask: on a GPU a bool per element, 4 wrapped linears x 4096 x 1 B = 16,384 B per token per
    layer; on a CPU the unfused dropout's fp32 noise, 4 x 4096 x 4 B = 65,536 B."""
    m7, combo = load_model("llama-2-7b"), Combination(lora_r=16)
    assert _extra_per_token(m7, combo, "bf16-mixed", on_gpu=True) == 4 * H * 1 == 16_384
    assert _extra_per_token(m7, combo, "bf16-mixed", on_gpu=False) == 4 * H * 4 == 65_536


def test_adapters_in_the_base_dtype_add_the_mask_and_a_copy():
    """bf16-true, --adapter-dtype base, GPU: no cast, so lora_A saved the input q, k and v share (2 x 4096 B); with
    dropout each of q, k, v keeps its own bf16 dropped copy and bool mask: 3 x (2 + 1) x 4096 - 2 x 4096 = 28,672.
    o_proj: its copy and mask, 3 x 4096 = 12,288, its input staying saved as SDPA's output (eager attention's is a
    fresh copy, freed: 12,288 - 8,192 = 4,096). Per token per layer: 40,960 with SDPA, 32,768 with eager."""
    m7, combo = load_model("llama-2-7b"), Combination(lora_r=16, adapter_dtype="base")
    assert _extra_per_token(m7, combo, "bf16-true", on_gpu=True) == 28_672 + 12_288 == 40_960
    assert _extra_per_token(m7, combo, "bf16-true", on_gpu=True, attn="eager") == 28_672 + 4_096 == 32_768


def test_the_first_layer_keeps_no_mask_for_its_frozen_input():
    """Without GC the first layer's q, k, v read a tensor made from the frozen embedding alone, which needs no
    gradient, so autograd keeps no mask for them: 32 layers x 16,384 B - 3 x 4096 B per token, x 2048 tokens =
    1,048,576,000 B (1000 MiB) on a GPU. With GC every layer's input requires grad: nothing is set aside."""
    m7, setup = load_model("llama-2-7b"), TrainingSetup(seq_len=2048)
    plain, drop = Combination(lora_r=16), Combination(lora_r=16, lora_dropout=0.1)
    st = storage(setup.precision, plain)
    acts = {c.lora_dropout: activations.activation_bytes(m7, setup, c, st, on_gpu=True)[0] for c in (plain, drop)}
    assert acts[0.1] - acts[0.0] == (32 * 16_384 - 3 * H) * 2048 == 1_048_576_000
    gc = {
        p: activations.gc_recompute_activation_bytes(m7, setup, Combination(lora_r=16, gc=True, lora_dropout=p), st)
        for p in (0.0, 0.1)
    }
    assert gc[0.1] - gc[0.0] == 16_384 * 2048  # the recomputed layer's masks


def test_no_dropout_no_term():
    m7 = load_model("llama-2-7b")
    st = storage(Precision.BF16_MIXED, Combination(lora_r=16))
    per = layer_saved.layer_activation_bytes_per_token
    assert per(m7, Combination(lora_r=16), st, 2048) == 164_616  # tests/estimate/test_analytic.py's figure


TINY_CONFIG = UNTIED  # the untied tiny llama the LoRA lever tests trace
# (hardware, precision, combination fields): the mask kinds (CPU noise, GPU bool), the adapter dtypes (a cast
# before the dropout or a copy per wrapped linear), GC's recomputed layer (a 64-token vocabulary, so that the
# recomputation, not the loss, is the peak) and DoRA's recomputed base product
CASES = [
    ("cpu", "fp32", {}),
    ("cpu", "bf16-true", {}),
    ("cpu", "bf16-mixed", {"dora": True}),
    ("h100-80g", "bf16-mixed", {}),
    ("h100-80g", "bf16-true", {"adapter_dtype": "base"}),
    ("h100-80g", "bf16-mixed", {"gc": True}),
    ("h100-80g", "bf16-true", {"dora": True}),
]


@pytest.mark.parametrize(("hw", "precision", "fields"), CASES, ids=lambda v: str(v))
def test_the_traced_peak_rises_by_the_formulas_cost(hw, precision, fields):
    """Dropout raises the traced peak, by what the formulas add (within 3%): the trace measures the model the
    trainer builds, nn.Dropout in training mode included, so a missing or wrong term on either side fails here."""
    setup = TrainingSetup(seq_len=256, micro_batch=2, precision=precision)
    spec = from_hf_config({**TINY_CONFIG, "vocab_size": 64 if fields.get("gc") else 512}, "tiny-dropout")
    rise = {}
    for method in ("analytic", "traced"):
        peaks = [
            estimate(spec, load_hardware(hw), setup, Combination(lora_r=8, lora_dropout=p, **fields), method)
            for p in (0.0, 0.1)
        ]
        assert all(e.method.value == method for e in peaks), peaks[1].notes
        rise[method] = peaks[1].peak_bytes_per_gpu - peaks[0].peak_bytes_per_gpu
    assert rise["traced"] > 0
    assert abs(rise["analytic"] / rise["traced"] - 1) <= 0.03, rise


def test_dropout_costs_its_operators_in_the_time_model():
    """native_dropout and its backward per wrapped linear, and the recomputation's under GC: count_kernels of a
    real step, dropout traced as on the GPU."""
    from ftopt.estimate.dropout import gpu_dropout
    from ftopt.estimate.kernels import DROPOUT_OPS_PER_WRAPPED_LINEAR, count_kernels, kernel_counts

    spec = load_model("tiny-llama")
    for gc in (False, True):
        lora = Combination(lora_r=4, gc=gc, lora_targets=("all-linear",))
        drop = lora.model_copy(update={"lora_dropout": 0.1})
        with gpu_dropout(True):
            extra = count_kernels(spec, drop).per_layer - count_kernels(spec, lora).per_layer
        wrapped = len(spec.all_linear_names())
        assert extra == DROPOUT_OPS_PER_WRAPPED_LINEAR[gc] * wrapped
        assert kernel_counts(spec, drop).per_layer - kernel_counts(spec, lora).per_layer == extra
