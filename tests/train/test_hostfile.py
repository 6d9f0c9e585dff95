"""Hostfile mode end to end on one machine: `ftopt train --nodes 2 --hostfile FILE` through DeepSpeed's real pdsh
runner, with stand-in `ssh` and `pdsh` (tests/train/fake_cluster.py) that run each "node" as this machine after a
fresh ssh login. Both nodes share the output folder, as on a shared filesystem."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftopt.train import hostfile, ranks
from tests.train import fake_cluster

TOKEN = "hf_standin_secret_0123456789"
MLFLOW_SECRET = "mlflow_standin_secret_9876543210"
# A value with every character the node's shell would read inside the runner's double quotes
AWKWARD = 'a "b" $HOME `true` \\ c'
RUN = ["--zero", "2", "--gpus", "1", "--nodes", "2", "--lora-r", "0", "--eval-max-examples", "0", "--json"]


def _cluster(tmp_path, **extra_env):
    """A two-host file, the stand-ins first on PATH, the token set here; the env for `ftopt train`."""
    fake_cluster.write_stand_ins(tmp_path / "bin")
    records = tmp_path / "cluster"
    records.mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "FAKE_CLUSTER_DIR": str(records),
    }
    env.update({"HF_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "FTOPT_HOSTFILE_TEST": AWKWARD, **extra_env})
    env["MLFLOW_TRACKING_PASSWORD"] = MLFLOW_SECRET  # DeepSpeed's runner forwards MLFLOW_* to the nodes itself
    return hosts, records, env


def _train(out, hosts, env, *args):
    cmd = [sys.executable, "-m", "ftopt", "train", "--out", str(out), "--hostfile", str(hosts), *RUN, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _node_env(records: Path, host: str) -> dict[str, str]:
    lines = (records / f"env-{host}.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.slow
def test_two_nodes_through_deepspeeds_pdsh_runner(tmp_path):
    hosts, records, env = _cluster(tmp_path)
    out = tmp_path / "run"
    p = _train(out, hosts, env, "--max-steps", "3", "--save-steps", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 3/3: loss" in p.stderr and "node-" not in p.stderr  # rank 0's progress, without pdsh's prefix
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and sorted(r["rank"] for r in metrics["ranks"]) == [0, 1]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["loss"] > 0 for s in steps)  # once each: rank 0's
    # one shared folder: one checkpoint, holding each rank's own optimizer partition
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    log = (out / "launcher.log").read_text()
    assert "node-a: ftopt: rank 0 finished" in log and "node-b: ftopt: rank 1 finished" in log  # both nodes ran
    assert json.loads((records / "pdsh.json").read_text())["hosts"] == ["node-a", "node-b"]
    # what the run needs reached each node through the `.deepspeed_env` file, exactly; the token did not
    for host in ("node-a", "node-b"):
        node = _node_env(records, host)
        assert node["FTOPT_CACHE"] == os.environ["FTOPT_CACHE"] and node["HF_HUB_OFFLINE"] == "1"
        assert node["FTOPT_HOSTFILE_TEST"] == AWKWARD and node["OMP_NUM_THREADS"] == "1"
        assert "HF_TOKEN" not in node
    written = [p for p in [*out.rglob("*"), *records.rglob("*")] if p.is_file()]
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert not [p for p in out.rglob("*") if p.is_file() and MLFLOW_SECRET.encode() in p.read_bytes()]
    assert not list(out.rglob(".deepspeed_env")) and not (out / ".ftopt-shared-check").exists()


@pytest.mark.slow
def test_an_out_of_memory_rank_on_another_node_is_named(tmp_path):
    hosts, records, env = _cluster(tmp_path, FTOPT_INJECT_FAILURE="oom@1")  # travels like any FTOPT_ variable
    p = _train(tmp_path / "run", hosts, env, "--max-steps", "1")
    assert p.returncode == 2
    assert "Rank 1 ran out of memory" in p.stderr and "CUDA out of memory" in p.stderr, p.stderr[-2000:]
    assert "launcher.log" in p.stderr


def test_values_reach_the_node_shell_unchanged():
    """A `.deepspeed_env` line through DeepSpeed's own quoting (MultiNodeRunner.add_export) and a shell."""
    from deepspeed.launcher.multinode_runner import MultiNodeRunner

    env = {"FTOPT_X": AWKWARD, "HF_HOME": "/data/my models", "PATH": "/bin", "HF_TOKEN": TOKEN, "HF_BAD": " x\n"}
    env |= {"OMP_NUM_THREADS": "2", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    lines, dropped = hostfile.env_file_lines(env)
    assert dropped == ["HF_BAD"] and TOKEN not in "".join(lines)
    exports = {}
    for line in lines:
        key, val = line.split("=", maxsplit=1)  # as runner.main reads the file
        MultiNodeRunner.add_export(type("R", (), {"exports": exports})(), key, val)
    script = "".join(f"export {k}={v}; " for k, v in exports.items())
    script += "; ".join(f"printf '%s\\0' \"${k}\"" for k in exports)
    got = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env={}).stdout.split("\0")[:-1]
    assert dict(zip(exports, got)) == {
        k: env[k] for k in ("FTOPT_X", "HF_HOME", "OMP_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF")
    }


def test_the_failed_rank_is_read_from_a_shared_log():
    log = "node-a: [rank0]: RuntimeError: Connection closed by peer\n"
    log += "node-b: ftopt: rank 1 failed: OutOfMemoryError: CUDA out of memory\n"
    log += "node-a: ftopt: rank 0 failed: RuntimeError: Connection closed by peer\n"
    assert ranks.failures(log) == {
        1: "OutOfMemoryError: CUDA out of memory",
        0: "RuntimeError: Connection closed by peer",
    }


def test_hostfile_mode_without_pdsh_is_refused_before_anything_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--nodes", "2", "--hostfile", str(hosts)])
    assert r.exit_code == 2 and "this host lacks pdsh and ssh" in r.output, r.output
    assert not (tmp_path / "run").exists()
