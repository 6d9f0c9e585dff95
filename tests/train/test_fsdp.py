"""`ftopt train --fsdp` on two CPU processes (ftopt's launcher, gloo): FSDP2 with LoRA and full fine-tuning, loss going
down, a crash and a resume from the distributed checkpoint, metrics.json with prediction and measurement."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.results.rows import RunMetrics, read_metrics

runner = CliRunner()


def train(out, *args):
    return runner.invoke(app, ["train", "--out", str(out), "--json", "--eval-max-examples", "0", *args])


def steps(out):
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def check_metrics(out, label: str) -> RunMetrics:
    m = read_metrics(out / "metrics.json")  # the typed metrics.json report and calibration read
    assert m.label.startswith(label) and m.combination.fsdp.value in label.lower()
    assert [r["rank"] for r in m.ranks] == [0, 1] and all(r["engine"] == "fsdp2" for r in m.ranks)
    assert all(r["peak_allocated_bytes"] > 0 for r in m.ranks)
    assert m.measured.peak_bytes_per_gpu == max(r["peak_allocated_bytes"] for r in m.ranks)
    assert len(m.measured.step_times) == 4 and m.measured.first_loss > m.measured.final_loss
    for p in (m.predicted.analytic, m.predicted.traced):
        assert p.peak_bytes_per_gpu > 0
    return m


@pytest.mark.slow
def test_fsdp_full_lora_crash_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("--fsdp", "full", "--gpus", "2", "--lora-r", "8", "--max-steps", "4", "--save-steps", "2", "--lr", "3e-3")
    monkeypatch.setenv("FTOPT_INJECT_FAILURE", "step:3")
    r = train(out, *args)
    assert r.exit_code == 2 and "injected failure at step 3" in r.output, r.output
    assert (out / "checkpoint-2" / "trainer_state.json").exists() and not (out / "checkpoint-4").exists()
    monkeypatch.delenv("FTOPT_INJECT_FAILURE")
    r = train(out, *args, "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming from" in (out / "logs" / "rank0.log").read_text()
    s = steps(out)
    assert [x["step"] for x in s] == [1, 2, 3, 4]  # step 3 of the crashed run was dropped and redone
    assert s[-1]["loss"] < s[0]["loss"]
    check_metrics(out, "LoRA r8 + FSDP2-full")
    assert (out / "adapter_model.safetensors").exists() and (out / "base" / "model.safetensors").exists()
    r = train(out, *args, "--resume")  # finished: nothing is launched again
    assert r.exit_code == 0 and "is complete (4 steps)" in r.output, r.output


@pytest.mark.slow
def test_fsdp_grad_op_full_fine_tuning(tmp_path):
    out = tmp_path / "run"
    r = train(out, "--fsdp", "grad-op", "--gpus", "2", "--max-steps", "4", "--lr", "3e-3")
    assert r.exit_code == 0, r.output
    s = steps(out)
    assert len(s) == 4 and s[-1]["loss"] < s[0]["loss"]
    m = check_metrics(out, "full + FSDP2-grad-op")
    assert m.predicted.analytic.breakdown["engine_buffers"] > 0  # FSDP2's unsharded layers and root
    assert (out / "model.safetensors").exists()


def test_a_rank_reads_the_spec_from_the_launcher_or_from_exported_run_json(tmp_path):
    """ftopt's launcher hands each rank the spec itself; `plan --export`'s torchrun.sh hands it run.json."""
    from ftopt.planner import resolve
    from ftopt.spec import Combination, TrainingSetup, load_hardware
    from ftopt.train.fsdp_worker import spec_from_arg
    from ftopt.train.ranks import encode_arg

    setup = TrainingSetup(seq_len=64, micro_batch=2, gpus_per_node=2)
    run = resolve.new_run(
        load_hardware("cpu"), resolve.model_ref("tiny-llama", weights=False), setup, Combination(fsdp="full")
    )
    (tmp_path / "run.json").write_text(json.dumps(run.to_json()))
    assert spec_from_arg(str(tmp_path / "run.json")) == spec_from_arg(encode_arg(run.to_json())) == run
