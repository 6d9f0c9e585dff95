"""Right-padded batches (`TrainingSetup.batching`): the estimates see what a real step on the collator's padded
batch allocates, and the traced step is fed the layout the collator really makes.

The reference is a real step measured at the allocator (tests/estimate/test_layout.py's), on batches made by
ftopt's own collator: rows of SEQ tokens (nothing padded) against the same micro-batch with one row shorter, which
the collator right-pads and marks in the attention mask.
"""

import pytest
import torch

from ftopt.estimate import estimate, layout
from ftopt.spec import Batching, Combination, TrainingSetup, from_hf_config, load_hardware
from tests.estimate.test_layout import GQA, MB, SEQ, _measured_peak_bytes

pytest.importorskip("trl")


def _rows(lengths) -> list[dict]:
    from ftopt.train.sft import Example, to_dataset

    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(1, GQA["vocab_size"], (n,), generator=g).tolist() for n in lengths]
    ds = to_dataset([Example(r, list(r)) for r in ids], SEQ, packing=False)
    return [ds[i] for i in range(len(ds))]


def _collate(lengths, pad_to=None, flatten=False) -> dict:
    from ftopt.train.sft import SftCollator

    return SftCollator(pad_token_id=0, pad_to=pad_to, flatten=flatten)(_rows(lengths))


def _predicted(spec, combo, batching: str, method: str, mb: int = MB, hw: str = "cpu") -> int:
    precision = "fp32" if hw == "cpu" else "bf16-mixed"
    setup = TrainingSetup(seq_len=SEQ, micro_batch=mb, precision=precision, batching=batching)
    return estimate(spec, load_hardware(hw), setup, combo, method).peak_bytes_per_gpu


@pytest.mark.parametrize(
    "combo", [Combination(attn="sdpa"), Combination(attn="sdpa", gc=True, lora_r=4)], ids=["sdpa", "sdpa-lora-gc"]
)
def test_a_padded_batch_costs_sdpa_its_mask(combo):
    """One row shorter than the longest: the same shape, but SDPA is handed a mask (repeated k/v, per-layer float
    mask) that full rows never get. Both estimators count it for `padded` and leave it out for `full`."""
    spec = from_hf_config(GQA, "gqa")
    full, padded = _collate([SEQ] * MB), _collate([SEQ] + [SEQ - 60] * (MB - 1))
    assert full["input_ids"].shape == padded["input_ids"].shape == (MB, SEQ)
    real = {"full": _measured_peak_bytes(spec, combo, full), "padded": _measured_peak_bytes(spec, combo, padded)}
    extra = real["padded"] - real["full"]
    assert extra > 0.03 * real["full"]  # padding really costs: the mask is a visible share of this step
    traced = {b: _predicted(spec, combo, b, "traced") for b in real}
    for b in real:
        assert traced[b] == pytest.approx(real[b], rel=0.02)
    analytic = {b: _predicted(spec, combo, b, "analytic") for b in real}
    assert analytic["padded"] - analytic["full"] == pytest.approx(extra, rel=0.1)


def test_padded_to_the_longest_a_single_row_is_never_masked_padded_to_seq_len_it_is():
    """micro-batch 1: the collator pads a row to itself (no mask) unless told to pad to --seq-len."""
    spec, combo = from_hf_config(GQA, "gqa"), Combination(attn="sdpa")
    longest, to_max = _collate([SEQ - 60]), _collate([SEQ - 60], pad_to=SEQ)
    assert longest["attention_mask"].all() and longest["input_ids"].shape == (1, SEQ - 60)
    assert to_max["input_ids"].shape == (1, SEQ) and not to_max["attention_mask"].all()
    assert _predicted(spec, combo, "padded", "analytic", mb=1) == _predicted(spec, combo, "full", "analytic", mb=1)
    assert _predicted(spec, combo, "padded-max", "analytic", mb=1) > _predicted(spec, combo, "full", "analytic", mb=1)


def test_flash_is_padding_free_in_every_batching():
    spec, combo = from_hf_config(GQA, "gqa"), Combination(attn="flash")
    flat = _collate([SEQ, SEQ - 60], pad_to=SEQ, flatten=True)
    assert flat["input_ids"].shape == (1, 2 * SEQ - 60) and "attention_mask" not in flat
    peaks = {b.value: _predicted(spec, combo, b.value, "analytic", hw="h100-80g") for b in Batching}
    assert len(set(peaks.values())) == 1


@pytest.mark.parametrize("batching", [b.value for b in Batching])
def test_the_traced_step_is_fed_the_keys_the_collator_gives(batching):
    """Same inputs as the real batch (the traced estimator cannot import the trainer: it builds them itself)."""
    combo = Combination(attn="sdpa")
    setup = TrainingSetup(seq_len=SEQ, micro_batch=MB, batching=batching)
    fed = layout.step_inputs(setup, combo, "cpu")
    if batching == "packed":
        from ftopt.train.sft import Example, SftCollator, to_dataset

        docs = [list(range(1, 101)), list(range(1, 157))] * MB  # rows of 100 + 156 = SEQ tokens
        ds = to_dataset([Example(d, list(d)) for d in docs], SEQ, packing=True)
        real = SftCollator(pad_token_id=0)([ds[i] for i in range(len(ds))])
    else:
        lengths = [SEQ] * MB if batching == "full" else [SEQ] + [SEQ - 60] * (MB - 1)
        real = _collate(lengths, pad_to=SEQ if batching == "padded-max" else None)
    # a real batch's mask of all ones (full rows) is dropped by transformers: the same as no mask at all
    real_keys = {k for k in real if not (k == "attention_mask" and real[k].all())} - {"seq_lengths"}
    assert set(fed) == real_keys
    assert all(fed[k].shape == real[k].shape for k in fed)


def test_packing_flag_and_batching_agree_or_the_setup_says_which_contradicts():
    assert TrainingSetup(packing=True).batching is Batching.PACKED
    assert TrainingSetup(packing=False).batching is Batching.PADDED
    assert TrainingSetup(packing=False, batching="padded-max").batching is Batching.PADDED_MAX
    assert TrainingSetup(batching="packed").packing and not TrainingSetup(batching="full").packing
    with pytest.raises(ValueError, match="--packing contradicts --batching padded"):
        TrainingSetup(packing=True, batching="padded")
    # files written before the field: `packing` in the setup still loads
    assert TrainingSetup.model_validate({"packing": True}).batching is Batching.PACKED


def test_estimate_takes_batching_and_refuses_a_contradiction_in_one_line():
    import json

    from typer.testing import CliRunner

    from ftopt.cli.app import app

    runner = CliRunner()
    # LoRA, so that the activations set the peak: tiny-llama's full fine-tuning peaks at the end of backward
    # (every gradient, no activation) under both estimators, whatever the batching
    base = ["estimate", "--model", "tiny-llama", "--gpu", "cpu", "--micro-batch", "1", "--lora-r", "8", "--json"]
    peak = lambda *flags: json.loads(runner.invoke(app, [*base, *flags]).stdout)["peak_bytes_per_gpu"]
    assert peak("--batching", "padded-max") > peak("--batching", "padded") == peak("--no-packing")
    r = runner.invoke(app, [*base, "--packing", "--batching", "padded"])
    assert r.exit_code == 2 and "contradicts --batching padded" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*base, "--batching", "ragged"])
    assert r.exit_code == 2 and "--batching must be one of" in r.output
