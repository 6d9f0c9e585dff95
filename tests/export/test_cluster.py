"""`ftopt plan --nodes 2 --export`: the Slurm script run under a stand-in `srun` (one task per node, as Slurm
starts them) reaches `ftopt train`'s per-node mode with each node's rank and the first host as master; the host
file parses with DeepSpeed's own parser; `plan` needs no host file to plan several nodes."""

import json
import os
import subprocess

from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()

FAKE_SRUN = """#!/bin/bash
# stand-in for Slurm's srun: one task per node, each with its SLURM_NODEID (sequential here)
for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "${@: -3}" || exit $?; done
"""
FAKE_SCONTROL = """#!/bin/bash
printf 'gpu-a\\ngpu-b\\n'
"""
FAKE_FTOPT = """#!/bin/bash
echo "$*" >> "$CALLS"
"""


def _plan(tmp_path, *flags):
    r = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--gpu", "h100-80g", "--gpus", "8", "--seq-len", "2048",
                            "--nodes", "2", "--json", *flags])  # fmt: skip
    assert r.exit_code == 0, r.output
    return r


def test_two_nodes_are_planned_without_a_host_file_and_pay_for_inter_node_traffic(tmp_path):
    def estimate(nodes):
        r = runner.invoke(app, ["estimate", "--model", "llama-2-7b", "--gpu", "h100-80g", "--gpus", "8", "--nodes",
                                str(nodes), "--zero", "3", "--lora-r", "0", "--seq-len", "2048", "--json"])  # fmt: skip
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    one, two = estimate(1), estimate(2)
    # ZeRO-3's gathers cross the slower inter-node links (bandwidth per GPU): more communication time per step
    assert two["comm_seconds"] > 2 * one["comm_seconds"] and two["step_seconds"] > one["step_seconds"]
    assert json.loads(_plan(tmp_path).stdout)["run"]["setup"]["nodes"] == 2


def test_slurm_script_starts_every_node_in_per_node_mode(tmp_path):
    folder = tmp_path / "export"
    _plan(tmp_path, "--export", str(folder))
    run = json.loads((folder / "run.json").read_text())
    assert run["setup"]["nodes"] == 2 and run["setup"]["gpus_per_node"] == 8
    from deepspeed.launcher.runner import _parse_hostfile

    hosts = _parse_hostfile((folder / "hostfile").read_text().splitlines())
    assert list(hosts.values()) == [8, 8]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("ftopt", FAKE_FTOPT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_SUBMIT_DIR": str(folder)}  # fmt: skip
    # a planned preset has no weights and a plan names no data: the job stops at once until they are given
    r = subprocess.run(["bash", str(folder / "slurm.sbatch")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "FTOPT_MODEL" in r.stderr and not calls.exists()
    env = {**env, "FTOPT_MODEL": "meta-llama/Llama-2-7b-hf", "FTOPT_DATA": "data/train.jsonl"}
    subprocess.run(["bash", str(folder / "slurm.sbatch")], env=env, check=True, timeout=60)
    lines = calls.read_text().splitlines()
    assert lines == [
        f"train --plan run.json --model meta-llama/Llama-2-7b-hf --data data/train.jsonl --node-rank {k} "
        "--master-addr gpu-a --master-port 29500"
        for k in (0, 1)
    ]
    # launch.sh runs once per node: accelerate needs this node's rank and node 0's address, before the script's args
    launch = (folder / "launch.sh").read_text().splitlines()[-1]
    assert launch.index("--machine_rank") < launch.index(" -m ") and "--main_process_ip" in launch
    script = (folder / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script


def test_a_rerun_keeps_an_edited_slurm_script_and_host_file(tmp_path):
    """plan --export overwrote the templates a user edits (their partition, their host names) on every rerun."""
    folder = tmp_path / "export"
    _plan(tmp_path, "--export", str(folder))
    script = folder / "slurm.sbatch"
    generated = script.read_text()
    _plan(tmp_path, "--export", str(folder))  # unedited: replaced in place, no .new
    assert script.read_text() == generated and not (folder / "slurm.sbatch.new").exists()
    script.write_text(generated.replace("#SBATCH --exclusive", "#SBATCH --exclusive\n#SBATCH --partition=gpu"))
    (folder / "hostfile").write_text("gpu-a slots=8\ngpu-b slots=8\n")
    r = _plan(tmp_path, "--export", str(folder))
    assert "#SBATCH --partition=gpu" in script.read_text() and "gpu-a" in (folder / "hostfile").read_text()
    assert (folder / "slurm.sbatch.new").read_text() == generated and (folder / "hostfile.new").exists()
    assert "slurm.sbatch.new" in r.output
