"""Traces answered once: a traced step's per-phase peaks, kept in memory and under $FTOPT_CACHE/traces.

A FakeTensor trace of a few layers costs about a second of CPU, and loading transformers and PEFT to run one
several more. A plan confirms its pick, its longest context and its fewest GPUs, often on the same configuration
(the pick on fewer GPUs, an FSDP2 or ZeRO-1 candidate whose one-process step does not depend on the GPU count), and
the planner page and later plans ask again. The result is a pure function of what the trace reads, so it is stored
under a digest of exactly that: the model's config, the combination, the setup fields the step depends on, the
traced depth and device, the library versions (torch, transformers, PEFT) and ftopt's own source. Any change to
one of them is a different key: a stored result is never stale, only unused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from ftopt.spec import Combination, ModelSpec, TrainingSetup

# Setup fields the traced step never reads: they size the dataset, the margin and the cluster. The GPU count
# matters only through what the caller passes as `world` (the gradient share and ZeRO-2's partition).
_NOT_TRACED = {"dataset_tokens", "epochs", "headroom", "gpus_per_node", "nodes"}
_MEMORY_ENTRIES = 256  # a few KB each: enough for the planner page's session
_memory: OrderedDict[str, TraceResult] = OrderedDict()


@dataclass(frozen=True)
class TraceResult:
    """What the extrapolation reads from one trace: per phase, (the rank's bytes at its peak, category snapshot)."""

    phase_peaks: dict[str, tuple[float, dict[str, int]]]
    grad_weight: float
    count_states: bool


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """Digest of the libraries that run the step and of every ftopt source file (one read per process, ~10 ms)."""
    h = hashlib.sha256()
    for dist in ("torch", "transformers", "peft"):
        try:
            h.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none;".encode())
    root = Path(str(resources.files("ftopt")))
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def key(spec: ModelSpec, setup: TrainingSetup, combo: Combination, num_layers: int, device: str, world: tuple) -> str:
    """The digest of everything a trace of `num_layers` layers reads; `world`: how the GPU count enters it."""
    doc = {
        "spec": spec.model_dump(mode="json"),
        "combination": combo.model_dump(mode="json", warnings=False),
        "setup": setup.model_dump(mode="json", exclude=_NOT_TRACED, warnings=False),
        "world": list(world),
        "num_layers": num_layers,
        "device": device,
        "code": _code_version(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _folder() -> Path:
    return Path(os.environ.get("FTOPT_CACHE", Path.home() / ".cache" / "ftopt")) / "traces"


def get(k: str) -> TraceResult | None:
    """The stored result, from memory or disk; None when this trace never ran (or its file is unreadable)."""
    if k in _memory:
        _memory.move_to_end(k)
        return _memory[k]
    try:
        doc = json.loads((_folder() / f"{k}.json").read_text())
        r = TraceResult(
            phase_peaks={p: (float(m), dict(s)) for p, (m, s) in doc["phase_peaks"].items()},
            grad_weight=float(doc["grad_weight"]),
            count_states=bool(doc["count_states"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _remember(k, r)
    return r


def put(k: str, r: TraceResult) -> None:
    """Keep `r` in memory and on disk (a read-only cache folder only costs the next process a trace)."""
    from ftopt.spec.io import atomic_write_text

    _remember(k, r)
    doc = {"phase_peaks": r.phase_peaks, "grad_weight": r.grad_weight, "count_states": r.count_states}
    try:
        atomic_write_text(_folder() / f"{k}.json", json.dumps(doc))
    except OSError:
        pass


def _remember(k: str, r: TraceResult) -> None:
    _memory[k] = r
    _memory.move_to_end(k)
    while len(_memory) > _MEMORY_ENTRIES:
        _memory.popitem(last=False)


def forget() -> None:
    """Drop the results held in memory (the files stay): the next lookups read the disk or trace again."""
    _memory.clear()
