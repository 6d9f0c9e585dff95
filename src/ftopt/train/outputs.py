"""The run folder: what a run writes there, and the rule that one folder holds one run.

A second `ftopt train` into a folder that holds a run is refused (exit 2) unless `--resume` (the same run,
continued: its resolved config must match) or `--overwrite` (the earlier run's files are removed first; files ftopt
did not write are left alone). Without this rule two runs mixed their steps.jsonl and their model files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftopt.errors import FtoptError
from ftopt.spec import RunSpec

CONFIG_NAME = "resolved_config.json"
# Everything a run writes at the top of its folder (checkpoint-* folders and runs/ are matched separately).
RUN_FILES = (
    CONFIG_NAME,
    "metrics.json",
    "steps.jsonl",
    "launcher.log",
    "run.json",
    "model.safetensors",
    "adapter_model.safetensors",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "training_args.bin",
    "README.md",
)


def holds_run(out: Path) -> bool:
    """A run that trained at least one step (a start that failed on its data or tokenizer left only its
    resolved_config.json: the corrected command may reuse the folder)."""
    steps = out / "steps.jsonl"
    return out.is_dir() and (
        (steps.exists() and steps.stat().st_size > 0)
        or (out / "metrics.json").exists()
        or any(out.glob("checkpoint-*"))
    )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k} ({va!r} then, {vb!r} now)")
    return out


def _remove_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)  # ftopt.train.ranks.LOG_DIR: one log per rank
    for p in list(out.glob("checkpoint-*")) + list(out.glob("metrics.rank*.json")):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def prepare_output(spec: RunSpec, claim: bool = True) -> None:
    """Check and claim the run folder before anything expensive; write resolved_config.json. A per-node run's
    other nodes (`claim=False`) only make their folder, which may be node 0's (shared) or their own."""
    from ftopt.io import atomic_write_text

    out = spec.output_dir
    if out.exists() and not out.is_dir():
        raise FtoptError(f"The output folder {out} is a file; choose a folder with --out.")
    if not claim:
        out.mkdir(parents=True, exist_ok=True)
        return
    if holds_run(out):
        if spec.output.resume:
            _check_same_run(out, spec)
        elif spec.output.overwrite:
            _remove_run(out)
        else:
            raise FtoptError(
                f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another --out."
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
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
    diff = _differences(before, spec.identity())
    if diff:
        raise FtoptError(
            f"--resume: {out} holds a different run: {'; '.join(diff[:3])}"
            f"{' and more' if len(diff) > 3 else ''}. Use the same settings, --overwrite, or another --out."
        )
