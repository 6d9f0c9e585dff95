"""`ftopt train`: Hugging Face Trainer + PEFT + DeepSpeed with one RunSpec, measured.

One process runs in-process; ZeRO or several GPUs go through the DeepSpeed launcher (`deepspeed --num_gpus N`),
each rank running `ftopt.train.worker` on the same resolved_config.json. On a CPU the ranks use gloo, on GPUs NCCL.
A run has no wall-clock limit (fine-tunes take hours or days); a lost rank fails it through the collective timeout
(dsconfig.RANK_TIMEOUT_SECONDS), and `--max-hours` stops it cleanly at a checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ftopt.errors import FtoptError
from ftopt.spec import RunSpec
from ftopt.train.allocator import allocator_env
from ftopt.train.outputs import CONFIG_NAME, finished_run, prepare_output
from ftopt.train.preflight import check_devices


def launch(spec: RunSpec) -> dict:
    """Check, claim the output folder, run; returns metrics.json's content."""
    check_devices(spec)
    done = finished_run(spec)
    if done is not None:
        steps = (done.get("measured") or {}).get("steps")
        print(f"--resume: the run in {spec.output_dir} is complete ({steps} steps); nothing to train.", file=sys.stderr)
        return done
    if spec.combination.uses_fsdp:  # PyTorch FSDP2 under torchrun (ftopt.train.fsdp_engine)
        from ftopt.train.fsdp_engine import launch_fsdp

        prepare_output(spec)
        return launch_fsdp(spec)
    if spec.uses_launcher and importlib.util.find_spec("deepspeed") is None:
        raise FtoptError("ZeRO and multi-GPU runs need DeepSpeed: pip install deepspeed.")
    prepare_output(spec)
    alloc = allocator_env(os.environ, on_cuda=not spec.hardware.is_cpu)
    if not spec.uses_launcher:
        from ftopt.train.worker import run_worker

        # read by torch when CUDA first allocates, which happens after this (the worker builds the model)
        os.environ.update(alloc)
        return run_worker(spec)
    return _launch_ranks(spec, alloc)


def _launch_ranks(spec: RunSpec, alloc: dict[str, str]) -> dict:
    from ftopt.train import worker

    out = spec.output_dir
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(spec.setup.gpus_per_node)]
    if spec.setup.nodes > 1:
        cmd += ["--num_nodes", str(spec.setup.nodes), "--hostfile", str(spec.hostfile)]
    cmd += ["--master_port", str(_free_port()), worker.__file__, str(out / CONFIG_NAME)]
    env = {**os.environ, **alloc, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    if spec.hardware.is_cpu and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the cores: one thread pool per rank sized to its share avoids oversubscription
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.setup.gpus_per_node))
    log_path = out / "launcher.log"
    with log_path.open("w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    metrics_path = out / "metrics.json"
    if proc.returncode != 0:
        raise FtoptError(
            f"A rank failed (exit {proc.returncode}) and all ranks were stopped: "
            f"{error_tail(log_path)} (log: {log_path})."
        )
    if not metrics_path.exists():
        raise FtoptError(f"The run ended without metrics; see {log_path}.")
    return json.loads(metrics_path.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_tail(log_path: Path) -> str:
    """The most telling line of a failed run's log: the last exception line."""
    try:
        return last_error_line(log_path.read_text(errors="replace"))
    except OSError:
        return "no log"


def last_error_line(text: str) -> str:
    """The last line of `text` that reads as an error (not a traceback's 'File ...' line), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if ("Error" in line or "error:" in line) and not line.startswith("File "):
            return line[:300]
    return lines[-1][:300] if lines else "no output"
