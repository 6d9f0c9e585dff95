"""Quantized bases and 8-bit optimizers in the plan: the findings the QLoRA paper and practice claim, from the
planner's own predictions."""

import json

from typer.testing import CliRunner

from ftopt import estimate
from ftopt.cli.app import app
from ftopt.planner.plan import plan
from ftopt.spec import Combination, Offload, Quant, TrainingSetup, load_hardware, load_model


def test_13b_on_one_24gb_gpu_cli_json():
    r = CliRunner().invoke(
        app,
        [
            "plan",
            "--method",
            "analytic",
            "--model",
            "llama-2-13b",
            "--gpu",
            "rtx4090",
            "--gpus",
            "1",
            "--seq-len",
            "2048",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    cands = doc["candidates"]
    assert all("quant" in c and "optim" in c for c in cands)
    quantized_fit = [c for c in cands if c["fits"] and c["quant"] != "none"]
    plain_fit = [c for c in cands if c["fits"] and c["quant"] == "none"]
    assert quantized_fit
    # without a quantized base only parameter offload (ZeRO-3 offload all) fits
    assert plain_fit and all(c["offload"] == "all" for c in plain_fit)
    # both are in the plan with predicted times, and QLoRA wins on predicted time
    best_plain = min(c["step_seconds"] for c in plain_fit)  # no dataset size given: compare per step
    assert doc["recommended"]["quant"] != "none"
    assert doc["recommended_estimate"]["step_seconds"] < best_plain


def test_70b_on_one_80gb_gpu_needs_a_quantized_base_without_parameter_offload():
    p = plan(load_model("llama-2-70b"), load_hardware("a100-80g"), TrainingSetup(seq_len=2048), what_ifs=False)
    no_param_offload = [e for e in p.candidates if e.fits and e.combination.offload is not Offload.ALL]
    assert no_param_offload and all(e.combination.quant is not Quant.NONE for e in no_param_offload)


def test_65b_on_one_48gb_gpu_with_the_qlora_paper_settings():
    # QLoRA paper (arXiv 2305.14314) Guanaco 65B: NF4 + double quant, LoRA r=64 on every linear, bf16 compute,
    # gradient checkpointing, paged AdamW (qlora.py default optim=paged_adamw_32bit), micro-batch 1
    m = load_model("llama-65b")
    combo = Combination(
        lora_r=64, lora_targets=tuple(m.all_linear_names()), quant="nf4", gc=True, optim="paged-adamw", attn="flash"
    )
    for gpu in ("rtx-a6000", "l40s"):
        e = estimate(m, load_hardware(gpu), TrainingSetup(seq_len=512, micro_batch=1), combo)
        assert e.fits, (gpu, e.device_bytes_per_gpu)
        assert 33 * 2**30 < e.breakdown.weights < 40 * 2**30  # NF4 base + fp32 rest + fp32 adapters
        assert e.cpu_bytes_per_node > 0  # the paged states live in host-backed unified memory
    # the same with a 16-bit base cannot fit: 65B x 2 bytes is 130 GB
    plain = estimate(
        m, load_hardware("rtx-a6000"), TrainingSetup(seq_len=512), combo.model_copy(update={"quant": Quant.NONE})
    )
    assert not plain.fits


def test_repeated_quant_and_optim_values_plan_each_combination_once():
    keys = ("gc", "lora_r", "zero", "fsdp", "offload", "attn", "lora_targets", "quant", "optim")

    def candidates(*flags):
        r = CliRunner().invoke(
            app, ["plan", "--method", "analytic", "--model", "llama-2-7b", "--gpu", "rtx4090", "--json", *flags]
        )
        assert r.exit_code == 0, r.output
        return [json.dumps({k: c[k] for k in keys}) for c in json.loads(r.output)["candidates"]]

    repeated = candidates("--quant", "none,nf4,none", "--optim", "adamw,adamw")
    assert len(repeated) == len(set(repeated))
    assert sorted(repeated) == sorted(candidates("--quant", "none,nf4", "--optim", "adamw"))
