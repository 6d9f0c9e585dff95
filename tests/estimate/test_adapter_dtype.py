"""LoRA adapters as PEFT keeps them (fp32 by default, the base's dtype with --adapter-dtype base) in the model
ftopt builds and in both estimators; FSDP2 under bf16-mixed estimated from the step its ranks compute."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.estimate import analytic, estimate
from ftopt.model.build import build_model
from ftopt.spec import Combination, Precision, TrainingSetup, load_hardware, load_model
from ftopt.spec.policy import storage

runner = CliRunner()


@pytest.mark.parametrize("adapter_dtype", ["fp32", "base"])
def test_the_analytic_weights_are_the_bytes_of_the_model_peft_builds(adapter_dtype):
    """bf16-true LoRA: PEFT upcasts the adapters to fp32 unless autocast_adapter_dtype=False."""
    import torch

    spec, combo = load_model("tiny-llama"), Combination(lora_r=8, adapter_dtype=adapter_dtype)
    model = build_model(spec, combo, Precision.BF16_TRUE)
    adapters = {p.dtype for p in model.parameters() if p.requires_grad}
    assert adapters == {torch.float32 if adapter_dtype == "fp32" else torch.bfloat16}
    built = sum(p.numel() * p.element_size() for p in model.parameters())
    setup = TrainingSetup(precision="bf16-true")
    assert analytic.zero_states(spec, setup, combo, storage(setup.precision, combo)).weights == built


def test_fp32_adapters_cost_their_inputs_cast_up_in_both_estimators():
    """Each wrapped linear casts its bf16 input to fp32 for lora_A, which saves it: fp32 adapters hold more
    activations than 16-bit ones, by the same amount in the formulas and in the trace."""
    spec, hw = load_model("tiny-llama"), load_hardware("h100-80g")
    setup = TrainingSetup(seq_len=128, micro_batch=2, precision="bf16-true")
    by = {
        (d, m): estimate(spec, hw, setup, Combination(lora_r=8, adapter_dtype=d), m)
        for d in ("fp32", "base")
        for m in ("analytic", "traced")
    }
    for m in ("analytic", "traced"):  # the casts saved for backward: more activations with fp32 adapters
        assert by[("fp32", m)].breakdown.activations > by[("base", m)].breakdown.activations
    for d in ("fp32", "base"):
        assert by[(d, "analytic")].peak_bytes_per_gpu == pytest.approx(by[(d, "traced")].peak_bytes_per_gpu, rel=0.05)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (
            ["--quant", "nf4", "--precision", "bf16-mixed"],
            "--adapter-dtype=base needs a 16-bit base; --quant=nf4 keeps the adapters in fp32",
        ),
        (["--precision", "fp16-mixed"], "refuses to unscale"),
    ],
)
def test_base_adapters_where_they_cannot_train_are_one_line(flags, fragment):
    r = runner.invoke(app, ["estimate", "--lora-r", "8", "--adapter-dtype", "base", *flags])
    assert r.exit_code == 2 and fragment in r.output and "Traceback" not in r.output, r.output


def test_a_plan_with_base_adapters_exports_them_and_says_trl_cannot(tmp_path):
    folder = tmp_path / "x"
    args = ["plan", "--method", "analytic", "--model", "llama-2-7b", "--gpu", "rtx4090", "--quant", "none"]
    r = runner.invoke(app, [*args, "--adapter-dtype", "base", "--export", str(folder)])
    assert r.exit_code == 0, r.output
    run = json.loads((folder / "run.json").read_text())
    assert run["combination"]["lora_r"] and run["combination"]["adapter_dtype"] == "base"
    text = (folder / "sft_config.yaml").read_text()
    assert "autocast_adapter_dtype=False" in text and yaml.safe_load(text)["use_peft"]


def test_fsdp2_under_bf16_mixed_is_traced_as_its_ranks_compute():
    """MixedPrecisionPolicy runs no autocast: no autocast weight cache to hold every layer's bf16 copy under GC
    (traced on the Trainer's autocast step, 27.1 GiB against the formulas' 15.5 GiB)."""
    spec, hw = load_model("llama-2-7b"), load_hardware("a100-80g")
    setup = TrainingSetup(precision="bf16-mixed", gpus_per_node=8)
    combo = Combination(fsdp="full", gc=True)
    a, t = (estimate(spec, hw, setup, combo, m) for m in ("analytic", "traced"))
    assert t.method.value == "traced"
    assert t.device_bytes_per_gpu == pytest.approx(a.device_bytes_per_gpu, rel=0.05)
