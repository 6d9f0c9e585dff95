"""`plan --export` carries DoRA, rsLoRA, adapter dropout, all-linear and the QLoRA recipe into the TRL config."""

import yaml

from tests.export.test_configs import _parse_trl, export


def test_dora_rslora_all_linear_export_parses_into_peft_config(tmp_path):
    from trl import get_peft_config

    flags = ("--gpus", "1", "--gpu", "rtx4090", "--quant", "none", "--optim", "adamw")
    folder = export(tmp_path, *flags, "--dora", "--rslora", "--lora-targets", "all-linear")
    _, _, model, _ = _parse_trl(folder)
    peft = get_peft_config(model)
    assert peft.use_dora and peft.use_rslora
    assert set(peft.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_bf16_true_qlora_export_states_the_recipe_difference(tmp_path):
    folder = export(
        tmp_path,
        *("--gpus", "1", "--gpu", "rtx4090", "--precision", "bf16-true", "--quant", "nf4"),
        *("--optim", "adamw", "--qlora-recipe", "litgpt"),
    )
    text = (folder / "sft_config.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["load_in_4bit"] and doc["dtype"] == "bfloat16" and not doc["bf16"]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any("QLoRA recipe litgpt" in line for line in comments)
    assert any("cannot quantize the LM head" in line for line in comments)  # llama-2-7b's head is untied
    run = yaml.safe_load((folder / "run.json").read_text())
    assert run["combination"]["qlora_recipe"] == "litgpt" and run["combination"]["quant"] == "nf4"


def test_lora_dropout_export_is_the_dropout_trl_builds(tmp_path):
    """TRL's ModelConfig defaults lora_dropout to 0.05: the export states the planned value, which TRL's PEFT config
    then builds, and run.json carries it for `ftopt train --plan`."""
    import json

    from trl import get_peft_config

    flags = ("--gpus", "1", "--gpu", "rtx4090", "--quant", "none", "--optim", "adamw", "--lora-dropout", "0.1")
    folder = export(tmp_path, *flags)
    _, _, model, _ = _parse_trl(folder)
    assert get_peft_config(model).lora_dropout == 0.1
    assert json.loads((folder / "run.json").read_text())["combination"]["lora_dropout"] == 0.1
