"""`ftopt bench`: the proof-of-concept sweep. Same sample data and seed, one `ftopt train` subprocess per
combination (an OOM or crash in one is recorded and the sweep goes on), results appended atomically to a JSONL
file (schema in docs/results-schema.md), finished runs skipped on a re-run (resume after Ctrl-C or a crash) and
failed ones (error, timeout, failed) tried again; a rerun with other settings into the same folder is refused
(check_one_sweep). Each result carries the predicted figures (analytic and traced) next to the measured ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ftopt.results.quality import QualityTarget
from ftopt.results.rows import Predictions, ResultRow, Status, read_metrics, read_results
from ftopt.spec import (
    Attention,
    Combination,
    Fsdp,
    HardwareSpec,
    Optim,
    OutputSpec,
    Precision,
    Quant,
    RunSpec,
    default_precision,
)
from ftopt.spec.errors import FtoptError, flag_of
from ftopt.spec.io import append_line_atomic
from ftopt.train.ranks import OOM_MARKERS

__all__ = ["BenchRun", "check_one_sweep", "read_results", "run_sweep", "sweep_rows", "sweep_runs"]


class BenchRun(BaseModel):
    """What is run: one combination at one repeat index, with the sweep's shared run specification."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: RunSpec = Field(description="the whole run, output folder included")
    repeat: int = Field(0, ge=0)

    def key(self) -> str:
        """Readable combination part, then a digest of everything else that makes the run (model, data, steps,
        seq-len, micro-batch, precision, learning rate, processes...): a rerun with other settings runs again."""
        c, s = self.spec.combination, self.spec.setup
        ident = self.spec.identity()
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        return (
            f"r{c.lora_r}-gc{int(c.gc)}-z{c.zero}{f'-fsdp-{c.fsdp.value}' if c.uses_fsdp else ''}-{c.offload.value}-"
            f"{c.attn.value}-g{s.world_size}-"
            f"t{'.'.join(c.lora_targets) if c.lora_targets else 'default'}-rep{self.repeat}-{digest}"
        )


def sweep_runs(
    base: RunSpec, combos: Iterable[Combination], runs_dir: Path, repeat: int = 1, zero_gpus: int = 2
) -> list[BenchRun]:
    """Each combination on `base`'s settings; ZeRO and FSDP2 runs on `zero_gpus` processes (sharding over one
    process partitions nothing). Repeats go round-robin (every combination once, then again): a machine that slows down for a while
    then affects one run of each combination instead of all runs of one, and the per-combination median absorbs it."""
    runs = []
    for k in range(repeat):
        for c in combos:
            sharded = c.uses_deepspeed or c.uses_fsdp
            setup = base.setup.model_copy(update={"gpus_per_node": zero_gpus}) if sharded else base.setup
            spec = base.model_copy(update={"combination": c, "setup": setup})
            key = BenchRun(spec=spec, repeat=k).key()
            out = OutputSpec(dir=str(runs_dir / key), overwrite=True, report_to=base.output.report_to)
            runs.append(BenchRun(spec=spec.model_copy(update={"output": out}), repeat=k))
    return runs


def check_sweep_launch(runs: list[BenchRun]) -> None:
    """Several nodes: each run starts every node from this host over ssh (DeepSpeed's runner with a host file),
    checked before the first run. A sweep run once per node cannot work: the nodes would have to agree on which runs
    are left, and only node 0's results file knows."""
    from ftopt.train.preflight import check_launch

    for run in runs:
        s = run.spec.setup
        if s.nodes > 1 and not run.spec.hostfile:
            raise FtoptError(
                f"bench --nodes {s.nodes} starts every run from this host and needs --hostfile FILE "
                "(one 'host slots=N' line per node)."
            )
        check_launch(run.spec, None)


def default_zero_processes(hw: HardwareSpec) -> int:
    """ZeRO partitions over processes: 2 CPU processes stand for 2 GPUs; on a GPU machine, the GPUs it has."""
    if hw.is_cpu:
        return 2
    import torch

    return max(1, torch.cuda.device_count())


# the reference points' LoRA rank (bench --lora-r, the demo): r8 is PEFT's LoraConfig default
REFERENCE_LORA_R = 8


def reference_combinations(
    hw: HardwareSpec, lora_r: int = REFERENCE_LORA_R, precision: Precision | None = None
) -> list[Combination]:
    """The study's reference points: none, GC, LoRA, LoRA+GC, LoRA+ZeRO-2, LoRA+ZeRO-3+GC, LoRA+FSDP2 (full
    reshard, beside ZeRO-3), eager vs the fastest attention kernel this hardware runs at `precision` (flash where
    it can, else SDPA; None = the hardware's default precision)."""
    prec = precision or default_precision(hw.is_cpu, hw.peak_flops)
    flash = Attention.FLASH in hw.attention_kernels and Attention.FLASH.runs_in(prec)
    fast = Attention.FLASH if flash else Attention.SDPA
    return [
        Combination(attn=fast),
        Combination(gc=True, attn=fast),
        Combination(lora_r=lora_r, attn=fast),
        Combination(lora_r=lora_r, gc=True, attn=fast),
        Combination(lora_r=lora_r, zero=2, attn=fast),
        Combination(lora_r=lora_r, zero=3, gc=True, attn=fast),
        Combination(lora_r=lora_r, fsdp=Fsdp.FULL, gc=True, attn=fast),
        Combination(lora_r=lora_r, attn=Attention.EAGER),
    ]


# ---- results file: ftopt.results.rows reads and types it -------------------------------------------------------------
def _tail(text: str, n: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _status(returncode: int, output: str) -> Status:
    """ok, oom or error (a timeout, and a clean exit without metrics.json, 'failed', are recorded by the caller)."""
    if returncode == 0:
        return Status.OK
    return Status.OOM if any(m in output for m in OOM_MARKERS) else Status.ERROR


# ---- the sweep ------------------------------------------------------------------------------------------------------------
def run_sweep(
    runs: list[BenchRun],
    results: str | Path,
    *,
    run_timeout_seconds: float | None = None,
    on_event: Callable[[str, dict], None] = lambda kind, info: None,
    inject: dict[str, str] | None = None,
    quality_target: QualityTarget | None = None,
    slots: int = 1,
) -> list[ResultRow]:
    """Run each BenchRun without a final result in `results` (ok or oom: Status.final; a run recorded as error,
    timeout or failed is tried again, its earlier line kept); append one result line per run (with the sweep's quality target,
    which the report then uses). Returns all results. `slots`: one-process runs side by side (ftopt.sweep.schedule;
    1 = one run at a time).
    `inject` maps a run key prefix to 'oom' or 'crash' (tests: a failing run must not stop the sweep)."""
    from ftopt.sweep.schedule import run_in_order
    from ftopt.train.ranks import last_error_line

    results = Path(results)
    recorded = {r.key: r for r in read_results(results)}
    todo = []
    for i, run in enumerate(runs, 1):
        key, c = run.key(), run.spec.combination
        info = {"key": key, "label": c.label(), "index": i, "total": len(runs)}
        before = recorded.get(key)
        if before is not None and before.status.final:
            on_event("skip", info)
        else:  # never run, or its last attempt failed (error, timeout, failed): its line stays, a new one follows
            todo.append((run, info if before is None else {**info, "retry": before.status.value}))

    def one(item: tuple[BenchRun, dict], procs: set) -> ResultRow:
        return _run_one(item[0], item[1]["key"], run_timeout_seconds, inject or {}, procs)

    def finished(item: tuple[BenchRun, dict], row: ResultRow) -> None:
        row = row.model_copy(update={"quality_target": quality_target, "ended_at": datetime.now(timezone.utc)})
        append_line_atomic(results, row.to_line())
        why = {} if row.ok or not row.error_tail else {"error": last_error_line(row.error_tail)}
        on_event("done", {**item[1], "status": row.status.value, **why})

    run_in_order(
        todo, one, lambda item: item[0].spec.setup.world_size, slots, lambda item: on_event("start", item[1]), finished
    )
    return read_results(results)


def sweep_rows(rows: list[ResultRow], runs: list[BenchRun]) -> list[ResultRow]:
    """The result lines of these runs only: a results file is appended to by every sweep that uses it, and a
    calibration or a summary must not mix in another sweep's model, sequence length or precision."""
    keys = {r.key() for r in runs}
    return [r for r in rows if r.key in keys]


# ---- one results file, one sweep ---------------------------------------------------------------------------------
def sweep_settings(spec: RunSpec, target: QualityTarget | None) -> dict:
    """What every run of one sweep shares: the run's identity (model, hardware, data, setup, schedule) less its
    combination and process count, and the quality target the report judges its runs by."""
    d = spec.identity()
    d.pop("combination")
    d["setup"].pop("gpus_per_node")
    d["quality_target"] = f"{target.metric}{target.op}{target.value:g}" if target else None
    return d


def _setting_flag(path: str) -> str:
    """The bench flag that sets a sweep setting, from its dotted path in sweep_settings."""
    if path in ("model.ref", "model.weights"):
        return "--model/--random-init"
    return flag_of(path.rsplit(".", 1)[-1])


def _zero_processes(specs: Iterable[RunSpec]) -> dict:
    """--zero-gpus as the sweep's sharded runs show it (its other runs leave it unseen: {})."""
    n = next((s.setup.gpus_per_node for s in specs if s.combination.uses_deepspeed or s.combination.uses_fsdp), None)
    return {} if n is None else {"zero_gpus": n}


def check_one_sweep(runs: list[BenchRun], results: Path, target: QualityTarget | None) -> None:
    """A results file holds one sweep, as a run folder holds one run (ftopt.train.outputs): a rerun with the same
    settings resumes it (more combinations or repeats included), one with other settings is refused before any run:
    appended, its runs would stand beside the earlier sweep's under the same labels, be weighed as alternatives and
    be judged by the last quality target. The earlier sweep is that of the last run the file records (lines without a
    run specification, ftopt.bench/1, say nothing)."""
    recorded = [r for r in read_results(results) if r.run is not None]
    if not recorded or not runs:
        return
    from ftopt.train.outputs import differences

    before, now = recorded[-1], [r.spec for r in runs]
    then_z, now_z = _zero_processes(r.run for r in reversed(recorded)), _zero_processes(now)
    diff = differences(
        {**sweep_settings(before.run, before.quality_target), **(then_z if now_z else {})},
        {**sweep_settings(now[0], target), **(now_z if then_z else {})},
        _setting_flag,
    )
    if diff:
        raise FtoptError(
            f"{results.parent} holds a sweep with other settings: {'; '.join(diff[:3])}{' and more' if len(diff) > 3 else ''}"
            "; give another --out for this one, or the earlier settings to resume that sweep."
        )


def _run_one(run: BenchRun, key: str, timeout: float | None, inject: dict[str, str], procs: set) -> ResultRow:
    """One `ftopt train --plan RUN.json` subprocess: the run gets its specification as a file, never re-parsed
    flags. An OOM, crash or timeout is recorded with the prediction and the sweep goes on."""
    from ftopt.spec.io import atomic_write_text

    spec = run.spec
    spec_file = spec.output_dir.parent / f"{key}.run.json"
    atomic_write_text(spec_file, json.dumps(spec.to_json(), indent=2))
    cmd = [sys.executable, "-m", "ftopt", "train", "--plan", str(spec_file), "--json"]
    # the sweep's own command line allowed these (ftopt.spec.trust): the child reads them from a file, so says so again
    cmd += ["--trust-remote-code"] if spec.model.trust_remote_code else []
    cmd += ["--allow-metric-module"] if spec.data.metrics else []
    # a run not in the results file is not done: what an interrupted one left in its folder is replaced (only the
    # entries its manifest lists), else the rerun's child refuses the folder and the run is recorded as an error
    cmd += ["--overwrite"] if spec.output.overwrite else []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if spec.hardware.is_cpu:
        # One thread per process: each process stands for one GPU with one core (a ZeRO run's two ranks then
        # use the two cores of a small machine). A multi-threaded tiny step waits for its slowest thread, so on
        # a shared or virtual machine its time swings by half from minute to minute; one thread does not.
        env.setdefault("OMP_NUM_THREADS", "1")
    for prefix, what in inject.items():
        if key.startswith(prefix):
            env["FTOPT_INJECT_FAILURE"] = what
    returncode, output = _run_with_timeout(cmd, env, timeout, procs)
    status = Status.TIMEOUT if returncode is None else _status(returncode, output)
    if returncode is None:
        output = f"{output}\nstopped after --run-timeout {timeout:g} s"  # last: the error tail keeps it
    metrics_path = spec.output_dir / "metrics.json"
    if status is Status.OK and not metrics_path.is_file():  # a clean exit that measured nothing is no result
        from ftopt.train.ranks import last_error_line

        status = Status.FAILED
        output = f"exited 0 without {metrics_path}: {last_error_line(output)}"
    c = spec.combination
    row = dict(key=key, label=c.label(), combination=c, gpus=spec.setup.world_size, repeat=run.repeat, run=spec)
    if status is Status.OK:
        # the run already predicted itself for the same setup and hardware: no second trace
        m = read_metrics(metrics_path)
        return ResultRow(
            **row,
            status=status,
            measured=m.measured,
            mfu=m.mfu,
            tokens_per_step=m.tokens_per_step,
            predicted=m.predicted,
        )
    return ResultRow(**row, status=status, error_tail=_tail(output), predicted=Predictions(**predicted(spec)))


def _run_with_timeout(cmd: list[str], env: dict, timeout: float | None, procs: set) -> tuple[int | None, str]:
    """Run `cmd` in its own process group; on timeout stop the whole group (the DeepSpeed launcher and its ranks
    too, which a plain subprocess timeout would leave running). Returns (exit code or None on timeout, output).
    The process is in `procs` while it runs (the sweep stops it on Ctrl-C: ftopt.sweep.schedule)."""
    import signal

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    procs.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out
    except BaseException:  # Ctrl-C: take the run's processes down with the sweep
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        procs.discard(proc)


def predicted(spec: RunSpec) -> dict:
    """Analytic and traced predictions for a run that wrote no metrics.json."""
    from ftopt.estimate import predictions
    from ftopt.spec import load_model

    return predictions(load_model(spec.model.ref), spec.hardware, spec.setup, spec.combination)


def dora_variants(combos: list[Combination]) -> list[Combination]:
    """`bench --dora`: each LoRA point's DoRA twin where DoRA runs (ZeRO 0-2, no FSDP: Combination's rule), so the
    sweep measures DoRA's cost beside the LoRA it modifies."""
    twins = [
        c.model_copy(update={"dora": True}) for c in combos if c.lora and not c.dora and c.zero < 3 and not c.uses_fsdp
    ]
    return _new_twins(combos, twins)


def dropout_variants(combos: list[Combination], p: float) -> list[Combination]:
    """`bench --lora-dropout P`: each LoRA point's twin with adapter dropout P, so the sweep measures what the
    dropout costs (its masks) beside the LoRA without it. P is checked as Combination checks it, even when the grid
    has no LoRA point; P = 0 adds nothing (bench refuses it: ftopt.sweep.prepare)."""
    Combination(lora_r=1, lora_dropout=p)
    twins = [Combination.model_validate({**c.model_dump(), "lora_dropout": p}) for c in combos if c.lora]
    return _new_twins(combos, twins)


def quant_optim_variants(
    combos: list[Combination], quants: tuple[Quant, ...] | None, optims: tuple[Optim, ...] | None
) -> list[Combination]:
    """For each combination, its copy with every (quant, optim) pair of the cross product set where it can take
    them (a quantized base: LoRA, ZeRO 0-2; a bitsandbytes optimizer: no ZeRO): the sweep then measures each
    reference point beside its quantized / 8-bit twins. A copy equal to a combination already there (`none`,
    `adamw`, or a setting the point cannot take) is left out."""
    twins = []
    for c in combos:
        for quant in quants or (None,):
            for optim in optims or (None,):
                upd = {
                    k: v
                    for k, v in (
                        ("quant", quant if c.lora and c.zero < 3 and not c.uses_fsdp else None),
                        ("optim", optim if not (c.zero or c.uses_fsdp) else None),
                    )
                    if v is not None
                }
                twins.append(Combination(**{**c.model_dump(), **upd}))
    return _new_twins(combos, twins)


def _new_twins(combos: list[Combination], twins: list[Combination]) -> list[Combination]:
    """The twins a sweep adds: each once, in order, leaving out any already among `combos`."""
    seen = set(combos)
    return [t for t in dict.fromkeys(twins) if t not in seen]
