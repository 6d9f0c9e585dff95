"""`ftopt train`: Hugging Face Trainer + PEFT + DeepSpeed with one Combination, measured.

One process runs in-process; ZeRO or several GPUs go through the DeepSpeed launcher (`deepspeed --num_gpus N`),
each rank running `ftopt.train.worker` with the same resolved config. On a CPU the ranks use gloo, on GPUs NCCL.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftopt.errors import FtoptError
from ftopt.io import append_line_atomic, atomic_write_text
from ftopt.spec import Combination, Precision

RANK_TIMEOUT_SECONDS = 1800  # collective timeout: a lost rank fails the run instead of hanging it


class TrainConfig(BaseModel):
    """Everything a run needs; saved as resolved_config.json in the output folder."""

    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = Field(None, description="local model folder or hub id (weights)")
    random_init: Optional[str] = Field(None, description="preset name or config.json: random weights")
    data: Optional[str] = None
    eval_data: Optional[str] = None
    eval_fraction: float = 0.1
    seq_len: int = Field(64, gt=0)
    packing: bool = False
    combination: Combination = Combination()
    precision: Precision = Precision.FP32
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: run the epochs")
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    micro_batch: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    seed: int = 0
    output_dir: str = "ftopt-runs/default"
    gpus: int = Field(1, gt=0, description="processes (GPUs) per node")
    nodes: int = Field(1, gt=0)
    hostfile: Optional[str] = None
    resume: bool = False
    save_steps: int = Field(200, gt=0)
    eval_max_examples: int = Field(64, gt=0, description="eval examples scored by generation (quality metrics)")
    metrics: list[str] = Field(default_factory=list, description="user metrics, module:function (ftopt.quality)")
    hardware: Optional[str] = Field(None, description="hardware preset for the predicted-vs-measured comparison")
    trust_remote_code: bool = False
    fail_at_step: Optional[int] = Field(None, description="testing: raise after this step (crash handling)")

    @model_validator(mode="after")
    def _rules(self) -> "TrainConfig":
        if self.model and self.random_init:
            raise ValueError("give either --model (weights) or --random-init (config), not both")
        return self

    @property
    def uses_launcher(self) -> bool:
        return self.gpus * self.nodes > 1 or self.combination.uses_deepspeed


# ---- DeepSpeed config ------------------------------------------------------------------------------------------------
def deepspeed_config(cfg: TrainConfig) -> dict:
    """A DeepSpeed config for the combination. "auto" values are filled by Hugging Face's integration from the
    TrainingArguments (batch sizes, clipping, bucket sizes from hidden_size), so nothing is set twice."""
    c = cfg.combination
    zero: dict = {"stage": c.zero, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": "auto"}
    if c.zero == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    if c.offload.value in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if c.offload.value == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds: dict = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto", "zero_optimization": zero, "steps_per_print": 10**9,
                "wall_clock_breakdown": False}
    if cfg.precision in (Precision.BF16_MIXED,):
        ds["bf16"] = {"enabled": True}
    elif cfg.precision is Precision.FP16_MIXED:
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds


# ---- launching ------------------------------------------------------------------------------------------------------
def launch(cfg: TrainConfig, log=print) -> dict:
    """Run training: in-process, or across processes with the DeepSpeed launcher. Returns metrics.json's content."""
    out = Path(cfg.output_dir)
    _check_output_dir(out)
    atomic_write_text(out / "resolved_config.json", cfg.model_dump_json(indent=2))
    if not cfg.uses_launcher:
        from ftopt.train.worker import run_worker

        return run_worker(cfg)
    if not _has_module("deepspeed"):  # launched as `python -m deepspeed.launcher.runner`: the module is enough
        raise FtoptError("ZeRO and multi-GPU runs need DeepSpeed: pip install deepspeed.")
    from ftopt.train import worker

    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cfg.gpus)]
    if cfg.nodes > 1:
        if not cfg.hostfile:
            raise FtoptError("--nodes > 1 needs --hostfile (DeepSpeed's host file: one 'host slots=N' per line).")
        cmd += ["--num_nodes", str(cfg.nodes), "--hostfile", cfg.hostfile]
    port = _free_port()
    cmd += ["--master_port", str(port), worker.__file__, str(out / "resolved_config.json")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    if not _cuda_available() and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the cores: one thread pool per rank sized to its share avoids oversubscription
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cfg.gpus))
    log_path = out / "launcher.log"
    with log_path.open("w") as logf:
        try:
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=RANK_TIMEOUT_SECONDS * 2)
        except subprocess.TimeoutExpired:
            raise FtoptError(f"The run did not finish within {RANK_TIMEOUT_SECONDS * 2} s and was stopped; "
                             f"see {log_path}.") from None
    metrics_path = out / "metrics.json"
    if proc.returncode != 0:
        tail = _error_tail(log_path)
        raise FtoptError(f"A rank failed (exit {proc.returncode}) and all ranks were stopped: {tail} (log: {log_path}).")
    if not metrics_path.exists():
        raise FtoptError(f"The run ended without metrics; see {log_path}.")
    return json.loads(metrics_path.read_text())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_tail(log_path: Path) -> str:
    """The most telling line of a failed run's log: the last exception line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if ("Error" in line or "error:" in line) and not line.startswith("File "):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def _check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FtoptError(f"The output folder {out} is not writable: {e.strerror}.") from None


# ---- metrics ----------------------------------------------------------------------------------------------------------
class StepRecorder:
    """Per-step loss, time, tokens/s and memory; appended to steps.jsonl (one JSON object per line)."""

    def __init__(self, path: Path, device, rank: int):
        self.path, self.device, self.rank = path, device, rank
        self.step_seconds: list[float] = []
        self.tokens_per_s: list[float] = []
        self._t = None
        self._tokens = 0
        self.last_loss = None
        self.pending: dict | None = None

    def begin(self, tokens_seen: int) -> None:
        self._t, self._tokens = time.perf_counter(), tokens_seen

    def end(self, step: int, tokens_seen: int) -> dict:
        """Time and tokens of the step that just ended. The Trainer logs that step's loss only after
        on_step_end, so the record waits in `pending` until `flush` attaches the loss and writes it."""
        dt = time.perf_counter() - (self._t or time.perf_counter())
        tok = max(0, tokens_seen - self._tokens)
        self.step_seconds.append(dt)
        self.tokens_per_s.append(tok / dt if dt > 0 else 0.0)
        rec = {"step": step, "rank": self.rank, "seconds": dt, "tokens": tok, "tokens_per_s": tok / dt if dt else 0.0}
        if self.device.type == "cuda":
            import torch

            rec["max_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            rec["max_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        self.pending = rec
        return rec

    def flush(self, loss: float | None) -> dict | None:
        """Write the pending step record (with its loss, when the Trainer logged one) to steps.jsonl."""
        rec, self.pending = self.pending, None
        if rec is None:
            return None
        if loss is not None:
            rec["loss"] = loss
            self.last_loss = loss
        if self.rank == 0:
            append_line_atomic(self.path, json.dumps(rec))
        return rec

    def summary(self) -> dict:
        # the first step includes kernel selection and allocator warm-up: leave it out when there are others
        steady = self.step_seconds[1:] or self.step_seconds
        tps = self.tokens_per_s[1:] or self.tokens_per_s
        return {"step_seconds_median": statistics.median(steady) if steady else None,
                "tokens_per_s_median": statistics.median(tps) if tps else None, "steps": len(self.step_seconds)}
