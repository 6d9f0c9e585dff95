"""GPU check: `ftopt train` itself on one CUDA GPU, measured against the planner. Prints figures; not a test.

    bash benchmarks/gpu_check.sh          # < 8 min on one H200; rows appended to benchmarks/results/gpu_check.jsonl

For each scenario (LoRA + flash, full + GC, LoRA + ZeRO-2 on one GPU, QLoRA when `--quant` exists) it runs
`ftopt train --json` on a random-init preset with packed sequences (every step sees exactly seq_len x micro_batch
tokens, as the estimates assume) and compares:
  allocated peak   torch.cuda.max_memory_allocated over the training steps   vs analytic / traced peak
  reserved peak    torch.cuda.max_memory_reserved                             vs the predicted reserved peak
  device total     total - free at the end of training (context, NCCL)      vs the analytic device total
                   (checks the 600 MiB CUDA-context constant of estimate/analytic.py)
  step time        median synchronized step                                   vs the (uncalibrated) time model
Each row is written as soon as its run finishes, so a run cut short by the time limit keeps the rows before it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.jsonl"
STEPS = 12
# (name, ftopt train flags). 8B LoRA at 2k context and a 0.5B full fine-tune: the sizes a one-GPU team runs.
SCENARIOS = [
    (
        "lora-flash-8b",
        [
            "--random-init",
            "llama-3.1-8b",
            "--lora-r",
            "16",
            "--attn",
            "flash",
            "--seq-len",
            "2048",
            "--micro-batch",
            "2",
        ],
    ),
    ("full-gc-0.5b", ["--random-init", "qwen2.5-0.5b", "--gc", "--seq-len", "2048", "--micro-batch", "4"]),
    (
        "lora-zero2-8b",
        [
            "--random-init",
            "llama-3.1-8b",
            "--lora-r",
            "16",
            "--zero",
            "2",
            "--gpus",
            "1",
            "--seq-len",
            "2048",
            "--micro-batch",
            "2",
        ],
    ),
    (
        "qlora-gc-8b",
        [
            "--random-init",
            "llama-3.1-8b",
            "--lora-r",
            "16",
            "--quant",
            "nf4",
            "--gc",
            "--seq-len",
            "2048",
            "--micro-batch",
            "2",
        ],
    ),
]


def missing_requirements() -> list[str]:
    """What this machine lacks for the check, in words; empty when it can run."""
    missing = []
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append(
                f"a CUDA build of torch with a visible GPU (torch {torch.__version__}: "
                f"cuda={torch.version.cuda}, devices={torch.cuda.device_count()})"
            )
    except ImportError:
        missing.append("torch")
    if importlib.util.find_spec("flash_attn") is None:
        missing.append("the flash-attn package (pip install flash-attn --no-build-isolation)")
    return missing


def has_flag(flag: str) -> bool:
    """Whether this ftopt's train command has `flag` (QLoRA scenarios need --quant)."""
    import typer

    from ftopt.cli.app import app

    cmd = typer.main.get_command(app).commands["train"]
    return any(flag in p.opts for p in cmd.params)


def compare(name: str, m: dict, wall_seconds: float) -> dict:
    """One row: measured figures of a metrics.json beside the predictions, as signed relative errors."""
    from ftopt.estimate.analytic import device_bytes
    from ftopt.spec import Combination

    meas, pred = m["measured"], m["predicted"]
    combo = Combination(**m["combination"])
    err = lambda p, x: (p - x) / x if p and x else None  # noqa: E731 - prediction error relative to measurement
    row = {
        "scenario": name,
        "label": m["label"],
        "wall_seconds": round(wall_seconds, 1),
        "allocated_bytes": meas["peak_bytes_per_gpu"],
        "reserved_bytes": meas["peak_reserved_bytes_per_gpu"],
        "device_used_bytes": meas.get("device_used_bytes_per_gpu"),
        "step_seconds": meas["step_seconds"],
        "mfu": m.get("mfu"),
    }
    for method in ("analytic", "traced"):
        p = pred.get(method, {})
        peak = p.get("peak_bytes_per_gpu")
        reserved = p.get("reserved_bytes_per_gpu", peak)  # metrics.json written before the field: the peak
        row[f"{method}_allocated_error"] = err(peak, meas["peak_bytes_per_gpu"])
        row[f"{method}_reserved_error"] = err(reserved, meas["peak_reserved_bytes_per_gpu"])
        row[f"{method}_device_error"] = err(
            device_bytes(reserved, combo, False) if reserved else None, meas.get("device_used_bytes_per_gpu")
        )
    row["step_time_error"] = err(pred.get("analytic", {}).get("step_seconds"), meas["step_seconds"])
    return row


def run_scenario(name: str, flags: list[str], workdir: Path) -> dict:
    out = workdir / name
    cmd = [
        sys.executable,
        "-m",
        "ftopt",
        "train",
        "--out",
        str(out),
        "--overwrite",
        "--gpu",
        os.environ.get("FTOPT_GPU_PRESET", "h200"),
        "--precision",
        "bf16-mixed",
        "--packing",
        "--max-steps",
        str(STEPS),
        "--eval-max-examples",
        "0",
        "--json",
        *flags,
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"scenario": name, "error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return compare(name, json.loads(p.stdout), time.perf_counter() - t0)


def main() -> int:
    missing = missing_requirements()
    if missing:
        print("gpu_check cannot run here: missing " + "; ".join(missing) + ".", file=sys.stderr)
        return 2
    from ftopt.spec.io import append_line_atomic

    workdir = Path(os.environ.get("OUT", "/tmp")) / "ftopt-gpu-check"
    for name, flags in SCENARIOS:
        if "--quant" in flags and not has_flag("--quant"):
            print(f"{name}: skipped (this ftopt has no --quant yet)", flush=True)
            continue
        row = run_scenario(name, flags, workdir)
        append_line_atomic(RESULTS, json.dumps(row))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
