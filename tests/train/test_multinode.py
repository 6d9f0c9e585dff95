"""Several nodes on one machine: two `ftopt train` processes joined over 127.0.0.1 (per-node mode, each with its own
output folder, as nodes without a shared filesystem), and the launcher's ends: a failing rank named, OOM classified,
a crash after a rank finished only a warning."""

import json
import os
import subprocess
import sys

import pytest

from ftopt.train import ranks
from ftopt.train.engine import _judge

from .conftest import ftopt_train, shared_run_args

RUN = ["--max-steps", "4", "--save-steps", "2", "--lora-r", "0", "--eval-max-examples", "0", "--json"]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]


def _two_nodes(tmp_path, zero, *extra):
    """Node 0 and node 1 of one run, each with its own folder; returns both folders after both exited 0."""
    port = str(ranks.free_port())
    outs = [tmp_path / f"node{k}" for k in (0, 1)]
    procs = [
        ftopt_train("--out", str(outs[k]), "--zero", str(zero), "--gpus", "1", "--nodes", "2", "--node-rank", str(k),
                    "--master-addr", "127.0.0.1", "--master-port", port, *shared_run_args(zero), *extra)
        for k in (0, 1)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_two_nodes_over_loopback_train_like_one_node_and_resume(tmp_path, zero_run, zero):
    n0, n1 = _two_nodes(tmp_path, zero)
    full = losses(n0)
    one = zero_run(zero)  # the reference: one node, two ranks (ZeRO-3 initialises the model partitioned)
    assert "step 4/4: loss" in one.stderr  # rank 0's progress reached the console
    assert full == pytest.approx(losses(one.out), rel=1e-4)  # same world size, same data shards: same losses
    assert json.loads((n0 / "metrics.json").read_text())["world_size"] == 2
    assert not (n1 / "metrics.json").exists()  # outputs are rank 0's; node 1 keeps its own checkpoints
    assert (n1 / "checkpoint-2" / "latest").exists() and (n1 / "logs" / "rank1.log").exists()
    if zero == 3:  # a crash after step 2's checkpoint: both nodes resume from it and redo steps 3-4
        import shutil

        for n in (n0, n1):
            shutil.rmtree(n / "checkpoint-4")
        (n0 / "metrics.json").unlink()  # the crash came before the end
        _two_nodes(tmp_path, zero, "--resume")
        assert losses(n0) == pytest.approx(full, rel=1e-5)
        assert "resuming from" in (n0 / "logs" / "rank0.log").read_text()
        # resuming the finished run trains nothing on either node: node 0's rank 0 tells node 1, which cannot see
        # node 0's metrics.json (it waited for a partner forever before)
        _two_nodes(tmp_path, zero, "--resume")
        assert "is complete; nothing to train" in (n0 / "logs" / "rank0.log").read_text()
        assert losses(n0) == pytest.approx(full, rel=1e-5)


@pytest.mark.slow
def test_oom_on_rank_1_is_named_and_classified(tmp_path):
    env = {**os.environ, "FTOPT_INJECT_FAILURE": "oom@1"}
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "ftopt", "train", "--out", str(out), "--zero", "2", "--gpus", "2", *RUN],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 2
    assert "Rank 1 ran out of memory" in p.stderr and "CUDA out of memory" in p.stderr, p.stderr[-2000:]
    assert "rank1.log" in p.stderr


def test_a_crash_after_a_rank_finished_is_a_warning(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rank0.log").write_text("step 4/4\n" + ranks.FINISHED.format(rank=0) + "\n")
    (logs / "rank1.log").write_text(ranks.FINISHED.format(rank=1) + "\nterminate called without an active exception\n")
    _judge({0: 0, 1: -6}, logs)
    assert "warning: rank 1 exited with -6" in capsys.readouterr().err


def test_the_first_rank_that_failed_by_itself_is_named(tmp_path):
    from ftopt.spec.errors import FtoptError

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rank0.log").write_text("Traceback\n  File x\nRuntimeError: Connection reset by peer\n")
    (logs / "rank1.log").write_text("Traceback\nValueError: bad batch\nsome trailing line\n")
    with pytest.raises(FtoptError, match=r"Rank 1 failed \(exit 1\).*ValueError: bad batch"):
        _judge({0: -15, 1: 1}, logs)


def test_rendezvous_environment_and_rules():
    r = ranks.Rendezvous(nodes=2, node_rank=1, procs_per_node=4, master_addr="10.0.0.1", master_port=1234)
    env = r.env(2)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("6", "2", "8", "10.0.0.1")
    with pytest.raises(ValueError, match="--node-rank 2 is not below --nodes 2"):
        ranks.Rendezvous(nodes=2, node_rank=2)
    assert ranks.decode_arg(ranks.encode_arg({"a": "x y'\""})) == {"a": "x y'\""}


def _train_cli(tmp_path, *args):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    return CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--max-steps", "1", *args])


def test_several_nodes_need_a_host_file_or_a_node_rank(tmp_path):
    r = _train_cli(tmp_path, "--nodes", "2")
    assert r.exit_code == 2 and "--nodes 2 needs --hostfile FILE" in r.output and "--node-rank K" in r.output
    r = _train_cli(tmp_path, "--nodes", "2", "--node-rank", "1")
    assert r.exit_code == 2 and "--node-rank 1 needs --master-addr" in r.output
    r = _train_cli(tmp_path, "--nodes", "2", "--node-rank", "2", "--master-addr", "h")
    assert r.exit_code == 2 and "--node-rank 2 is not below --nodes 2" in r.output
    r = _train_cli(tmp_path, "--nodes", "2", "--node-rank", "1", "--master-addr", "bad host!")
    assert r.exit_code == 2 and "--master-addr bad host! cannot be resolved" in r.output  # it waited 30 minutes
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    r = _train_cli(tmp_path, "--hostfile", str(hosts))  # it trained on one node, the host file ignored
    assert r.exit_code == 2 and "give --nodes N as well" in r.output
    assert not (tmp_path / "run").exists()


def test_a_bad_host_file_is_refused_before_anything_starts(tmp_path, capfd):
    bad = tmp_path / "hosts"
    bad.write_text("node-a slots=1\nnode-b  gpus=1\n")
    r = _train_cli(tmp_path, "--nodes", "2", "--hostfile", str(bad))
    assert r.exit_code == 2 and f"--hostfile {bad} is not a DeepSpeed host file" in r.output, r.output
    assert "Bad hostfile text" not in r.output + "".join(capfd.readouterr())  # one line: DeepSpeed's log is quiet
    r = _train_cli(tmp_path, "--nodes", "2", "--hostfile", str(tmp_path / "missing"))
    assert r.exit_code == 2 and "cannot be read" in r.output
    bad.write_text("node-a slots=1\n")
    r = _train_cli(tmp_path, "--nodes", "2", "--hostfile", str(bad))
    assert r.exit_code == 2 and "lists 1 host(s); --nodes 2 needs 2" in r.output
    assert not (tmp_path / "run").exists()  # nothing claimed, nothing started


def test_the_token_is_never_forwarded(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    from ftopt.train.hostfile import env_file_lines

    names = [line.split("=", 1)[0] for line in env_file_lines(os.environ)[0]]
    assert "HF_ENDPOINT" in names and "FTOPT_CACHE" in names and "HF_TOKEN" not in names


@pytest.mark.slow
@pytest.mark.parametrize("engine", [("--zero", "2"), ("--fsdp", "full")], ids=["zero2", "fsdp2"])
def test_ctrl_c_stops_every_rank_at_a_checkpoint(tmp_path, engine):
    """The Trainer worker and the FSDP2 worker (ftopt.train.fsdp_loop) stop alike. The signal goes once rank 0 has
    logged its first steps (the ranks are inside the training loop), in a run too long for any machine to finish
    first: the test waits for an event, not for a time."""
    import signal
    import time

    out = tmp_path / "run"
    p = ftopt_train("--out", str(out), *engine, "--gpus", "2", "--max-steps", str(10**5), "--save-steps", str(10**5),
               "--eval-max-examples", "0")  # fmt: skip
    steps = out / "steps.jsonl"  # rank 0 appends one line per step
    deadline = time.monotonic() + 600  # a bound for a broken run only
    try:
        while not (steps.exists() and len(steps.read_text().splitlines()) >= 2) and p.poll() is None:
            assert time.monotonic() < deadline, "no training step within 600 s"
            time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:  # a failed wait: the launcher forwards SIGTERM to its ranks
            p.terminate()
            p.wait(120)
    assert p.returncode == 130, err.decode()[-3000:]
    assert f"interrupted: the last checkpoint in {out} is intact; continue with --resume" in err.decode()
    logs = out / "logs"
    assert "Traceback" not in (logs / "rank0.log").read_text() + (logs / "rank1.log").read_text()
    assert [c.name for c in out.glob("checkpoint-*")]  # the ranks agreed on one step and saved it
