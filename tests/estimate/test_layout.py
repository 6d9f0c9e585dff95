"""Packed (padding-free) batches: the estimates see what a real training step on the collator's batch allocates.

The reference is a real step (forward with labels, backward, clip, fused AdamW, zero_grad, twice) on a batch made
by ftopt's own collator (TRL's), measured at the allocator (ftopt.results.measure.AllocatorPeak), not a restatement of the
formulas: packed minus unpacked peak, real against predicted.
"""

import pytest
import torch

from ftopt.estimate import estimate
from ftopt.estimate.time import step_flops
from ftopt.results.measure import AllocatorPeak
from ftopt.spec import Combination, Precision, TrainingSetup, from_hf_config, load_hardware

# small widths and a long row, so attention's per-layer tensors are a visible part of the step
GQA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 128,
}
SEQ, MB = 256, 2
DOCS = (150, 106, 60, 90, 70, 36)  # two rows of 256 tokens: [150, 106] and [90, 70, 60, 36]


def _batch(packed: bool) -> dict:
    """The micro-batch `ftopt train` gives the model: SftCollator on packed rows (position ids restart per
    document, no attention mask) or on plain rows of SEQ tokens (attention mask, no position ids)."""
    pytest.importorskip("trl")
    from ftopt.train.sft import Example, SftCollator, to_dataset

    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, GQA["vocab_size"], (n,), generator=g).tolist() for n in DOCS]
    if packed:
        ds = to_dataset([Example(d, list(d)) for d in docs], SEQ, packing=True)
    else:
        ids = torch.randint(0, GQA["vocab_size"], (MB, SEQ), generator=g).tolist()
        ds = to_dataset([Example(r, list(r)) for r in ids], SEQ, packing=False)
    rows = [ds[i] for i in range(len(ds))]
    assert [len(r["input_ids"]) for r in rows] == [SEQ] * MB
    batch = SftCollator(pad_token_id=0)(rows)
    assert ("position_ids" in batch) == packed and ("attention_mask" in batch) != packed
    return batch


def _measured_peak_bytes(spec, combo: Combination, batch: dict) -> int:
    from ftopt.model.build import build_model

    torch.manual_seed(0)
    peak = AllocatorPeak().start()
    model = build_model(spec, combo, Precision.FP32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    for _ in range(2):
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return peak.stop()


def _predicted(spec, combo: Combination, packed: bool, method: str) -> int:
    """Packed rows, or the unpacked rows of `_batch`: every one SEQ tokens, nothing padded (batching full)."""
    setup = TrainingSetup(seq_len=SEQ, micro_batch=MB, precision="fp32", batching="packed" if packed else "full")
    return estimate(spec, load_hardware("cpu"), setup, combo, method).peak_bytes_per_gpu


@pytest.mark.parametrize(
    "combo", [Combination(attn="sdpa"), Combination(attn="sdpa", gc=True, lora_r=4)], ids=["sdpa", "sdpa-lora-gc"]
)
def test_packed_sdpa_costs_what_a_real_step_on_the_collators_batch_costs(combo):
    spec = from_hf_config(GQA, "gqa")
    real = {p: _measured_peak_bytes(spec, combo, _batch(p)) for p in (False, True)}
    extra = real[True] - real[False]
    # the packed layout really costs more: its mask and repeated k/v are a visible share of this step
    assert extra > 0.03 * real[False]
    traced = {p: _predicted(spec, combo, p, "traced") for p in (False, True)}
    assert traced[True] - traced[False] == pytest.approx(extra, rel=0.05)
    for p in (False, True):
        assert traced[p] == pytest.approx(real[p], rel=0.02)
    analytic = {p: _predicted(spec, combo, p, "analytic") for p in (False, True)}
    assert analytic[True] - analytic[False] == pytest.approx(extra, rel=0.1)


def test_packed_eager_keeps_what_unpacked_eager_keeps():
    """Eager materializes its [micro_batch, 1, L, L] float mask and [heads, L, L] scores packed or not."""
    spec = from_hf_config(GQA, "gqa")
    combo = Combination(attn="eager")
    real = {p: _measured_peak_bytes(spec, combo, _batch(p)) for p in (False, True)}
    assert real[True] == pytest.approx(real[False], rel=0.01)
    assert _predicted(spec, combo, True, "analytic") == _predicted(spec, combo, False, "analytic")


def test_a_mask_costs_sdpa_its_causal_skip():
    """SDPA given a mask computes every score (no causal block skipping); flash on packed rows stays causal."""
    spec = from_hf_config(GQA, "gqa")
    flops = {
        (attn, p): step_flops(
            spec, TrainingSetup(seq_len=SEQ, micro_batch=MB, batching="packed" if p else "full"), Combination(attn=attn)
        )
        for attn in ("sdpa", "eager", "flash")
        for p in (False, True)
    }
    assert flops[("sdpa", False)] < flops[("sdpa", True)] == flops[("eager", True)] == flops[("eager", False)]
    assert flops[("flash", True)] == flops[("flash", False)] == flops[("sdpa", False)]


def test_an_unpacked_estimate_says_it_assumes_full_rows():
    spec, hw = from_hf_config(GQA, "gqa"), load_hardware("cpu")
    note = lambda packing: [
        n
        for n in estimate(spec, hw, TrainingSetup(seq_len=SEQ, packing=packing), Combination()).notes
        if "--seq-len" in n
    ]
    assert note(False) and f"--seq-len {SEQ} tokens" in note(False)[0] and not note(True)
