"""The planner reproduces the published findings of arXiv 2406.02290 from its own predictions, within the study's
option space (unquantized bases, 32-bit AdamW; tests/test_plan_quant.py covers quantization and 8-bit optimizers)."""
import pytest

from ftopt.plan import plan
from ftopt.spec import Combination, Offload, Optim, Quant, TrainingSetup, load_hardware, load_model

A100 = load_hardware("a100-80g")
NODE = TrainingSetup(seq_len=2048, gpus_per_node=8, dataset_tokens=50_000_000)
STUDY = dict(quants=(Quant.NONE,), optims=(Optim.ADAMW,))  # the study's options: 16-bit base, AdamW


def find(p, **kw):
    target = Combination(**kw)
    return next(e for e in p.candidates if e.combination == target)


@pytest.mark.parametrize("model", ["llama-2-7b", "llama-2-13b"])
def test_7b_13b_on_a100_node(model):
    p = plan(load_model(model), A100, NODE, **STUDY)
    rec = p.recommended.combination
    # full fine-tuning without ZeRO does not fit
    assert not any(e.fits for e in p.candidates if not e.combination.lora and e.combination.zero == 0)
    # the recommendation uses LoRA without GC
    assert rec.lora and not rec.gc
    # LoRA + ZeRO-2 (the study's default) fits and is within 10% of the recommended epoch time
    z2 = find(p, lora_r=16, zero=2, attn=rec.attn)
    assert z2.fits and z2.epoch_seconds <= 1.10 * p.recommended.epoch_seconds


def test_70b_on_a100_node():
    p = plan(load_model("llama-2-70b"), A100, NODE, **STUDY)
    full_fit = [e for e in p.candidates if not e.combination.lora and e.fits]
    full_device_fit = [e for e in p.candidates if not e.combination.lora and e.device_bytes_per_gpu <= e.capacity_bytes]
    # full fine-tuning needs ZeRO-3 and offload to fit the GPUs at all
    assert full_device_fit and all(e.combination.zero == 3 and e.combination.offload is not Offload.NONE for e in full_device_fit)
    assert not any(e.fits for e in p.candidates if not e.combination.lora and e.combination.offload is Offload.NONE)
    assert not full_fit or all(e.combination.zero == 3 for e in full_fit)
    # every combination that fits without offload is ZeRO-3 + LoRA
    no_off = [e for e in p.candidates if e.fits and e.combination.offload is Offload.NONE]
    assert no_off and all(e.combination.zero == 3 and e.combination.lora for e in no_off)
    # and GC where the activations demand it: at 4k, only GC combinations fit without offload
    p4 = plan(load_model("llama-2-70b"), A100, NODE.model_copy(update={"seq_len": 4096}), what_ifs=False, **STUDY)
    no_off4 = [e for e in p4.candidates if e.fits and e.combination.offload is Offload.NONE]
    assert no_off4 and all(e.combination.gc for e in no_off4 if e.combination.attn.value == "eager")


def test_flash_raises_longest_context():
    from ftopt.plan import longest_context
    m = load_model("llama-2-7b")
    s = TrainingSetup(seq_len=2048)
    eager = longest_context(m, A100, s, Combination(lora_r=16, attn="eager"), "analytic")
    flash = longest_context(m, A100, s, Combination(lora_r=16, attn="flash"), "analytic")
    assert flash > eager


def test_7b_on_one_24gb_gpu_needs_lora_and_gc():
    p = plan(load_model("llama-2-7b"), load_hardware("rtx4090"), TrainingSetup(seq_len=2048), **STUDY)
    rec = p.recommended.combination
    assert rec.lora and rec.gc
    # nothing without LoRA fits unless everything is offloaded to the host
    assert all(e.combination.offload is Offload.ALL for e in p.candidates if e.fits and not e.combination.lora)
    assert not any(e.fits for e in p.candidates if e.combination.lora and not e.combination.gc and e.combination.offload is Offload.NONE)


def test_shortfall_is_reported_when_nothing_fits():
    p = plan(load_model("llama-3.1-405b"), load_hardware("t4"), TrainingSetup(seq_len=2048, precision="fp16-mixed"),
             what_ifs=False)
    assert p.recommended is None and p.shortfall.startswith("nothing fits")


def test_max_hours_budget_is_reported():
    p = plan(load_model("llama-2-7b"), A100, NODE, max_hours=0.001, what_ifs=False)
    assert "exceeds the 0.001 h budget" in p.reason


def test_full_only_recommends_full():
    p = plan(load_model("llama-2-7b"), A100, NODE, full_only=True, what_ifs=False)
    assert not p.recommended.combination.lora
    assert all(not e.combination.lora for e in p.candidates)


def test_recommendation_is_the_fastest_fitting():
    p = plan(load_model("llama-2-13b"), A100, NODE, what_ifs=False)
    fastest = min(e.total_seconds for e in p.candidates if e.fits)
    assert p.recommended.total_seconds <= fastest * 1.01


def test_what_ifs():
    p = plan(load_model("llama-2-7b"), A100, NODE)
    assert p.longest_context >= 2048
    assert p.fewest_gpus == 1  # LoRA 7B fits one 80 GB GPU
