"""The run folder's manifest: which of its entries ftopt wrote, so that `--overwrite` removes those and nothing else.

`.ftopt-manifest.json` (written atomically) lists the folder's top-level entries that belong to the run
(`files`) and those that were there before and are not ftopt's (`foreign`: a README.md someone added, say). A run
claims the folder before it starts: it names what it may write (the fixed names of RUN_NAMES; checkpoint-* and
metrics.rank*.json while it runs), and at the end it records every entry that appeared since the claim. `--overwrite`
removes the listed entries only. A folder that is not empty and has no manifest holds someone else's files (a model
folder given as --out): it is refused, except to --resume a run written before manifests existed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftopt.spec.errors import FtoptError
from ftopt.spec.io import atomic_write_text

MANIFEST_NAME = ".ftopt-manifest.json"
MANIFEST_SCHEMA = "ftopt.manifest/1"
# What a run writes at the top of its folder under fixed names (the trainer's model and tokenizer files, our logs).
RUN_NAMES = (
    "resolved_config.json",
    "metrics.json",
    "steps.jsonl",
    "launcher.log",
    "run.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "training_args.bin",
    "README.md",  # PEFT's model card for the adapter
    "base",  # ftopt.train.base: the random-init base of a LoRA run
    "runs",  # TensorBoard events
    "logs",  # ftopt.train.ranks.LOG_DIR: one log per launched rank
)
RUN_PATTERNS = ("checkpoint-*", "metrics.rank*.json", "model-*.safetensors")  # written while the run goes on


def _entries(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name != MANIFEST_NAME} if out.is_dir() else set()


def read(out: Path) -> dict | None:
    """The manifest, or None when the folder has none (or it cannot be read: treated as none)."""
    try:
        doc = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != MANIFEST_SCHEMA:
        return None
    return {"files": sorted(set(doc.get("files", []))), "foreign": sorted(set(doc.get("foreign", [])))}


def _write(out: Path, files: set[str], foreign: set[str]) -> None:
    doc = {"schema": MANIFEST_SCHEMA, "files": sorted(files), "foreign": sorted(foreign - files)}
    atomic_write_text(out / MANIFEST_NAME, json.dumps(doc, indent=2))


def _ours(out: Path, manifest: dict) -> set[str]:
    """The run's entries now present: listed ones, and pattern matches (a crash may have left them unlisted)."""
    present = _entries(out)
    by_pattern = {p.name for pat in RUN_PATTERNS for p in out.glob(pat)}
    return (set(manifest["files"]) | by_pattern) & present - set(manifest["foreign"])


def holds_run(out: Path) -> bool:
    """A run that trained at least one step (a start that failed on its data or tokenizer left only its
    resolved_config.json: the corrected command may reuse the folder)."""
    steps = out / "steps.jsonl"
    return out.is_dir() and (
        (steps.exists() and steps.stat().st_size > 0)
        or (out / "metrics.json").exists()
        or any(out.glob("checkpoint-*"))
    )


def _other_nodes_logs(out: Path) -> set[str]:
    """{"logs"} when that is a folder of rank logs only: a per-node run's other nodes, sharing this folder, may start
    their ranks (ftopt.train.ranks.LOG_DIR) before node 0 claims it; those logs are the run's, not someone else's."""
    logs = out / "logs"
    names = [p.name for p in logs.iterdir()] if logs.is_dir() and not logs.is_symlink() else None
    ok = names is not None and all(n.startswith("rank") and n.endswith(".log") for n in names)
    return {"logs"} if ok else set()


def claim(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check and claim `out` for a run (before anything is written there): see the module docstring."""
    manifest = read(out)
    present = _entries(out)
    if manifest is None:
        # --resume of a run written before manifests: it must hold a run (steps, metrics or a checkpoint), or the
        # "resume" would write over someone's files (a model folder's config.json)
        if present - _other_nodes_logs(out) and not (resume and holds_run(out)):
            raise FtoptError(
                f"--out {out} holds files ftopt did not write ({', '.join(sorted(present)[:3])}"
                f"{', ...' if len(present) > 3 else ''}) and no {MANIFEST_NAME}; choose an empty or new folder."
            )
        # a run from before manifests (resume only): its known names are the run's, the rest is left alone
        known = {n for n in present if n in RUN_NAMES} | {p.name for pat in RUN_PATTERNS for p in out.glob(pat)}
        manifest = {"files": sorted(known), "foreign": sorted(present - known)}
    if overwrite:
        for name in _ours(out, manifest):
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        manifest = {"files": [], "foreign": manifest["foreign"]}
    out.mkdir(parents=True, exist_ok=True)
    now = _entries(out)
    foreign = (set(manifest["foreign"]) | (now - set(manifest["files"]) - _ours(out, manifest))) & now
    _write(out, (set(manifest["files"]) | set(RUN_NAMES)) - foreign, foreign)


def record(out: Path) -> None:
    """At the end of a run: the entries that are not foreign are the run's, exactly (the trainer may write names
    we did not foresee, e.g. a tokenizer's vocab.json; a planned name it did not write is no longer claimed, so a
    README.md someone adds later is theirs)."""
    foreign = set((read(out) or {"foreign": []})["foreign"])
    present = _entries(out)
    _write(out, present - foreign, foreign & present)
