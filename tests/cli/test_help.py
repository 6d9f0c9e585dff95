"""The commands' --help and flags: what the help states (real defaults, the files written) matches what runs, and
flags that would not be used as given are refused in one sentence."""

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from tests.cli.test_cli import PLAN_7B_NODE

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "args,said",
    [
        (("--lora-r", "0"), "--lora-r for the reference LoRA points must be positive, got 0."),
        (("--lora-r", "-8"), "--lora-r for the reference LoRA points must be positive, got -8."),
        (("--grid", "{grid}", "--lora-r", "4"), "--lora-r 4 sets the rank of the reference points, which --grid"),
        # every run trained --model's weights and the --random-init preset was dropped; train refuses the pair
        (("--model", "{base}", "--random-init", "tiny-llama"), "give either --model (weights) or --random-init"),
    ],
)
def test_bench_refuses_flags_it_would_not_use_as_given(tmp_path, args, said):
    """A flag bench would not use as given is refused before the sweep folder is made: --lora-r 0 would run every
    reference LoRA point as a full fine-tune, --lora-r beside --grid and --random-init beside --model would be
    ignored. (--run-timeout keeps the sweep short should a refusal go missing.)"""
    grid = tmp_path / "g.yaml"
    grid.write_text("grid:\n  lora_r: [0, 8]\n")
    from ftopt.presets import base_model_dir

    given = [a.format(grid=grid, base=base_model_dir()) for a in args]
    r = run("bench", "--out", str(tmp_path / "b"), "--max-steps", "1", "--run-timeout", "0.01", *given)
    assert r.exit_code == 2, r.output
    assert said in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()  # refused before the sweep folder is made


def test_demo_help_states_the_defaults_the_demo_uses():
    """demo --help states the production target and quality bar the demo runs with (DemoOptions), not report's
    defaults, which report --help keeps."""
    import typer

    from ftopt.sweep.demo_options import DEMO_QUALITY_TARGET, DemoOptions

    cmd = typer.main.get_command(app)
    demo = {p.name: p.help for p in cmd.commands["demo"].params}
    d = DemoOptions()
    assert f"[default: {d.target_model}]" in demo["target_model"]
    assert f"[default: {d.target_gpu}]" in demo["target_gpu"]
    assert f"[default: {d.retrains_per_year:g}]" in demo["retrains_per_year"]
    assert f"[default: {d.dataset_tokens:,}]" in demo["dataset_tokens"]
    assert f"[default: {DEMO_QUALITY_TARGET}]" in demo["quality_target"]
    report = {p.name: p.help for p in cmd.commands["report"].params}
    assert "[default: 1]" in report["retrains_per_year"] and "demo" not in report["retrains_per_year"]
    assert "[default: the PoC's]" in report["target_model"]


@pytest.mark.parametrize("engine", ["ddp", "zero", "fsdp"])
def test_plan_export_help_names_every_file_the_export_writes(tmp_path, engine):
    """--export's help names every file the export folder gets, for each engine (run.json, hostfile, slurm.sbatch;
    ds_config.json for ZeRO; accelerate_fsdp2.yaml and torchrun.sh for FSDP2)."""
    import typer

    params = {p.name: p for p in typer.main.get_command(app).commands["plan"].params}
    r = run(*PLAN_7B_NODE, "--model", "tiny-llama", "--engine", engine, "--export", str(tmp_path / "x"))
    assert r.exit_code == 0, r.output
    written = {p.name for p in (tmp_path / "x").iterdir() if not p.name.startswith(".")}
    assert written >= {
        "run.json",
        "launch.sh",
        {"ddp": "slurm.sbatch", "zero": "ds_config.json", "fsdp": "torchrun.sh"}[engine],
    }
    assert [name for name in written if name not in params["export"].help] == []


def test_train_and_bench_help_name_the_model_used_without_model_or_random_init():
    """Without --model or --random-init, train and bench train the built-in model from random weights: the help
    says which."""
    import typer

    from ftopt.spec.run import DEFAULT_MODEL, ModelRef

    assert ModelRef().ref == DEFAULT_MODEL
    cmd = typer.main.get_command(app)
    for name in ("train", "bench"):
        params = {p.name: p for p in cmd.commands[name].params}
        assert f"[default without --model: {DEFAULT_MODEL}, the built-in model]" in params["random_init"].help, name


def test_bench_max_steps_help_states_what_the_spec_accepts():
    """bench --max-steps -1 runs every epoch, as train's does, and its help says so."""
    import typer

    from ftopt.spec.run import Schedule

    Schedule(max_steps=-1)  # the value the help offers is one the run accepts
    params = {p.name: p for p in typer.main.get_command(app).commands["bench"].params}
    assert "-1 = run the epochs" in params["max_steps"].help
