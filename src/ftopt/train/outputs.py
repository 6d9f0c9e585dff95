"""The run folder: what a run writes there, and the rule that one folder holds one run.

A second `ftopt train` into a folder that holds a run is refused (exit 2) unless `--resume` (the same run,
continued: its resolved config must match; a --resume whose folder holds no run is refused too) or `--overwrite` (the earlier run's files are removed first: those its
manifest lists, ftopt.train.manifest; files ftopt did not write are left alone). Without this rule two runs mixed their steps.jsonl and their model files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError
from ftopt.train import manifest
from ftopt.train.manifest import holds_run

CONFIG_NAME = "resolved_config.json"


def differences(a: dict, b: dict, name: Callable[[str], str] = str, prefix: str = "") -> list[str]:
    """Each setting where `a` (then) and `b` (now) differ, as "NAME (a's value then, b's now)"; nested dicts are
    walked, and `name` turns a dotted path (schedule.max_steps) into what the user knows it by."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, name, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{name(prefix + k)} ({va!r} then, {vb!r} now)")
    return out


def check_resumable(spec: RunSpec) -> None:
    """--resume continues the run in --out: a folder that does not exist, or holds no run of ftopt's (no manifest,
    steps, metrics or checkpoint), is refused, where a mistyped --out used to start a new run there silently."""
    out = spec.output_dir
    if not spec.output.resume:
        return
    if not out.exists():
        raise FtoptError(
            f"--resume: {out} does not exist, so there is no run to continue; check --out, or leave out --resume "
            "to start a new run."
        )
    if manifest.read(out) is None and not holds_run(out):
        raise FtoptError(
            f"--resume: {out} holds no run of ftopt's to continue; check --out, or leave out --resume to start a new "
            "run."
        )


def resume_note(spec: RunSpec) -> str | None:
    """--resume of ftopt's run that stopped before its first checkpoint: it starts again from step 0 (what
    ranks.interrupted_line promises), said in one line rather than silently."""
    out = spec.output_dir
    if not spec.output.resume or any(out.glob("checkpoint-*")) or (out / "metrics.json").exists():
        return None
    return f"--resume: {out} holds no checkpoint yet; the run starts again from step 0."


def prepare_output(spec: RunSpec, claim: bool = True) -> None:
    """Check and claim the run folder before anything expensive; write resolved_config.json. A per-node run's
    other nodes (`claim=False`) only make their folder, which may be node 0's (shared) or their own."""
    from ftopt.spec.io import atomic_write_text

    out = spec.output_dir
    if out.exists() and not out.is_dir():
        raise FtoptError(f"The output folder {out} is a file; choose a folder with --out.")
    if not claim:
        out.mkdir(parents=True, exist_ok=True)
        return
    check_resumable(spec)  # again here: torchrun.sh's ranks reach the claim without ftopt.train.start.prepare
    if holds_run(out):
        if spec.output.resume:
            _check_same_run(out, spec)
        elif not spec.output.overwrite:
            raise FtoptError(
                f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another --out."
            )
    try:
        manifest.claim(out, resume=spec.output.resume, overwrite=spec.output.overwrite)
        atomic_write_text(out / CONFIG_NAME, json.dumps(spec.to_json(), indent=2))
    except OSError as e:
        raise FtoptError(f"The output folder {out} is not writable: {e.strerror}.") from None


def _check_same_run(out: Path, spec: RunSpec) -> None:
    try:
        before = json.loads((out / CONFIG_NAME).read_text())
        before = RunSpec.model_validate(before).identity()
    except (OSError, ValueError):
        raise FtoptError(
            f"{out} holds a run without a readable {CONFIG_NAME}; it cannot be resumed safely. "
            "Use --overwrite or another --out."
        ) from None
    diff = differences(before, spec.identity())
    if diff:
        raise FtoptError(
            f"--resume: {out} holds a different run: {'; '.join(diff[:3])}"
            f"{' and more' if len(diff) > 3 else ''}. Use the same settings, --overwrite, or another --out."
        )


def finished_run(spec: RunSpec) -> dict | None:
    """With --resume, the metrics of the same run when it already finished (it trains nothing then: the Trainer
    would otherwise run one step past --max-steps from its last checkpoint). A run stopped by --max-hours is not
    finished; a different run is refused as for any --resume."""
    out = spec.output_dir
    if not spec.output.resume:
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or (metrics.get("measured") or {}).get("stopped_by_time_budget"):
        return None
    _check_same_run(out, spec)
    return metrics
