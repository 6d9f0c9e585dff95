"""`ftopt train` end to end on the tiny built-in model: each optimization, loss goes down, adapters reload,
bad input, crash + resume, and ZeRO-2/3 with two CPU processes."""

import json
import os

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()


def train(tmp_path, *args, name="run"):
    out = tmp_path / name
    r = runner.invoke(app, ["train", "--out", str(out), "--json", *args])
    return r, out


def steps(out):
    return [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines()]


def test_default_run_learns_and_writes_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r, out = train(tmp_path, "--max-steps", "60", "--lr", "3e-3", "--report-to", "tensorboard")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema"] == "ftopt.metrics/4" and m["model"] == "tiny-llama"
    s = steps(out)
    assert len(s) == 60
    first = sum(x["loss"] for x in s[:5]) / 5
    last = sum(x["loss"] for x in s[-5:]) / 5
    assert last < 0.8 * first  # the loss clearly decreases
    assert m["measured"]["peak_bytes_per_gpu"] > 0 and m["measured"]["tokens_per_s"] > 0
    assert m["predicted"]["analytic"]["peak_bytes_per_gpu"] > 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    # --report-to tensorboard: the event file holds the losses steps.jsonl holds
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {out}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([x["loss"] for x in s], rel=1e-3)


@pytest.mark.parametrize(
    "flags",
    [
        ["--gc", "--attn", "eager"],
        ["--lora-r", "8", "--gc", "--attn", "eager"],
        ["--precision", "bf16-mixed", "--lora-r", "4"],
    ],
)
def test_each_optimization_runs(tmp_path, flags):
    r, out = train(tmp_path, "--max-steps", "6", *flags)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["combination"]["gc"] == ("--gc" in flags)


def test_lora_adapter_reloads_to_same_eval_loss(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftopt.model.build import hf_config
    from ftopt.spec import load_model
    from ftopt.spec.run import DataSpec
    from ftopt.train.data import default_tokenizer
    from ftopt.train.prepare import prepare

    r, out = train(tmp_path, "--max-steps", "20", "--lora-r", "8", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert (out / "adapter_model.safetensors").exists()
    m = json.loads((out / "metrics.json").read_text())
    # rebuild the same random base (same seed), attach the saved adapter, and score the same eval set
    spec = load_model("tiny-llama")
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_config(hf_config(spec, attn="sdpa"))
    model = PeftModel.from_pretrained(base, str(out)).eval()
    prep = prepare(DataSpec(), default_tokenizer(), 64, seed=3)
    ex = list(prep.eval_dataset)

    def eval_loss(model):
        with torch.no_grad():
            losses = [model(**prep.collator(ex[i : i + 8])).loss.item() for i in range(0, len(ex), 8)]
        return sum(losses) / len(losses)

    assert abs(eval_loss(model) - m["measured"]["eval_loss"]) < 1e-3
    # the run saved its random-init base beside the adapter: the standard PEFT loader needs nothing else
    from peft import AutoPeftModelForCausalLM

    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        (out / "base").resolve()
    )
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    assert abs(eval_loss(reloaded) - m["measured"]["eval_loss"]) < 1e-3


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--data", "/nonexistent.jsonl"], "does not exist"),
        (["--lora-r", "4", "--lora-targets", "qq_proj"], "candidates: q_proj"),
        (["--attn", "flash"], "flash"),
        (["--model", "some-org/some-model"], "not in the Hugging Face cache"),
        (["--gpu", "a100"], "Unknown GPU"),
        (["--max-steps", "0"], "--max-steps must be positive"),
        (["--precision", "fp16-mixed"], "fp16-mixed needs a CUDA GPU"),
        (["--lr-schedule", "zigzag"], "--lr-schedule"),
    ],
)
def test_bad_input(tmp_path, args, fragment):
    r, out = train(tmp_path, "--max-steps", "2", *args)
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output
    assert not (out / "steps.jsonl").exists()  # refused before any training


def test_a_folder_that_is_not_a_saved_dataset_is_refused_before_the_model_is_built(tmp_path):
    """Old: the datasets library's message, after the model line and with the output folder claimed."""
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    r, out = train(tmp_path, "--max-steps", "2", "--data", str(folder))
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        f"error: --data {folder} is a folder but not a saved dataset (neither dataset_info.json with state.json "
        "nor dataset_dict.json in it); give a .jsonl, .json, .csv or .parquet file, or a folder written by "
        "datasets' save_to_disk."
    ]
    assert not out.exists()  # no folder claimed


def test_a_precision_the_combination_cannot_run_is_refused_before_the_run_starts(tmp_path):
    r, out = train(tmp_path, "--max-steps", "2", "--lora-r", "8", "--quant", "nf4", "--qlora-recipe", "torchtune")
    assert r.exit_code == 2 and "needs --precision bf16-true, got fp32" in r.output, r.output
    assert not out.exists()  # refused with the flag checks: no folder claimed, no data or model loaded


def test_malformed_line_reports_line_number(tmp_path):
    d = tmp_path / "d.jsonl"
    d.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    r, _ = train(tmp_path, "--max-steps", "2", "--data", str(d))
    assert r.exit_code == 2 and "line 2" in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r, _ = train(ro, "--max-steps", "2")
    assert r.exit_code == 2 and "not writable" in r.output


def test_unwritable_output_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = runner.invoke(app, ["train", "--out", str(f / "sub"), "--max-steps", "2"])
    assert r.exit_code == 2 and f"{f} is a file" in r.output


def test_user_jsonl_and_resume_after_crash(tmp_path):
    from ftopt.planner import resolve
    from ftopt.spec import load_hardware
    from ftopt.train.data import default_examples
    from ftopt.train.outputs import prepare_output
    from ftopt.train.worker import run_worker

    d = tmp_path / "user.jsonl"
    d.write_text("\n".join(json.dumps(r) for r in default_examples(200, seed=5)))
    out = tmp_path / "crash"
    hw = load_hardware("cpu")
    spec = resolve.finish_run(
        resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw), resolve.combination()),
        data={"train": str(d)},
        schedule={"max_steps": 12, "save_steps": 4},
        output={"dir": str(out)},
    )
    prepare_output(spec)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_worker(spec, claim=False, fail_at_step=6)
    assert (out / "checkpoint-4" / "trainer_state.json").exists()
    r, _ = train(tmp_path, "--data", str(d), "--max-steps", "12", "--save-steps", "4", "--resume", name="crash")
    assert r.exit_code == 0, r.output
    s = steps(out)
    # the whole run, once: steps 5-6 ran before the crash and again after resuming at 4, recorded once
    assert [x["step"] for x in s] == list(range(1, 13))
    m = json.loads((out / "metrics.json").read_text())
    assert m["measured"]["steps"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_zero_with_two_cpu_processes(zero_run, zero):
    out = zero_run(zero).out
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["ranks"]) == 2
    assert all(x["peak_allocated_bytes"] > 0 for x in m["ranks"])
    assert m["measured"]["steps"] == 4 and m["measured"]["eval_loss"] is not None  # every rank evaluated
    # rank 0 traced the run (not a fallback to the formulas after its build waited on a ZeRO-3 collective)
    assert m["predicted"]["traced"]["method"] == "traced"
    if zero == 3:  # the random-init base is gathered from both ranks' partitions and reloads with the adapter
        _check_saved_base_reloads(out)


def _check_saved_base_reloads(out):
    import torch
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    saved = load_file(str(out / "base" / "model.safetensors"))
    expected = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out / "base")).state_dict()
    assert not [k for k in saved if "lora" in k]
    assert all(saved[k].shape == v.shape for k, v in expected.items() if k in saved)
    assert set(expected) - set(saved) <= {"lm_head.weight"}  # a tied head is stored once
    assert all(v.abs().sum() > 0 for v in saved.values())  # real values, not empty ZeRO-3 placeholders
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    assert torch.isfinite(loss)


def test_report_to_missing_tracker_is_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    r, _ = train(tmp_path, "--max-steps", "2", "--report-to", "wandb")
    assert r.exit_code == 2 and "needs the wandb package" in r.output and "Traceback" not in r.output


# ---- the run specification end to end, output folders, --json, time budget ---------------------------------
import subprocess
import sys


def _cli(*args, env=None):
    """A real `ftopt` process: stdout and exit code as a user sees them (CliRunner mixes the streams)."""
    return subprocess.run(
        [sys.executable, "-m", "ftopt", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_plan_out_then_train_plan_runs_the_plans_setup(tmp_path):
    plan = tmp_path / "plan.json"
    r = runner.invoke(
        app,
        [
            "plan",
            "--model",
            "tiny-llama",
            "--gpu",
            "cpu",
            "--seq-len",
            "32",
            "--micro-batch",
            "4",
            "--grad-accum",
            "2",
            "--out",
            str(plan),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    planned = json.loads(plan.read_text())["run"]
    r, out = train(tmp_path, "--plan", str(plan), "--max-steps", "2", "--eval-max-examples", "0")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["seq_len"], m["micro_batch"], m["grad_accum"], m["precision"]) == (32, 4, 2, "fp32")
    assert m["run"]["combination"] == planned["combination"] and m["run"]["setup"] == planned["setup"]
    # a flag that would change what the plan predicted is refused; the model may be overridden, with one line
    r, _ = train(tmp_path, "--plan", str(plan), "--seq-len", "64", name="clash")
    assert r.exit_code == 2 and "--seq-len would change" in r.output
    from importlib import resources

    small = json.loads(resources.files("ftopt.presets.models").joinpath("tiny-llama.json").read_text())
    cfg = tmp_path / "two-layer.json"
    cfg.write_text(json.dumps({**small, "num_hidden_layers": 2}))
    r, _ = train(
        tmp_path,
        "--plan",
        str(plan),
        "--random-init",
        str(cfg),
        "--max-steps",
        "1",
        "--eval-max-examples",
        "0",
        name="ovr",
    )
    assert r.exit_code == 0, r.output
    assert sum("overridden by" in line for line in r.output.splitlines()) == 1


def test_second_run_into_the_same_folder_is_refused(tmp_path):
    r, out = train(tmp_path, "--max-steps", "2", "--eval-max-examples", "0")
    assert r.exit_code == 0, r.output
    r, _ = train(tmp_path, "--max-steps", "3", "--lora-r", "4")
    assert r.exit_code == 2 and "already holds a run" in r.output
    r, _ = train(tmp_path, "--max-steps", "3", "--lora-r", "4", "--resume")
    assert r.exit_code == 2 and "holds a different run" in r.output and "lora_r" in r.output
    r, _ = train(tmp_path, "--max-steps", "2", "--lora-r", "4", "--overwrite", "--eval-max-examples", "0")
    assert r.exit_code == 0, r.output
    assert not (out / "model.safetensors").exists() and (out / "adapter_model.safetensors").exists()
    assert [x["step"] for x in steps(out)] == [1, 2]


def test_json_stdout_is_only_json_and_flash_on_cpu_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)  # an in-process run of this session may have set it
    p = _cli("train", "--out", str(tmp_path / "j"), "--max-steps", "2", "--eval-max-examples", "0", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["measured"]["steps"] == 2
    assert "USDT" not in p.stderr  # kineto's profiler_start/stop markers (ftopt.results.measure.KINETO_QUIET_LEVEL)
    assert "step 2/2: loss" in p.stderr  # the run's own progress still reaches stderr
    p = _cli("train", "--out", str(tmp_path / "f"), "--attn", "flash")
    assert p.returncode == 2  # not a segfault (139) after the message
    assert p.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in p.stderr


def test_max_hours_stops_cleanly_at_a_checkpoint(tmp_path):
    r, out = train(tmp_path, "--max-steps", "50", "--max-hours", "1e-9", "--eval-max-examples", "0")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["measured"]["stopped_by_time_budget"] and m["measured"]["steps"] == 1
    assert (out / "checkpoint-1" / "trainer_state.json").exists()


def test_fp16_mixed_loads_a_fp16_base():
    import torch

    from ftopt.model.build import model_dtype
    from ftopt.spec import Combination, Precision

    assert model_dtype(Precision.FP16_MIXED, Combination(lora_r=8)) == torch.float16
    assert model_dtype(Precision.BF16_MIXED, Combination(lora_r=8)) == torch.bfloat16
    assert model_dtype(Precision.FP16_MIXED, Combination(zero=2)) == torch.float16


def test_a_launched_run_has_no_wall_clock_limit(tmp_path, monkeypatch):
    from ftopt.train import ranks

    seen = {}

    class Launched(Exception):
        pass

    def fake_run(cmd, **kw):
        seen.update(kw)
        raise Launched

    monkeypatch.setattr(ranks.subprocess, "Popen", fake_run)  # the ranks are waited for without a time limit
    with pytest.raises(Launched):
        runner.invoke(
            app, ["train", "--out", str(tmp_path / "z"), "--zero", "2", "--gpus", "2"], catch_exceptions=False
        )
    assert "timeout" not in seen


@pytest.mark.slow
def test_zero2_json_stdout_parses(zero_run):
    run = zero_run(2)  # a real process with --json: its stdout is the metrics, gathered over torch.distributed
    m = json.loads(run.stdout)
    assert m["world_size"] == 2 and [r["rank"] for r in m["ranks"]] == [0, 1]
    assert m == json.loads((run.out / "metrics.json").read_text())
    assert not list(run.out.glob("metrics.rank*.json"))  # gathered over torch.distributed, not files


@pytest.mark.slow
def test_zero2_with_optimizer_offload_on_two_cpu_processes(zero_run):
    m = json.loads((zero_run(2).out / "metrics.json").read_text())  # the shared ZeRO-2 run offloads the optimizer
    assert {x["optimizer"] for x in m["ranks"]} == {"DeepSpeedCPUAdam"}  # the Adam step ran on the CPU side
    assert m["measured"]["steps"] == 4 and m["combination"]["offload"] == "optimizer"
