"""The run folder: what a run writes there, and the rule that one folder holds one run.

A second `ftopt train` into a folder that holds a run is refused (exit 2) unless `--resume` (the same run,
continued: its resolved config must match, except that its schedule may grow longer, trained on from the last
checkpoint; a --resume whose folder holds no run is refused too) or `--overwrite` (the earlier run's files are
removed first: those its manifest lists, ftopt.train.manifest; files ftopt did not write are left alone). Without
this rule two runs would mix their steps.jsonl and their model files.
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


def latest_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json was written (the Trainer, and ftopt's FSDP2 loop, write it
    last)."""
    cks = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists() and p.name[11:].isdigit()]
    return max(cks, key=lambda p: int(p.name[11:])) if cks else None


def _without_length(identity: dict) -> dict:
    return {
        **identity,
        "schedule": {k: v for k, v in identity["schedule"].items() if k != "max_steps"},
        "setup": {k: v for k, v in identity["setup"].items() if k != "epochs"},
    }


def lengthened(before: dict, now: dict) -> tuple[str, str] | None:
    """Where run identity `now` is `before` with a longer schedule and nothing else changed: more --max-steps, or
    more --epochs where both run the epochs (max_steps -1). Then (its old length, its new end) in words, else
    None. The Trainer resumes a checkpoint under a larger max_steps (its state takes the new one; the
    learning-rate schedule is laid over the new length), as ftopt's FSDP2 loop does."""
    if _without_length(before) != _without_length(now):
        return None
    (b_steps, b_epochs), (n_steps, n_epochs) = (
        (d["schedule"]["max_steps"], d["setup"]["epochs"]) for d in (before, now)
    )
    if 0 < b_steps < n_steps and b_epochs == n_epochs:
        return f"{b_steps} step{'s' if b_steps != 1 else ''}", f"step {n_steps}"
    if b_steps == n_steps == -1 and n_epochs > b_epochs:
        return f"{b_epochs:g} epoch{'s' if b_epochs != 1 else ''}", f"{n_epochs:g} epochs"
    return None


def _identity(doc) -> dict | None:
    """The identity of a run specification as stored (resolved_config.json, metrics.json's `run`); None where it
    is not one."""
    try:
        return RunSpec.model_validate(doc).identity()
    except ValueError:
        return None


def _stored_identity(out: Path) -> dict | None:
    """The identity of the run resolved_config.json holds; None where it cannot be read (the claim says so)."""
    try:
        return _identity(json.loads((out / CONFIG_NAME).read_text()))
    except (OSError, ValueError):
        return None


def check_resumable(spec: RunSpec) -> None:
    """--resume continues the run in --out: a folder that does not exist, or holds no run of ftopt's (no manifest,
    steps, metrics or checkpoint), is refused, so that a mistyped --out is not taken for a new run's folder."""
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
    """What --resume will do, where it is not plain: a run that stopped before its first checkpoint starts again
    from step 0 (what ranks.interrupted_line promises), and a run given a longer schedule trains on from its last
    checkpoint; each said in one line rather than silently."""
    out = spec.output_dir
    if not spec.output.resume:
        return None
    if not any(out.glob("checkpoint-*")) and not (out / "metrics.json").exists():
        return f"--resume: {out} holds no checkpoint yet; the run starts again from step 0."
    before = _stored_identity(out)
    longer = lengthened(before, spec.identity()) if before is not None else None
    if longer is None:
        return None
    ck = latest_complete_checkpoint(out)
    start = int(ck.name[11:]) if ck else 0
    return f"--resume: the run in {out} was {longer[0]} long; it continues from step {start} to {longer[1]}."


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
    """The run in `out` is `spec`'s, or `spec` lengthens its schedule (lengthened)."""
    before = _stored_identity(out)
    if before is None:
        raise FtoptError(
            f"{out} holds a run without a readable {CONFIG_NAME}; it cannot be resumed safely. "
            "Use --overwrite or another --out."
        ) from None
    diff = differences(before, spec.identity())
    if diff and lengthened(before, spec.identity()) is None:
        raise FtoptError(
            f"--resume: {out} holds a different run: {'; '.join(diff[:3])}"
            f"{' and more' if len(diff) > 3 else ''}. Use the same settings, --overwrite, or another --out."
        )


def finished_run(spec: RunSpec) -> dict | None:
    """With --resume, the metrics of the same run when it already finished (it trains nothing then: the Trainer
    would otherwise run one step past --max-steps from its last checkpoint). A run stopped by --max-hours is not
    finished, nor one that `spec` gives a longer schedule (lengthened); a different run is refused as for any
    --resume."""
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
    # the run that finished is the one metrics.json measured: the claim of a lengthened run rewrote the config
    measured = _identity(metrics.get("run")) or _stored_identity(out)
    return None if measured is not None and lengthened(measured, spec.identity()) else metrics
