"""Runs that several tests read, each trained once per test session.

A two-process ZeRO run costs three interpreter starts (the launcher and two ranks) and a DeepSpeed engine per rank,
so the tests that only read such a run's outputs share one: the ZeRO-2 run is the one-node reference of the
two-node test, the metrics test's run, the `--json` stdout test's process and the optimizer-offload test's run; the
ZeRO-3 LoRA run is the two-node test's reference and the saved-base test's run. Under pytest-xdist the run is
shared by the workers too: the first to need it trains it under a file lock in the session's common folder, the
other waits for the lock and reads it (pytest-xdist's documented pattern for a session fixture that runs once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def shared_run_args(zero: int) -> list[str]:
    """The flags of the shared ZeRO-`zero` run after --zero/--gpus; the two-node test trains with the same ones, so
    both see the same data shards and must report the same losses. ZeRO-2 offloads the optimizer (DeepSpeedCPUAdam
    runs the step on both sides of the two-node test too); ZeRO-3 trains LoRA, whose saved base is the part only
    ZeRO-3 must gather from both ranks' partitions. Plain ZeRO-2 trains in the host-file and Ctrl-C tests."""
    engine = ["--lora-r", "8"] if zero == 3 else ["--lora-r", "0", "--offload", "optimizer"]
    return ["--max-steps", "4", "--save-steps", "2", *engine, "--eval-max-examples", "4", "--json"]


def ftopt_train(*args: str) -> subprocess.Popen:
    """A real `ftopt train` process (stdout and stderr apart, as a user sees them)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "ftopt", "train", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def rank_logs(out: Path) -> str:
    """The ends of a launched run's rank logs (ftopt.train.ranks.LOG_DIR), for a failure's message."""
    return "".join(p.read_text()[-3000:] for p in sorted((out / "logs").glob("rank*.log")))


@dataclass(frozen=True)
class SharedRun:
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def zero_run(tmp_path_factory, worker_id):
    """zero_run(stage): the one-node, two-rank ZeRO run of `shared_run_args(stage)`, trained on first use."""
    from filelock import FileLock

    # the folder every xdist worker of this session shares (each worker's basetemp is one level below it)
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent

    def get(zero: int) -> SharedRun:
        base = root / f"shared-zero{zero}"
        with FileLock(f"{base}.lock"):
            if not (base / "done").exists():
                out = base / "run"
                p = ftopt_train("--out", str(out), "--zero", str(zero), "--gpus", "2", *shared_run_args(zero))
                stdout, stderr = p.communicate(timeout=900)
                assert p.returncode == 0, stderr.decode()[-3000:] + rank_logs(out)
                (base / "stdout").write_bytes(stdout)
                (base / "stderr").write_bytes(stderr)
                (base / "done").touch()
        return SharedRun(base / "run", (base / "stdout").read_text(), (base / "stderr").read_text())

    return get
