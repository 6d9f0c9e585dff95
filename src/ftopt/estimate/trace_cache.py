"""Traces answered once: a traced step's per-phase peaks, kept in memory and under $FTOPT_CACHE/traces.

A FakeTensor trace of a few layers costs about a second of CPU, and loading transformers and PEFT to run one
several more. A plan confirms its pick, its longest context and its fewest GPUs, often on the same configuration
(the pick on fewer GPUs, an FSDP2 or ZeRO-1 candidate whose one-process step does not depend on the GPU count), and
the planner page and later plans ask again. The result is a pure function of what the trace reads, so it is stored
under a digest of exactly that: the model's config, the combination, the setup fields the step depends on, the
traced depth and device, the library versions (torch, transformers, PEFT) and ftopt's own source. Any change to
one of them is a different key: a stored result is never stale, only unused.

ftopt also ships results for the configurations its preset plans confirm (presets/traces.json, written by
scripts/trace_seed.py), so that a first plan need not trace or load transformers and PEFT. That table names the
library versions and the ftopt source files (with their digests) its traces ran; it answers only while every one
of them is what this process has, and otherwise a trace runs as if it were absent. It is keyed like the store,
less the digest of all of ftopt's source, which the table's own check replaces.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ftopt.spec import Combination, ModelSpec, TrainingSetup
from ftopt.spec.calibration import installed_version

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


@dataclass(frozen=True)
class TraceKey:
    """Where one trace's result is looked up: `store`, the digest of what it reads and of all of ftopt's source
    (the store); `seed`, the same less the source digest (the packaged table, which checks its sources itself).
    `call`: the trace's arguments as JSON, kept beside a stored result so that scripts/trace_seed.py can run it
    again; not part of the key."""

    store: str
    seed: str
    call: dict[str, Any] = field(compare=False, hash=False)


_LIBRARIES = ("torch", "transformers", "peft")


def library_versions() -> dict[str, str]:
    """The versions of the libraries that run the traced step ('none' where one is absent)."""
    return {dist: installed_version(dist) or "none" for dist in _LIBRARIES}


def source_root() -> Path:
    """The folder that holds ftopt's package (source paths in the table are relative to it: 'ftopt/...')."""
    return Path(str(resources.files("ftopt"))).parent


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """Digest of the libraries that run the step and of every ftopt source file (one read per process, ~10 ms)."""
    h = hashlib.sha256()
    for dist, version in library_versions().items():
        h.update(f"{dist}={version};".encode())
    root = Path(str(resources.files("ftopt")))
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def key(
    spec: ModelSpec, setup: TrainingSetup, combo: Combination, num_layers: int, device: str, world: tuple
) -> TraceKey:
    """The digests of everything a trace of `num_layers` layers reads; `world`: how the GPU count enters it."""
    doc = {
        "spec": spec.model_dump(mode="json"),
        "combination": combo.model_dump(mode="json", warnings=False),
        "setup": setup.model_dump(mode="json", exclude=_NOT_TRACED, warnings=False),
        "world": list(world),
        "num_layers": num_layers,
        "device": device,
    }
    call = {**doc, "setup": setup.model_dump(mode="json", warnings=False)}  # the whole setup, to run it again
    return TraceKey(store=_digest({**doc, "code": _code_version()}), seed=_digest(doc), call=call)


def seed_path() -> Path:
    """The packaged table (ftopt/presets/traces.json)."""
    return Path(str(resources.files("ftopt.presets"))) / "traces.json"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _seed() -> dict[str, TraceResult]:
    """The packaged results, or none when the table is absent or was made by other libraries or other source."""
    try:
        doc = json.loads(seed_path().read_text())
        if doc["libraries"] != library_versions():
            return {}
        root = source_root()
        for rel, digest in doc["sources"].items():
            if file_digest(root / rel) != digest:
                return {}
        return {k: _result(v) for k, v in doc["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _result(doc: dict) -> TraceResult:
    return TraceResult(
        phase_peaks={p: (float(m), dict(s)) for p, (m, s) in doc["phase_peaks"].items()},
        grad_weight=float(doc["grad_weight"]),
        count_states=bool(doc["count_states"]),
    )


def result_doc(r: TraceResult) -> dict[str, Any]:
    """`r` as JSON (the store's files and the packaged table)."""
    return {"phase_peaks": r.phase_peaks, "grad_weight": r.grad_weight, "count_states": r.count_states}


def _folder() -> Path:
    return Path(os.environ.get("FTOPT_CACHE", Path.home() / ".cache" / "ftopt")) / "traces"


def get(k: TraceKey) -> TraceResult | None:
    """The result from memory, the store or the packaged table; None when this trace never ran (or its file is
    unreadable)."""
    if k.store in _memory:
        _memory.move_to_end(k.store)
        return _memory[k.store]
    try:
        r = _result(json.loads((_folder() / f"{k.store}.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        r = _seed().get(k.seed)
        if r is None:
            return None
        put(k, r)  # the store then holds every answer a plan used, whichever source gave it
        return r
    _remember(k.store, r)
    return r


def put(k: TraceKey, r: TraceResult) -> None:
    """Keep `r` in memory and on disk (a read-only cache folder only costs the next process a trace)."""
    from ftopt.spec.io import atomic_write_text

    _remember(k.store, r)
    try:
        atomic_write_text(_folder() / f"{k.store}.json", json.dumps({**result_doc(r), "call": k.call}))
    except OSError:
        pass


def _remember(k: str, r: TraceResult) -> None:
    _memory[k] = r
    _memory.move_to_end(k)
    while len(_memory) > _MEMORY_ENTRIES:
        _memory.popitem(last=False)


def forget() -> None:
    """Drop the results held in memory (the files stay): the next lookups read the disk, the table or trace again."""
    _memory.clear()
    _seed.cache_clear()
