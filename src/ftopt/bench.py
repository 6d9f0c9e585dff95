"""`ftopt bench`: the proof-of-concept sweep. Same sample data and seed, one `ftopt train` subprocess per
combination (an OOM or crash in one is recorded and the sweep goes on), results appended atomically to a JSONL
file (schema in docs/results-schema.md), finished runs skipped on a re-run (resume after Ctrl-C or a crash).
Each result carries the predicted figures (analytic and traced) next to the measured ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftopt.errors import FtoptError, validation_message
from ftopt.io import append_line_atomic
from ftopt.spec import Attention, Combination, Offload

RESULTS_SCHEMA = "ftopt.bench/1"
OOM_MARKERS = ("out of memory", "OutOfMemoryError", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED")


class BenchRun(BaseModel):
    """What is run: one combination at one repeat index, with the shared train settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    combination: Combination
    gpus: int = Field(1, gt=0, description="processes; ZeRO runs use 2 on a CPU to partition something")
    repeat: int = Field(0, ge=0)

    def key(self) -> str:
        c = self.combination
        return (f"r{c.lora_r}-gc{int(c.gc)}-z{c.zero}-{c.offload.value}-{c.attn.value}-g{self.gpus}-"
                f"t{'.'.join(c.lora_targets) if c.lora_targets else 'default'}-rep{self.repeat}")


def reference_combinations(lora_r: int = 8, cpu: bool = True) -> list[Combination]:
    """The study's reference points: none, GC, LoRA, LoRA+GC, LoRA+ZeRO-2, LoRA+ZeRO-3+GC, eager vs fast attention."""
    fast = Attention.SDPA if cpu else Attention.FLASH
    return [
        Combination(attn=fast), Combination(gc=True, attn=fast), Combination(lora_r=lora_r, attn=fast),
        Combination(lora_r=lora_r, gc=True, attn=fast), Combination(lora_r=lora_r, zero=2, attn=fast),
        Combination(lora_r=lora_r, zero=3, gc=True, attn=fast), Combination(lora_r=lora_r, attn=Attention.EAGER),
    ]


def load_grid(path: str | Path) -> list[Combination]:
    """A YAML grid: either `combinations: [{gc: true, lora_r: 8, ...}, ...]` or axes
    `grid: {gc: [false, true], lora_r: [0, 8], zero: [0, 2], attn: [sdpa]}` (the product, invalid ones dropped)."""
    import itertools

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise FtoptError(f"Cannot read the grid {path}: {e.strerror}.") from None
    except yaml.YAMLError as e:
        raise FtoptError(f"The grid {path} is not valid YAML: {str(e).splitlines()[0]}.") from None
    if not isinstance(doc, dict) or not ({"combinations", "grid"} & set(doc)):
        raise FtoptError(f"The grid {path} needs a 'combinations' list or a 'grid' of option lists.")
    unknown = set(doc) - {"combinations", "grid"}
    if unknown:
        raise FtoptError(f"The grid {path} has unknown key(s) {', '.join(sorted(unknown))}; use 'combinations' or 'grid'.")
    allowed = set(Combination.model_fields)
    out: list[Combination] = []
    try:
        for i, c in enumerate(doc.get("combinations") or [], 1):
            bad = set(c) - allowed
            if bad:
                raise FtoptError(f"Grid combination {i} names unknown option(s) {', '.join(sorted(bad))}; "
                                 f"known: {', '.join(sorted(allowed))}.")
            out.append(Combination(**c))
        axes = doc.get("grid") or {}
        bad = set(axes) - allowed
        if bad:
            raise FtoptError(f"The grid names unknown option(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(allowed))}.")
        if axes:
            names = list(axes)
            for values in itertools.product(*(v if isinstance(v, list) else [v] for v in axes.values())):
                try:
                    out.append(Combination(**dict(zip(names, values))))
                except ValidationError:
                    continue  # e.g. offload without ZeRO: not a valid combination, skipped
    except ValidationError as e:
        raise FtoptError(f"Grid {path}: {validation_message(e)}.") from None
    if not out:
        raise FtoptError(f"The grid {path} defines no valid combination.")
    return out


# ---- results file -----------------------------------------------------------------------------------------------------
def read_results(path: str | Path, warn: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Every valid JSON object line; a bad line is reported with its number and skipped (the good ones are kept)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "key" not in row or "status" not in row:
                raise ValueError("not a result object")
            rows.append(row)
        except ValueError as e:
            warn(f"{p}, line {n}: skipped a corrupt result ({str(e).splitlines()[0][:60]})")
    return rows


def _tail(text: str, n: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _status(returncode: int, output: str) -> str:
    if returncode == 0:
        return "ok"
    return "oom" if any(m in output for m in OOM_MARKERS) else "error"


# ---- the sweep ------------------------------------------------------------------------------------------------------------
class Sweep(BaseModel):
    """The shared settings of a sweep (passed to every `ftopt train`)."""

    model_config = ConfigDict(extra="forbid")
    model_args: list[str] = Field(default_factory=list, description="--model/--random-init/--data ... passed through")
    seq_len: int = 64
    micro_batch: int = 8
    max_steps: int = 100
    lr: float = 3e-3
    precision: str = "fp32"
    seed: int = 0
    hardware: str = "cpu"
    zero_gpus: int = Field(2, description="processes for ZeRO runs (a CPU partitions over 2 processes)")
    packing: bool = Field(False, description="pack sequences to exactly seq_len (measured = estimated shapes)")


def predicted(sweep: Sweep, run: BenchRun, spec) -> dict:
    """Analytic and traced predictions for the run's exact setup (for runs that wrote no metrics.json)."""
    from ftopt.estimate import predictions
    from ftopt.spec import TrainingSetup, load_hardware

    setup = TrainingSetup(seq_len=sweep.seq_len, micro_batch=sweep.micro_batch, precision=sweep.precision,
                          gpus_per_node=run.gpus)
    return predictions(spec, load_hardware(sweep.hardware), setup, run.combination)


def run_sweep(sweep: Sweep, combos: Iterable[Combination], results: str | Path, runs_dir: str | Path, *,
              repeat: int = 1, spec=None, on_event: Callable[[str, dict], None] = lambda kind, info: None,
              inject: dict[str, str] | None = None) -> list[dict]:
    """Run each (combination, repeat) not yet in `results`; append one result line per run. Returns all results.
    `inject` maps a run key prefix to 'oom' or 'crash' (tests: a failing run must not stop the sweep)."""
    results = Path(results)
    done = {r["key"] for r in read_results(results)}
    combos = list(combos)
    # Repeats go round-robin (every combination once, then again): a machine that slows down for a while then
    # affects one run of each combination instead of all runs of one, and the per-combination median absorbs it.
    plan_runs = [BenchRun(combination=c, gpus=sweep.zero_gpus if c.uses_deepspeed else 1, repeat=k)
                 for k in range(repeat) for c in combos]
    for i, run in enumerate(plan_runs, 1):
        key = run.key()
        if key in done:
            on_event("skip", {"key": key, "label": run.combination.label(), "index": i, "total": len(plan_runs)})
            continue
        on_event("start", {"key": key, "label": run.combination.label(), "index": i, "total": len(plan_runs)})
        out_dir = Path(runs_dir) / key
        c = run.combination
        cmd = [sys.executable, "-m", "ftopt", "train", "--output-dir", str(out_dir), "--json",
               "--seq-len", str(sweep.seq_len), "--micro-batch", str(sweep.micro_batch),
               "--max-steps", str(sweep.max_steps), "--lr", str(sweep.lr), "--precision", sweep.precision,
               "--seed", str(sweep.seed), "--lora-r", str(c.lora_r), "--zero", str(c.zero),
               "--offload", c.offload.value, "--attn", c.attn.value, "--gpus", str(run.gpus),
               "--quant", c.quant.value, "--optim", c.optim.value,
               "--gc" if c.gc else "--no-gc", "--packing" if sweep.packing else "--no-packing",
               "--gpu", sweep.hardware, *sweep.model_args]
        if c.lora_targets:
            cmd += ["--lora-targets", ",".join(c.lora_targets)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if sweep.hardware == "cpu":
            # One thread per process: each process stands for one GPU with one core (a ZeRO run's two ranks then
            # use the two cores of a small machine). A multi-threaded tiny step waits for its slowest thread, so on
            # a shared or virtual machine its time swings by half from minute to minute; one thread does not.
            env.setdefault("OMP_NUM_THREADS", "1")
        for prefix, what in (inject or {}).items():
            if key.startswith(prefix):
                env["FTOPT_INJECT_FAILURE"] = what
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        status = _status(proc.returncode, proc.stdout + proc.stderr)
        row: dict = {"schema": RESULTS_SCHEMA, "key": key, "label": c.label(), "combination": c.key(),
                     "gpus": run.gpus, "repeat": run.repeat, "status": status, "sweep": sweep.model_dump()}
        if status == "ok":
            # the run already predicted itself for the same setup and hardware (--gpu): no second trace
            m = json.loads((out_dir / "metrics.json").read_text())
            row["measured"] = m["measured"]
            row["mfu"] = m.get("mfu")
            row["tokens_per_step"] = m["tokens_per_step"]
            if m.get("predicted"):
                row["predicted"] = m["predicted"]
        else:
            row["error_tail"] = _tail(proc.stderr or proc.stdout)
        if "predicted" not in row and spec is not None:
            row["predicted"] = predicted(sweep, run, spec)
        append_line_atomic(results, json.dumps(row))
        on_event("done", {"key": key, "label": c.label(), "status": status, "index": i, "total": len(plan_runs)})
    return read_results(results)


