"""GPU check: `ftopt train` itself on one CUDA GPU, measured against the planner. Prints figures; not a test.

    bash benchmarks/gpu_check.sh   # < 10 min on one H100 or H200; rows appended to benchmarks/results/gpu_check.jsonl

First the CUDA context alone (a process that only initializes CUDA: device used minus reserved). Then `ftopt train
--json` on random-init presets, each run in its own process:
  one full fine-tune of qwen2.5-0.5b per precision (fp32, bf16-mixed, fp16-mixed, bf16-true), each on rows that
  fill --seq-len (`--batching full`: nothing padded, SDPA keeps is_causal) and on short rows padded to --seq-len
  (`--batching padded-max`: SDPA gets the padding mask); LoRA with DoRA (where this ftopt has `--dora`);
  LoRA + flash on an 8B model and QLoRA (where flash-attn / bitsandbytes are installed), packed.
For each it compares
  allocated peak   torch.cuda.max_memory_allocated over the training steps   vs analytic / traced peak
  reserved peak    torch.cuda.max_memory_reserved                             vs the predicted reserved peak
  device total     total - free at the end of training (context, NCCL)      vs the analytic device total
  step time        median synchronized step                                   vs the (uncalibrated) time model
and prints the table of benchmarks/published.py (row, measured, what, each estimator and its signed error). Each
row is written as soon as its run finishes, so a run cut short by the time limit keeps the rows before it.
Without a CUDA torch it stops at once (exit 2), naming everything missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.jsonl"
STEPS = 10
BUDGET_SECONDS = 530  # all runs together; gpu_check.sh stops the check at 570 s, under the 10-minute window
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true")
SEQ = 1024
SMALL = ["--random-init", "qwen2.5-0.5b", "--seq-len", str(SEQ), "--micro-batch", "4"]
BIG = ["--random-init", "llama-3.1-8b", "--lora-r", "16", "--seq-len", "2048", "--micro-batch", "2"]
# the two layouts of the precision rows: (data file, flags)
LAYOUTS = {"full": ("long", ["--batching", "full"]), "padded": ("short", ["--batching", "padded-max"])}
# optional pieces: a scenario needing one that is absent is skipped with this reason
NEEDS = {
    "flash": "the flash-attn package (pip install flash-attn --no-build-isolation)",
    "bnb": "the bitsandbytes package",
    "--dora": "a `--dora` flag on ftopt train",
    "--quant": "a `--quant` flag on ftopt train",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    flags: tuple[str, ...]
    data: str | None = None  # "long" / "short" (written by write_data); None = the built-in task, packed
    needs: tuple[str, ...] = ()


def scenarios() -> list[Scenario]:
    """Precision x layout first (the rows no CPU run can check), then DoRA, then the 8B and QLoRA runs."""
    out = [
        Scenario(f"full-{p}-{layout}", (*SMALL, "--precision", p, *flags), data)
        for p in PRECISIONS
        for layout, (data, flags) in LAYOUTS.items()
    ]
    dora = (*SMALL, "--lora-r", "16", "--dora", "--precision", "bf16-mixed", "--batching", "full")
    out.append(Scenario("dora-bf16-full", dora, "long", ("--dora",)))
    out.append(Scenario("lora-flash-8b", (*BIG, "--attn", "flash", "--precision", "bf16-mixed"), None, ("flash",)))
    qlora = (*BIG, "--quant", "nf4", "--gc", "--precision", "bf16-mixed")
    out.append(Scenario("qlora-gc-8b", qlora, None, ("bnb", "--quant")))
    return out


def missing_requirements() -> list[str]:
    """What this machine lacks for the check at all, in words; empty when it can run."""
    try:
        import torch
    except ImportError:
        return ["torch"]
    if torch.cuda.is_available():
        return []
    return [
        f"a CUDA build of torch with a visible GPU (torch {torch.__version__}: "
        f"cuda={torch.version.cuda}, devices={torch.cuda.device_count()})"
    ]


def absent(needs: tuple[str, ...]) -> list[str]:
    """The optional pieces among `needs` that this machine or this ftopt lacks."""
    packages = {"flash": "flash_attn", "bnb": "bitsandbytes"}
    return [n for n in needs if (importlib.util.find_spec(packages[n]) is None if n in packages else not has_flag(n))]


def has_flag(flag: str) -> bool:
    """Whether this ftopt's train command has `flag`."""
    import typer

    from ftopt.cli.app import app

    cmd = typer.main.get_command(app).commands["train"]
    return any(flag in p.opts for p in cmd.params)


def gpu_preset() -> str:
    """The hardware preset of the visible GPU (FTOPT_GPU_PRESET overrides): h200 or h100-80g."""
    if os.environ.get("FTOPT_GPU_PRESET"):
        return os.environ["FTOPT_GPU_PRESET"]
    import torch

    return "h200" if "H200" in torch.cuda.get_device_name(0) else "h100-80g"


def write_data(folder: Path) -> dict[str, Path]:
    """Two JSONL text files: `long` rows of 2 x SEQ words (every row truncated to --seq-len, nothing padded) and
    `short` rows of SEQ / 8 to SEQ / 4 words (padded). A small word list, so the tokenizer a random-init run trains
    on the rows gives about one token per word."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731 - one row of n words
    folder.mkdir(parents=True, exist_ok=True)
    files = {"long": folder / "long.jsonl", "short": folder / "short.jsonl"}
    rows = {"long": [2 * SEQ] * 64, "short": [rng.randint(SEQ // 8, SEQ // 4) for _ in range(64)]}
    for kind, lengths in rows.items():
        files[kind].write_text("".join(json.dumps({"text": text(n)}) + "\n" for n in lengths))
    return files


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
        row[f"{method}_allocated_bytes"], row[f"{method}_reserved_bytes"] = peak, reserved
        row[f"{method}_allocated_error"] = err(peak, meas["peak_bytes_per_gpu"])
        row[f"{method}_reserved_error"] = err(reserved, meas["peak_reserved_bytes_per_gpu"])
        row[f"{method}_device_error"] = err(
            device_bytes(reserved, combo, False) if reserved else None, meas.get("device_used_bytes_per_gpu")
        )
    row["step_time_error"] = err(pred.get("analytic", {}).get("step_seconds"), meas["step_seconds"])
    return row


def run_scenario(sc: Scenario, workdir: Path, data: dict[str, Path], gpu: str, seconds_left: float) -> dict:
    """`ftopt train` for one scenario, in its own process (a fresh allocator and context), cut at `seconds_left`."""
    source = ["--data", str(data[sc.data])] if sc.data else ["--packing"]
    cmd = [sys.executable, "-m", "ftopt", "train", "--out", str(workdir / sc.name), "--overwrite", "--gpu", gpu]
    cmd += ["--max-steps", str(STEPS), "--eval-max-examples", "0", "--json", *source, *sc.flags]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds_left)
    except subprocess.TimeoutExpired:
        return {"scenario": sc.name, "error": f"stopped at the check's time budget ({BUDGET_SECONDS} s)"}
    if p.returncode != 0:
        return {"scenario": sc.name, "error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return compare(sc.name, json.loads(p.stdout), time.perf_counter() - t0)


CONTEXT_PROBE = (
    "import json, torch; x = torch.ones(1, device='cuda'); torch.cuda.synchronize(); "
    "free, total = torch.cuda.mem_get_info(); "
    "print(json.dumps({'used': total - free, 'reserved': torch.cuda.memory_reserved()}))"
)


def context_row() -> dict:
    """The CUDA context of a process that only initializes CUDA (device used minus what its allocator reserved)
    against the constant the device total adds (estimate/analytic.py CUDA_CONTEXT_BYTES; cuBLAS workspaces come
    with the first matmul, so a training process holds somewhat more)."""
    from ftopt.estimate.analytic import CUDA_CONTEXT_BYTES

    p = subprocess.run([sys.executable, "-c", CONTEXT_PROBE], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return {"scenario": "cuda-context", "error": p.stderr.strip().splitlines()[-1:]}
    m = json.loads(p.stdout.strip().splitlines()[-1])
    measured = m["used"] - m["reserved"]
    return {
        "scenario": "cuda-context",
        "context_bytes": measured,
        "predicted_bytes": CUDA_CONTEXT_BYTES,
        "error": None,
        "context_error": (CUDA_CONTEXT_BYTES - measured) / measured,
    }


def table_lines(row: dict, methods=("analytic", "traced")) -> list[str]:
    """A result row in benchmarks/published.py's table: allocated and reserved peaks (the context: its one line)."""
    published = _published()
    if row.get("error"):
        return [f"{row['scenario']:24} failed: {row['error']}"]
    if "context_bytes" in row:
        both = {m: row["predicted_bytes"] for m in methods}
        return [published.line(row["scenario"], row["context_bytes"], "context", both)]
    return [
        published.line(row["scenario"], row[f"{what}_bytes"], what, {m: row.get(f"{m}_{what}_bytes") for m in methods})
        for what in ("allocated", "reserved")
    ]


def _published():
    spec = importlib.util.spec_from_file_location("published", ROOT / "benchmarks" / "published.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    missing = missing_requirements()
    if missing:
        optional = [NEEDS[n] for n in ("flash", "bnb") if absent((n,))]
        print("gpu_check cannot run here: missing " + "; ".join(missing + optional) + ".", file=sys.stderr)
        return 2
    from ftopt.spec.io import append_line_atomic

    t0 = time.perf_counter()
    workdir = Path(os.environ.get("OUT", "/tmp")) / "ftopt-gpu-check"
    data, gpu = write_data(workdir / "data"), gpu_preset()
    print(f"gpu_check on {gpu}; {STEPS} steps a run\n{_published().header(['analytic', 'traced'])}", flush=True)
    rows = [context_row()]
    for sc in scenarios():
        left = BUDGET_SECONDS - (time.perf_counter() - t0)
        lacking = absent(sc.needs)
        if lacking or left < 30:
            why = "; ".join(NEEDS[n] for n in lacking) or "the time budget is spent"
            rows.append({"scenario": sc.name, "error": f"skipped: {why}"})
        else:
            rows.append(run_scenario(sc, workdir, data, gpu, left))
        append_line_atomic(RESULTS, json.dumps(rows[-1]))
        print("\n".join(table_lines(rows[-1])), flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; rows in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
