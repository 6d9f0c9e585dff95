"""The analytic and traced estimators tell one story: over a grid of small configurations (every precision, full
and LoRA, GC on and off, every attention kernel, plain data parallel, ZeRO and FSDP2) their allocated peaks
agree within TOLERANCE, so a change to one that the other does not follow fails here.

No row of the grid must differ: what the trace cannot see on one process (DeepSpeed's partitioned states and
buffers, FSDP2's sharding terms) both estimators take from the same formulas, and where the FakeTensor trace
differs from a real step the trace corrects itself (autocast.tied_grad_summed_in_place: fake storages defeat
autograd's in-place gradient sum, and the trace removes those bytes)."""

import itertools

import pytest

from ftopt.estimate import estimate
from ftopt.spec import Combination, TrainingSetup, from_hf_config, load_hardware, load_model

# Both estimators answer for the same module tree (ftopt.modeling), the analytic one by enumerating the tensors
# each op saves and the moments of a layer's backward (layer_backward.layer_backward_moments), the traced one by
# counting every storage. What the formulas leave out is small: a layer's backward moments other than its MLP's
# and eager softmax's, a few hidden-size gradients, the final norm's and the rotary tables. At this grid's shapes
# that is under 5% of the peak; the published and CPU accuracy tables (docs/accuracy.md) hold the analytic
# estimator to 8% of real runs, so a 5% gap between the two leaves it inside that bar.
TOLERANCE = 0.05

SPEC = from_hf_config(
    {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "tie_word_embeddings": False,
    },
    "agreement-llama",
)
HW = load_hardware("h100-80g")  # runs every kernel and precision (flash, fp16); the trace runs on CPU tensors
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true")
ENGINES = ({}, {"zero": 2}, {"zero": 3}, {"fsdp": "full"}, {"fsdp": "grad-op"})
ATTNS = ("eager", "sdpa", "flash")


def _grid() -> list[tuple[str, Combination]]:
    """precision x full/LoRA x GC x engine, each kernel in turn (flash needs 16 bits: fp32 takes the next one);
    bf16-true is a Trainer-only precision (policy.storage), so it has no ZeRO rows. Then LoRA with adapter dropout:
    precision x GC, each with the next engine and kernel."""
    out = []
    for i, (prec, lora_r, gc, engine) in enumerate(itertools.product(PRECISIONS, (0, 8), (False, True), ENGINES)):
        if prec == "bf16-true" and "zero" in engine:
            continue
        out.append((prec, Combination(lora_r=lora_r, gc=gc, attn=_attn(i, prec), **engine)))
    for i, (prec, gc) in enumerate(itertools.product(PRECISIONS, (False, True))):
        engine = ENGINES[i % len(ENGINES)] if prec != "bf16-true" else ENGINES[(i % 2) * 3]
        out.append((prec, Combination(lora_r=8, lora_dropout=0.1, gc=gc, attn=_attn(i, prec), **engine)))
    return out


def _attn(i: int, prec: str) -> str:
    return ATTNS[i % 3] if prec != "fp32" or ATTNS[i % 3] != "flash" else "sdpa"


def _id(case) -> str:
    prec, c = case
    return f"{prec}-{c.label().replace(' + ', '-').replace(' ', '')}"


@pytest.mark.parametrize("case", _grid(), ids=_id)
def test_analytic_and_traced_agree(case):
    prec, combo = case
    setup = TrainingSetup(
        seq_len=128, micro_batch=2, precision=prec, gpus_per_node=2 if combo.engine.value != "ddp" else 1
    )
    a = estimate(SPEC, HW, setup, combo, "analytic")
    t = estimate(SPEC, HW, setup, combo, "traced")
    assert t.method.value == "traced", t.notes
    gap = (a.peak_bytes_per_gpu - t.peak_bytes_per_gpu) / t.peak_bytes_per_gpu
    assert abs(gap) <= TOLERANCE, (
        f"analytic {a.peak_bytes_per_gpu / 2**20:.2f} MiB ({a.peak_phase}) vs traced "
        f"{t.peak_bytes_per_gpu / 2**20:.2f} MiB ({t.peak_phase}): {gap:+.1%}\n"
        f"analytic {a.breakdown}\ntraced   {t.breakdown}"
    )


# Under GC a small model peaks in one layer's backward (its vocabulary makes the loss's tensors small): the
# measured tiny-llama LoRA rows (benchmarks/results/estimate_accuracy_misses_2/3.json) and the moments beside them,
# the softmax's backward under bf16-mixed and, for full fine-tuning, the first layer's beside the gradients.
GC_TOLERANCE = 0.02
GC_CASES = [
    (8, "fp32", 256, 2),
    (8, "fp32", 64, 8),
    (8, "bf16-mixed", 256, 2),
    (0, "bf16-mixed", 256, 2),
]


@pytest.mark.parametrize("case", GC_CASES, ids=lambda c: f"r{c[0]}-{c[1]}-{c[2]}x{c[3]}")
def test_gc_layer_backward_agrees_on_a_small_model(case):
    lora_r, prec, seq, mb = case
    spec, hw = load_model("tiny-llama"), load_hardware("cpu")
    setup = TrainingSetup(seq_len=seq, micro_batch=mb, precision=prec, batching="full")
    combo = Combination(lora_r=lora_r, gc=True, attn="eager")
    a, t = (estimate(spec, hw, setup, combo, m) for m in ("analytic", "traced"))
    assert t.method.value == "traced" and t.peak_phase == a.peak_phase == "forward/backward"
    gap = (a.peak_bytes_per_gpu - t.peak_bytes_per_gpu) / t.peak_bytes_per_gpu
    assert abs(gap) <= GC_TOLERANCE, f"analytic {a.breakdown}\ntraced   {t.breakdown}: {gap:+.1%}"
