"""DoRA and rsLoRA run through PEFT in `ftopt train` on the CPU, and the saved adapter says so."""

import json


def test_cli_train_runs_dora_with_rslora_and_the_loss_falls(tmp_path):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    out = tmp_path / "d"
    args = ["train", "--out", str(out), "--json", "--max-steps", "12", "--lora-r", "8", "--dora", "--rslora"]
    r = CliRunner().invoke(app, [*args, "--lora-targets", "all-linear", "--lr", "1e-2"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["combination"]["dora"] and m["combination"]["rslora"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["use_dora"] and adapter["use_rslora"]
    assert sorted(adapter["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    measured = m["measured"]
    assert measured["final_loss"] < measured["first_loss"] - 0.3, measured
