"""DoRA, rsLoRA and adapter dropout run through PEFT in `ftopt train` on the CPU."""

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


def test_cli_train_lora_dropout_trains_through_dropout_layers(tmp_path, monkeypatch):
    """`ftopt train --lora-dropout 0.1`: every wrapped linear of the model the Trainer trains runs nn.Dropout(0.1)
    before its adapter, and in the training steps it zeroes about a tenth of the adapters' inputs."""
    import torch
    from typer.testing import CliRunner

    import ftopt.model.build as build
    from ftopt.cli.app import app

    real, wrapped, zeroed = build.build_model, [], []

    def record(mod, args, out):  # the share of the input the dropout zeroed, in training forwards
        if mod.training:
            zeroed.append(((out == 0).float().mean() - (args[0] == 0).float().mean()).item())

    def keep(*a, **k):  # the model the Trainer trains (the traced predictions build theirs on the meta device)
        model = real(*a, **k)
        if k.get("device") != "meta":
            wrapped.extend(m for m in model.modules() if hasattr(m, "lora_dropout") and "default" in m.lora_dropout)
            for m in wrapped:
                m.lora_dropout["default"].register_forward_hook(record)
        return model

    monkeypatch.setattr(build, "build_model", keep)
    out = tmp_path / "drop"
    args = ["train", "--out", str(out), "--json", "--max-steps", "4", "--lora-r", "8", "--lora-dropout", "0.1"]
    r = CliRunner().invoke(app, [*args, "--eval-max-examples", "0"])
    assert r.exit_code == 0, r.output
    dropouts = [m.lora_dropout["default"] for m in wrapped]
    assert dropouts and all(isinstance(d, torch.nn.Dropout) and d.p == 0.1 for d in dropouts)
    assert len(zeroed) >= 4 * len(wrapped)  # every wrapped linear, every step
    assert 0.07 < sum(zeroed) / len(zeroed) < 0.13, sum(zeroed) / len(zeroed)
    assert json.loads((out / "metrics.json").read_text())["combination"]["lora_dropout"] == 0.1
