"""`ftopt plan --export`: each file loads with its own library's config class."""

import json
import shlex

import pytest
import yaml
from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()


def export(tmp_path, *flags):
    folder = tmp_path / "export"
    model = [] if "--model" in flags else ["--model", "llama-2-7b"]
    r = runner.invoke(app, ["plan", "--method", "analytic", *model, "--export", str(folder), *flags])
    assert r.exit_code == 0, r.output
    return folder


def test_deepspeed_config_loads_in_deepspeed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import deepspeed.runtime.config as dsc
    from deepspeed.runtime.config import DeepSpeedConfig

    # DeepSpeedConfig reads the world size from torch.distributed: stand in for the planned 8 ranks
    monkeypatch.setattr(dsc, "dist", SimpleNamespace(get_rank=lambda: 0, get_world_size=lambda *a: 8))
    folder = export(
        tmp_path, "--gpu", "a100-80g", "--gpus", "8", "--full-only", "--seq-len", "2048", "--engine", "zero"
    )
    ds = json.loads((folder / "ds_config.json").read_text())
    assert "auto" not in json.dumps(ds)  # resolved: DeepSpeed alone accepts it
    cfg = DeepSpeedConfig(str(folder / "ds_config.json"))  # validates batch sizes against the world size
    assert cfg.zero_optimization_stage == ds["zero_optimization"]["stage"] >= 1
    assert cfg.train_batch_size == 8 * cfg.train_micro_batch_size_per_gpu * cfg.gradient_accumulation_steps


def test_trl_config_parses_with_trl_and_launch_names_it(tmp_path, monkeypatch):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    folder = export(
        tmp_path, "--gpu", "a100-80g", "--gpus", "8", "--full-only", "--seq-len", "2048", "--engine", "zero"
    )
    monkeypatch.chdir(folder)  # where launch.sh runs it: the deepspeed path is relative to the folder
    doc = yaml.safe_load((folder / "sft_config.yaml").read_text())
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    script, sft, model, _ = parser.parse_args_and_config(
        args=["--config", str(folder / "sft_config.yaml"), "--use_cpu", "true"]
    )
    assert model.model_name_or_path == "REPLACE-WITH-THE-HUB-ID-OF-llama-2-7b" and sft.max_length == 2048
    assert sft.per_device_train_batch_size == doc["per_device_train_batch_size"]
    assert sft.deepspeed == "ds_config.json"  # relative to the folder launch.sh runs from: the folder can move
    launch = (folder / "launch.sh").read_text().splitlines()[-1]
    argv = shlex.split(launch.removeprefix("exec "))
    assert argv[:5] == ["accelerate", "launch", "--num_processes", "8", "--num_machines"]
    assert argv[-5:] == ["-m", "trl.scripts.sft", "--config", "sft_config.yaml", "$@"] and "--use_deepspeed" in argv


def test_lora_run_exports_peft_fields_and_no_deepspeed(tmp_path):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    # the study's option space (16-bit base, 32-bit AdamW): quantized bases would change the recommendation
    folder = export(tmp_path, "--gpus", "1", "--gpu", "rtx4090", "--quant", "none", "--optim", "adamw")
    doc = yaml.safe_load((folder / "sft_config.yaml").read_text())
    assert doc["use_peft"] and doc["lora_r"] == 16 and not (folder / "ds_config.json").exists()
    assert doc["gradient_checkpointing"]  # 7B on one 24 GB GPU needs LoRA + GC (the study's finding)
    _, sft, model, _ = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(
        args=["--config", str(folder / "sft_config.yaml"), "--use_cpu", "true"]
    )
    assert model.use_peft and model.lora_r == 16 and sft.gradient_checkpointing
    assert model.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # what the plan estimated
    assert model.dtype == "bfloat16"  # the frozen base in 16 bits, as the plan stores it


def _parse_trl(folder):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(
        args=["--config", str(folder / "sft_config.yaml"), "--use_cpu", "true"]
    )


def test_qlora_run_exports_ftopt_quantization_optimizer_and_lora(tmp_path):
    """TRL builds, from the exported config, the BitsAndBytesConfig, optimizer and LoRA that ftopt's run uses."""
    import torch
    from trl import get_peft_config, get_quantization_config

    from ftopt.model.quantize import bnb_config
    from ftopt.spec import Combination, Optim, Precision, Quant

    folder = export(tmp_path, "--gpus", "1", "--gpu", "rtx4090", "--quant", "nf4", "--optim", "adamw-8bit")
    _, sft, model, _ = _parse_trl(folder)
    trl_bnb = get_quantization_config(model)
    ours = bnb_config(Combination(lora_r=16, quant=Quant.NF4), Precision.BF16_MIXED)
    assert trl_bnb is not None and trl_bnb.load_in_4bit and not trl_bnb.load_in_8bit
    assert trl_bnb.bnb_4bit_quant_type == ours.bnb_4bit_quant_type == "nf4"
    assert trl_bnb.bnb_4bit_use_double_quant and ours.bnb_4bit_use_double_quant
    assert trl_bnb.bnb_4bit_compute_dtype == ours.bnb_4bit_compute_dtype == torch.bfloat16
    assert sft.optim == Optim.ADAMW_8BIT.hf_name == "adamw_bnb_8bit"
    peft = get_peft_config(model)  # alpha = 2r and no dropout, as ftopt.model.build builds the adapters
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (16, 32, 0.0)


def test_int8_run_exports_load_in_8bit(tmp_path):
    from trl import get_quantization_config

    folder = export(tmp_path, "--gpus", "1", "--gpu", "rtx4090", "--quant", "int8", "--optim", "adamw")
    _, sft, model, _ = _parse_trl(folder)
    bnb = get_quantization_config(model)
    assert bnb.load_in_8bit and not bnb.load_in_4bit and sft.optim == "adamw_torch_fused"


def test_unquantized_export_keeps_trl_defaults_off_and_states_lora_dropout(tmp_path):
    folder = export(tmp_path, "--gpus", "1", "--gpu", "rtx4090", "--quant", "none", "--optim", "adamw")
    _, _, model, _ = _parse_trl(folder)
    assert not model.load_in_4bit and not model.load_in_8bit
    assert model.lora_dropout == 0.0 and model.lora_alpha == 2 * model.lora_r  # TRL's defaults are 0.05 and 32


def test_export_under_a_file_is_one_line_before_planning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--export", str(blocker / "sub")])
    assert r.exit_code == 2 and "--export" in r.output and "is a file" in r.output
    assert len(r.output.strip().splitlines()) == 1  # no plan table printed before the error


def test_exported_learning_rate_suits_method_and_size_with_its_source(tmp_path):
    """A 13B full fine-tune gets a learning rate for its size, not the tiny model's 0.001."""
    full13 = export(tmp_path / "a", "--model", "llama-2-13b", "--gpu", "a100-80g", "--gpus", "8", "--full-only")
    text = (full13 / "sft_config.yaml").read_text()
    assert yaml.safe_load(text)["learning_rate"] == 1e-5 and "Alpaca" in text.splitlines()[0]
    lora7 = export(tmp_path / "b", "--gpu", "rtx4090", "--quant", "none", "--optim", "adamw")
    text = (lora7 / "sft_config.yaml").read_text()
    assert yaml.safe_load(text)["learning_rate"] == 2e-4 and "QLoRA" in text.splitlines()[0]
    lora70 = export(tmp_path / "c", "--model", "llama-2-70b", "--gpu", "a100-80g")
    assert yaml.safe_load((lora70 / "sft_config.yaml").read_text())["learning_rate"] == 1e-4
    # ftopt's own run file (slurm.sbatch and `train --plan` run it) trains at the same rate
    for folder, lr in ((full13, 1e-5), (lora7, 2e-4), (lora70, 1e-4)):
        assert json.loads((folder / "run.json").read_text())["schedule"]["learning_rate"] == lr


def test_exported_folder_still_runs_after_it_is_copied(tmp_path):
    import shutil

    folder = export(
        tmp_path, "--gpu", "a100-80g", "--gpus", "8", "--full-only", "--seq-len", "2048", "--engine", "zero"
    )
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "cluster-copy")
    shutil.rmtree(folder)
    doc = yaml.safe_load((moved / "sft_config.yaml").read_text())
    assert not any(str(tmp_path) in str(v) for v in doc.values())  # no absolute path into the old folder
    assert (moved / doc["deepspeed"]).is_file()  # relative to the folder launch.sh cds into
    assert 'cd "$(dirname "$0")"' in (moved / "launch.sh").read_text()


@pytest.mark.parametrize(
    "precision, zero, dtype", [("bf16-mixed", 3, "bf16"), ("fp16-mixed", 2, "fp16"), ("fp32", 3, "fp32")]
)
def test_deepspeed_config_states_what_the_estimator_assumes(precision, zero, dtype):
    """The gradient-accumulation dtype and ZeRO-3's live-parameter limits were DeepSpeed's defaults, not
    set; they now come from the constants the estimator reads."""
    from ftopt.estimate import analytic
    from ftopt.planner import resolve
    from ftopt.spec import load_hardware
    from ftopt.spec.dsconfig import deepspeed_config
    from ftopt.spec.policy import storage

    hw = load_hardware("a100-80g")
    run = resolve.new_run(
        hw,
        resolve.model_ref("tiny-llama", weights=False),
        resolve.setup(hw, precision=precision, gpus_per_node=2),
        resolve.combination(zero=zero),
    )
    ds = deepspeed_config(run)
    assert ds["data_types"]["grad_accum_dtype"] == dtype
    assert {"fp32": 4, "bf16": 2, "fp16": 2}[dtype] == storage(run.setup.precision, run.combination).grad
    zero_cfg = ds["zero_optimization"]
    if zero == 3:
        assert zero_cfg["stage3_max_live_parameters"] == analytic.STAGE3_MAX_LIVE_PARAMETERS
        assert zero_cfg["stage3_max_reuse_distance"] == analytic.STAGE3_MAX_LIVE_PARAMETERS


def test_padded_max_batching_exports_the_padding_trl_applies(tmp_path):
    """`--batching padded-max` on plan reaches TRL as pad_to_multiple_of = max_length (every row padded to it, as
    `ftopt train` pads); the default (padded to the longest) leaves TRL's default, and packing its padding-free."""
    flags = ("--gpus", "1", "--gpu", "rtx4090", "--quant", "none", "--optim", "adamw", "--seq-len", "1024")
    _, sft, _, _ = _parse_trl(export(tmp_path / "max", *flags, "--batching", "padded-max"))
    assert sft.pad_to_multiple_of == sft.max_length == 1024 and not sft.packing
    _, sft, _, _ = _parse_trl(export(tmp_path / "longest", *flags))
    assert sft.pad_to_multiple_of is None and not sft.packing


@pytest.mark.parametrize(
    "flags,names",
    [
        (("--full-only", "--engine", "zero", "--gpus", "8"), ("sft_config.yaml", "launch.sh", "ds_config.json")),
        (("--full-only", "--engine", "fsdp", "--gpus", "8"), ("accelerate_fsdp2.yaml", "torchrun.sh")),
    ],
)
def test_a_rerun_keeps_the_files_a_user_edited(tmp_path, flags, names):
    """sft_config.yaml is exported with REPLACE-WITH placeholders for the model and the dataset: a second
    `plan --export` into the folder wrote over the filled-in file (and over edited launch and engine files)."""
    folder = export(tmp_path, *flags)
    generated = {n: (folder / n).read_text() for n in names}
    export(tmp_path, *flags)  # unedited: replaced in place, nothing beside them
    assert {n: (folder / n).read_text() for n in names} == generated
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".new")]
    for n in names:
        (folder / n).write_text(generated[n] + "\n# mine\n")
    export(tmp_path, *flags)
    for n in names:
        assert (folder / n).read_text().endswith("# mine\n"), n
        assert (folder / f"{n}.new").read_text() == generated[n], n
