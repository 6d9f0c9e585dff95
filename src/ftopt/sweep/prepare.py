"""`ftopt bench` from what the user gave to a sweep ready to run: every check that can fail does so before the first
run, then the runs, then the calibration they feed. The CLI declares the flags and calls `prepare`, `run` and
`calibrate`; tests call them without the CLI."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftopt.planner import resolve
from ftopt.planner.hardware import hardware
from ftopt.results.quality import QualityTarget, check_target_metric, load_user_metric
from ftopt.results.rows import ResultRow
from ftopt.spec import HardwareSpec
from ftopt.spec.errors import FtoptError
from ftopt.spec.io import check_out_folder
from ftopt.spec.run import DEFAULT_MODEL
from ftopt.sweep.bench import (
    REFERENCE_LORA_R,
    BenchRun,
    check_one_sweep,
    check_sweep_launch,
    default_zero_processes,
    dora_variants,
    dropout_variants,
    quant_optim_variants,
    reference_combinations,
    run_sweep,
    sweep_rows,
    sweep_runs,
)
from ftopt.sweep.grid import load_grid
from ftopt.train.data import check_data_path


class BenchRequest(BaseModel):
    """What `ftopt bench` was given, flag by flag (None: not given; the spec classes hold the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: Path | None
    out: Path
    model: str | None
    random_init: str | None
    data: str | None
    eval_data: str | None
    seq_len: int | None
    micro_batch: int | None
    precision: str | None
    packing: bool | None
    batching: str | None
    headroom: float | None
    max_steps: int
    lr: float | None
    gpu: str | None
    lora_r: int | None
    repeat: int
    zero_gpus: int | None
    run_timeout: float | None
    metric: tuple[str, ...] | None
    quality_target: str | None
    quant: str | None
    optim: str | None
    nodes: int | None
    hostfile: str | None
    trust_remote_code: bool
    dora: bool = False
    lora_dropout: float | None = None


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: its runs (each a full run specification), where results go, and what they are judged by."""

    runs: list[BenchRun]
    results_path: Path
    hardware: HardwareSpec
    model_ref: str
    target: QualityTarget | None
    run_timeout: float | None


def _check_flags(r: BenchRequest) -> QualityTarget | None:
    if r.model is not None and r.random_init is not None:  # as train says it: one model per sweep
        raise FtoptError("give either --model (weights) or --random-init (a config), not both.")
    if r.lora_r is not None and r.grid is not None:
        raise FtoptError(
            f"--lora-r {r.lora_r} sets the rank of the reference points, which --grid replaces; "
            "give the ranks in the grid (lora_r: [8, 16])."
        )
    if r.lora_r is not None and r.lora_r < 1:
        raise FtoptError(f"--lora-r for the reference LoRA points must be positive, got {r.lora_r}.")
    if r.repeat < 1:
        raise FtoptError(f"--repeat must be at least 1, got {r.repeat}.")
    if r.run_timeout is not None and not 0 < r.run_timeout < math.inf:  # false for nan too
        raise FtoptError(f"--run-timeout must be a positive number of seconds, got {r.run_timeout}.")
    if r.lora_dropout == 0:  # the LoRA points run without dropout already: their "twins" would be themselves
        raise FtoptError(
            "--lora-dropout 0 adds no run: each LoRA point already runs without adapter dropout; give a share "
            "above 0 (e.g. 0.05) to measure what dropout costs, or leave the flag out."
        )
    if r.zero_gpus is not None and r.zero_gpus < 1:
        raise FtoptError(f"--zero-gpus must be at least 1, got {r.zero_gpus}.")
    for flag, path in (("--data", r.data), ("--eval-data", r.eval_data)):
        if path is not None:
            check_data_path(path, flag)  # each run would fail on it, one by one
    target = QualityTarget.parse(r.quality_target) if r.quality_target else None
    for ref in r.metric or ():
        load_user_metric(ref)  # a typo fails now, not after the first run
    if target is not None:
        check_target_metric(target, tuple(r.metric or ()))
    return target


def prepare(r: BenchRequest) -> Sweep:
    """Every check before the first run: flags, the quality bar, the output folder, the hardware, each combination
    against the model, and the launch (host file, nodes)."""
    target = _check_flags(r)
    check_out_folder(r.out)
    hw = hardware(r.gpu)
    prec = resolve.setup(hw, precision=r.precision).precision
    combos = load_grid(r.grid) if r.grid else reference_combinations(hw, r.lora_r or REFERENCE_LORA_R, prec)
    combos += quant_optim_variants(combos, resolve.enum_list("quant", r.quant), resolve.enum_list("optim", r.optim))
    if r.dora:
        combos += dora_variants(combos)
    if r.lora_dropout is not None:
        combos += dropout_variants(combos, r.lora_dropout)
    ref = resolve.model_ref(
        r.model or r.random_init or DEFAULT_MODEL, weights=r.model is not None, trust_remote_code=r.trust_remote_code
    )
    setup = resolve.setup(
        hw,
        seq_len=r.seq_len,
        micro_batch=r.micro_batch,
        precision=r.precision,
        packing=r.packing,
        batching=r.batching,
        headroom=r.headroom,
        nodes=r.nodes,
    )
    base = resolve.finish_run(
        resolve.new_run(hw, ref, setup, resolve.combination()),
        data=dict(train=r.data, eval=r.eval_data, metrics=r.metric),
        schedule=dict(max_steps=r.max_steps, learning_rate=r.lr),
        output={},
        hostfile=r.hostfile,
    )
    for c in combos:
        resolve.check(base.model_copy(update={"combination": c}))
    if base.data.train is not None:
        from ftopt.train.prepare import read_data

        # malformed JSON or missing fields fail every run the same way, one by one: once here instead
        read_data(base.data, base.schedule.seed)
    zero_gpus = r.zero_gpus or default_zero_processes(hw)
    runs = sweep_runs(base, combos, r.out / "runs", repeat=r.repeat, zero_gpus=zero_gpus)
    check_sweep_launch(runs)
    check_one_sweep(runs, r.out / "results.jsonl", target)
    return Sweep(runs, r.out / "results.jsonl", hw, ref.ref, target, r.run_timeout)


def run(sweep: Sweep, on_event: Callable[[str, dict], None]) -> list[ResultRow]:
    """Each run as its own `ftopt train` process; results appended one line at a time; finished runs (ok, oom)
    skipped, failed ones (error, timeout, failed) tried again."""
    rows = run_sweep(
        sweep.runs,
        sweep.results_path,
        run_timeout_seconds=sweep.run_timeout,
        on_event=on_event,
        quality_target=sweep.target,
    )
    return sweep_rows(rows, sweep.runs)


def none_succeeded(rows: list[ResultRow]) -> str | None:
    """One sentence when no run of the sweep measured anything (every one oom, error, timeout or failed), with the
    count per status; None when one did (or there were none)."""
    if not rows or any(r.ok for r in rows):
        return None
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    said = ", ".join(f"{n} {status}" for status, n in counts.items())
    return (
        f"no run of the sweep succeeded (0 of {len(rows)}: {said}); each failed run's error_tail is in the results "
        "file, and a rerun of the same command tries the error, timeout and failed ones again."
    )


def calibrate(sweep: Sweep, rows: list[ResultRow]):
    """The time model fitted on the successful runs and stored for this hardware: (fit, calibration, path), or None
    when no run succeeded."""
    if not any(r.ok for r in rows):
        return None
    from ftopt.planner.calibration_store import calibrate_and_store

    return calibrate_and_store(rows, sweep.hardware, str(sweep.results_path.resolve()), sweep.model_ref)
