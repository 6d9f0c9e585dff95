"""The planner reproduces the published findings of arXiv 2406.02290 from its own predictions, within the study's
option space (unquantized bases, 32-bit AdamW; tests/test_plan_quant.py covers quantization and 8-bit optimizers)."""

import re

import pytest

from ftopt.planner.plan import plan
from ftopt.spec import Combination, Engine, Offload, Optim, Quant, TrainingSetup, load_hardware, load_model

A100 = load_hardware("a100-80g")
NODE = TrainingSetup(seq_len=2048, gpus_per_node=8, dataset_tokens=50_000_000)
# the study's options: 16-bit base, AdamW, DeepSpeed (FSDP2 is planned beside it: tests/estimate/test_fsdp.py)
STUDY = dict(quants=(Quant.NONE,), optims=(Optim.ADAMW,), engines=(Engine.DDP, Engine.ZERO))


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
    assert full_device_fit and all(
        e.combination.zero == 3 and e.combination.offload is not Offload.NONE for e in full_device_fit
    )
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
    from ftopt.planner.plan import longest_context

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
    assert not any(
        e.fits
        for e in p.candidates
        if e.combination.lora and not e.combination.gc and e.combination.offload is Offload.NONE
    )


def test_shortfall_is_reported_when_nothing_fits():
    p = plan(
        load_model("llama-3.1-405b"),
        load_hardware("t4"),
        TrainingSetup(seq_len=2048, precision="fp16-mixed"),
        what_ifs=False,
    )
    assert p.recommended is None and p.shortfall.startswith("nothing fits")


def test_max_hours_budget_is_reported():
    p = plan(load_model("llama-2-7b"), A100, NODE, max_hours=0.001, what_ifs=False)
    assert "exceeds the 3.6 s budget: add GPUs or shorten the data" in p.reason  # 0.001 h


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


# ---- what the GPU can run ------------------------------------------------------------------------------------------
def test_planner_considers_sdpa_everywhere_and_flash_only_where_it_runs():
    from ftopt.spec import Attention

    m, s = load_model("llama-2-7b"), TrainingSetup(seq_len=2048, precision="fp16-mixed")
    v100 = plan(m, load_hardware("v100-32g"), s, what_ifs=False)
    attns = {e.combination.attn for e in v100.candidates}
    assert attns == {Attention.EAGER, Attention.SDPA}  # the defect: flash was offered (and recommended) on a V100
    assert v100.recommended is None or v100.recommended.combination.attn is not Attention.FLASH
    assert {e.combination.attn for e in plan(m, A100, NODE, what_ifs=False).candidates} == set(Attention)


def test_estimate_of_what_the_gpu_cannot_run_is_one_line():
    from ftopt import estimate
    from ftopt.spec.errors import FtoptError

    with pytest.raises(FtoptError, match="^v100-32g cannot run flash attention .*use --attn eager or sdpa.$"):
        estimate(
            load_model("llama-2-7b"),
            load_hardware("v100-32g"),
            TrainingSetup(precision="fp16-mixed"),
            Combination(attn="flash"),
        )


# ---- plan output: what bounds the answer ---------------------------------------------------------------------------
def test_longest_context_says_when_the_position_limit_bounds_it():
    from ftopt.planner.plan import LimitKind

    p = plan(load_model("llama-2-7b"), load_hardware("h200"), TrainingSetup(seq_len=2048))
    assert p.longest_context == 4096 and p.longest_context_bound is LimitKind.POSITIONS
    assert p.to_json()["longest_context_bound"] == "positions"
    small = plan(load_model("llama-2-7b"), load_hardware("rtx4090"), TrainingSetup(seq_len=512))
    assert small.longest_context < 4096 and small.longest_context_bound is LimitKind.MEMORY


def test_70b_full_fine_tuning_names_the_host_ram_limit():
    """Where the GPUs have room and host RAM is the limit, the plan names host RAM, never a negative "GiB more"."""
    m = load_model("llama-2-70b")
    p = plan(m, A100, NODE, full_only=True, what_ifs=False)
    assert p.recommended is None
    assert "host RAM per node, more than the 1024.0 GiB assumed (set --host-ram" in p.shortfall
    assert "more than the 80.0 GiB" not in p.shortfall and not re.search(
        r"-\d+\.\d GiB", p.shortfall
    )  # no negative "more"
    # with the host RAM such nodes can have, it fits
    big = A100.model_copy(update={"host_memory_bytes": 2 * 2**40})
    assert plan(m, big, NODE, full_only=True, what_ifs=False).recommended is not None


def test_without_dataset_tokens_times_are_per_step_and_per_1k_samples():
    s = TrainingSetup(seq_len=2048, gpus_per_node=8, micro_batch=2, grad_accum=4)
    p = plan(load_model("llama-2-7b"), A100, s, cost_per_gpu_hour=2.0, currency="EUR", what_ifs=False)
    doc = p.to_json()
    c = doc["candidates"][0]
    assert c["epoch_seconds"] is None and c["total_seconds"] is None and c["cost_basis"] == "1k samples"
    assert c["seconds_per_1k_samples"] == pytest.approx(c["step_seconds"] * 1000 / (2 * 4 * 8))
    assert c["cost"] == pytest.approx(c["seconds_per_1k_samples"] / 3600 * 8 * 2.0)
    assert doc["currency"] == "EUR" and "per 1k samples" in p.reason
    with_data = plan(load_model("llama-2-7b"), A100, NODE, cost_per_gpu_hour=2.0, what_ifs=False).to_json()
    assert with_data["candidates"][0]["total_seconds"] > 0 and with_data["currency"] == "USD"


def test_cost_and_currency_are_checked():
    from ftopt.spec.errors import FtoptError

    with pytest.raises(FtoptError, match="--currency is empty"):
        plan(load_model("llama-2-7b"), A100, NODE, currency=" ", what_ifs=False)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(FtoptError, match=f"--cost-per-gpu-hour must be a price of zero or more, got {bad}"):
            plan(load_model("llama-2-7b"), A100, NODE, cost_per_gpu_hour=bad, what_ifs=False)


def test_max_hours_must_be_a_finite_positive_number():
    from ftopt.spec.errors import FtoptError

    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(FtoptError, match=f"--max-hours must be a positive number of hours, got {bad}"):
            plan(load_model("llama-2-7b"), A100, NODE, max_hours=bad, what_ifs=False)


def test_a_requested_length_beyond_the_positions_is_not_called_the_position_limit():
    """A run asking for more than the model's positions searches up to its own length; when that fits, the bound
    is the request (llama-2-7b has 4,096 positions), not a position limit of 8,192."""
    from typer.testing import CliRunner

    from ftopt.cli.app import app
    from ftopt.planner.plan import LimitKind

    p = plan(load_model("llama-2-7b"), load_hardware("h200"), TrainingSetup(seq_len=8192))
    assert p.longest_context == 8192 and p.longest_context_bound is LimitKind.REQUESTED
    assert p.to_json()["longest_context_bound"] == "requested"
    out = (
        CliRunner()
        .invoke(app, ["plan", "--model", "llama-2-7b", "--gpu", "h200", "--seq-len", "8192", "--method", "analytic"])
        .output
    )
    assert "fits at the requested 8,192 tokens, beyond the model's position limit" in " ".join(out.split())
    assert "position limit, 8,192" not in " ".join(out.split())
