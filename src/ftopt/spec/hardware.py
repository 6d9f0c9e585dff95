"""Hardware spec: per-device memory and throughput, read from data files in ftopt/presets/hardware.

`cpu` is special: its memory comes from the OS and its FLOP/s from a short matmul probe, cached on disk, so that
ftopt can plan (and `ftopt demo` can compare) runs on the machine it is on.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import time
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftopt.spec.calibration import CalibrationProvenance
from ftopt.spec.combination import Attention
from ftopt.spec.errors import FtoptError, validation_message
from ftopt.spec.io import read_json_object
from ftopt.spec.time_constants import TimeConstants, default_time_constants, migrate_flat
from ftopt.spec.training import Precision

# FlashAttention 2 and bf16 tensor cores both need Ampere (compute capability 8.0) or newer: flash-attn README
# ("FlashAttention-2 currently supports Ampere, Ada, or Hopper GPUs"), CUDA programming guide (bf16 from sm_80).
AMPERE = (8, 0)


class HardwareSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    memory_bytes: int = Field(gt=0, description="device memory as the driver reports it")
    peak_flops: dict[str, float] = Field(
        description="dense peak FLOP/s by compute dtype (bf16, fp16, fp32); a dtype "
        "absent here is one the device cannot run"
    )
    compute_capability: tuple[int, int] | None = Field(
        None, description="CUDA compute capability (major, minor); None for a CPU"
    )
    attention_kernels: tuple[Attention, ...] = Field(
        (Attention.EAGER, Attention.SDPA), description="attention implementations the device can run"
    )
    hbm_bandwidth_bytes_per_s: float = Field(gt=0)
    intra_node_bandwidth_bytes_per_s: float = Field(gt=0, description="per-GPU, one direction (NVLink or PCIe)")
    inter_node_bandwidth_per_gpu_bytes_per_s: float = Field(
        gt=0,
        description="network bandwidth between nodes available to each GPU, one direction (a DGX gives every "
        "GPU its own NIC; a cloud box shares one among its GPUs)",
    )
    host_link_bandwidth_bytes_per_s: float = Field(gt=0, description="GPU <-> CPU memory (PCIe), used by offload")
    host_memory_bytes: int = Field(1024 * 2**30, gt=0, description="CPU RAM per node, needed by offload")
    source: str = ""
    is_cpu: bool = False
    time_constants: TimeConstants = Field(
        description="the time model's constants for this device with their provenance: the shipped default, or a "
        "calibration applied explicitly (ftopt.planner.calibration_store.apply_calibration)"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_shapes(cls, data):
        if isinstance(data, dict):  # constants at the top level (before the split) move under `time_constants`
            where = f"given with the hardware {data.get('name', '?')} (a file or run specification of before the split)"
            data = migrate_flat(data, where)
            if "time_constants" not in data:
                data = {**data, "time_constants": default_time_constants(str(data.get("name", "")))}
        if isinstance(data, dict) and "inter_node_bandwidth_bytes_per_s" in data:
            raise ValueError(
                "inter_node_bandwidth_bytes_per_s (per node) is now inter_node_bandwidth_per_gpu_bytes_per_s "
                f"(per GPU NIC); got {data['inter_node_bandwidth_bytes_per_s']!r} under the old name"
            )
        return data

    @model_validator(mode="after")
    def _capabilities(self) -> HardwareSpec:
        old = self.is_cpu or self.compute_capability is None or self.compute_capability < AMPERE
        got = (
            "set compute_capability, e.g. [8, 0]"
            if self.compute_capability is None and not self.is_cpu
            else f"got {self.compute_capability}"
        )
        if Attention.FLASH in self.attention_kernels and old:
            raise ValueError(
                f"{self.name} lists flash attention but FlashAttention 2 needs a CUDA GPU of compute "
                f"capability 8.0 or newer ({got})"
            )
        if "bf16" in self.peak_flops and old and not self.is_cpu:
            raise ValueError(f"{self.name} lists bf16 but bf16 needs compute capability 8.0 or newer ({got})")
        return self

    @property
    def calibration(self) -> CalibrationProvenance | None:
        """The calibration the time constants were fitted by; None while they are the default."""
        return self.time_constants.calibration

    def with_time(self, constants: TimeConstants) -> HardwareSpec:
        """The same device with other time-model constants (a calibration); the device facts stay as they are."""
        return self.model_copy(update={"time_constants": constants})

    def flops_for(self, dtype: str) -> float | None:
        return self.peak_flops.get(dtype)

    def _capability_text(self) -> str:
        if self.is_cpu:
            return "a CPU"
        cc = self.compute_capability
        return f"compute capability {cc[0]}.{cc[1]}" if cc else "compute capability unknown"

    def check_runs(self, precision: Precision, attn: Attention) -> None:
        """Raise FtoptError (one sentence) when this device cannot run `precision` or `attn`; call it before
        loading anything."""
        dtype = precision.compute_dtype
        if self.is_cpu and precision is Precision.FP16_MIXED:  # as `train` refuses it (ftopt.train.preflight)
            raise FtoptError(FP16_NEEDS_CUDA)
        if dtype not in self.peak_flops:
            others = [p.value for p in Precision if p.compute_dtype in self.peak_flops]
            raise FtoptError(
                f"{self.name} cannot run {dtype} (no {dtype} units, {self._capability_text()}); "
                f"use --precision {' or '.join(others)}."
            )
        if attn not in self.attention_kernels:
            if self.is_cpu:
                why = f"{attn.value} attention needs a CUDA GPU"
            elif attn is Attention.FLASH:
                why = f"FlashAttention 2 needs compute capability 8.0 or newer, this GPU has {self._capability_text()}"
            else:
                why = "the hardware spec does not list it"
            ok = " or ".join(a.value for a in self.attention_kernels)
            raise FtoptError(f"{self.name} cannot run {attn.value} attention ({why}); use --attn {ok}.")
        if not attn.runs_in(precision):
            raise FtoptError(
                f"--attn {attn.value} cannot run --precision {precision.value}: flash-attn takes fp16/bf16 inputs "
                "only; use --precision bf16-mixed (or fp16-mixed) or --attn sdpa."
            )


FP16_NEEDS_CUDA = "fp16-mixed needs a CUDA GPU (loss scaling runs on the GPU); on a CPU use fp32 or bf16-mixed."


def device_words(is_cpu: bool) -> tuple[str, str]:
    """What sentences call the unit one training process runs on, singular and plural: a GPU, or on a CPU a
    process (ZeRO's and FSDP2's ranks there are processes, each standing for one GPU; the memory is the host's)."""
    return ("process", "processes") if is_cpu else ("GPU", "GPUs")


def hardware_names() -> list[str]:
    return sorted(
        [
            p.name.removesuffix(".json")
            for p in resources.files("ftopt.presets.hardware").iterdir()
            if p.name.endswith(".json")
        ]
        + ["cpu"]
    )


def _cache_dir() -> Path:
    return Path(os.environ.get("FTOPT_CACHE", Path.home() / ".cache" / "ftopt"))


def probe_cpu_flops(n: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s of this machine: best of a few n x n matmuls (2 n^3 FLOPs each)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=1)
def cpu_peak_flops() -> float:
    """The best fp32 FLOP/s this machine has shown: one probe per process (~0.1 s), and the cache keeps the maximum
    over probes. A peak is a maximum: a single probe taken while other work loaded the cores (19.6 GFLOP/s here,
    against 180 when quiet) stayed cached and capped every later calibration at its mfu <= 1 bound."""
    from ftopt.spec.io import atomic_write_text

    cache = _cache_dir() / "cpu_probe.json"
    cached = 0.0
    try:
        cached = float(json.loads(cache.read_text())["fp32_flops"])
    except (ValueError, KeyError, OSError, TypeError):
        pass  # none yet, or unreadable: the probe decides
    flops = max(cached, probe_cpu_flops())
    if flops > cached:
        try:
            atomic_write_text(cache, json.dumps({"fp32_flops": flops, "cores": os.cpu_count()}))
        except OSError:
            pass  # a read-only home only costs us the cache
    return flops


def cpu_spec() -> HardwareSpec:
    """This machine as a 'device': OS memory, probed FLOP/s (cached), memory bandwidth as a stated assumption."""
    import psutil

    flops = cpu_peak_flops()
    mem = psutil.virtual_memory().total
    # CPU "bf16" runs at about the fp32 rate without AMX; we state that rather than guess a speed-up.
    # bitsandbytes' CPU backend dequantizes and updates 8-bit states with chains of torch ops, far from memory-bound:
    # its rates are time constants (presets/time_constants.json, measured by benchmarks/quant_time.py).
    return HardwareSpec(
        name="cpu",
        memory_bytes=mem,
        peak_flops={"fp32": flops, "bf16": flops, "fp16": flops},
        hbm_bandwidth_bytes_per_s=20e9,
        intra_node_bandwidth_bytes_per_s=5e9,
        inter_node_bandwidth_per_gpu_bytes_per_s=1e9,
        host_link_bandwidth_bytes_per_s=20e9,
        host_memory_bytes=mem,
        is_cpu=True,
        source=f"this machine: {os.cpu_count()} cores, memory from the OS, fp32 FLOP/s from a matmul probe",
    )


# What estimate and plan assume without --gpu (a plan is often made before any GPU is rented): the most common
# datacenter training GPU; train and bench use the machine's own.
PLANNING_DEFAULT_GPU = "a100-80g"


def is_hardware_file(name: str) -> bool:
    """`--gpu` names a JSON file (read from disk), not a preset or `cpu`."""
    return Path(name).suffix == ".json"


def load_hardware(name: str) -> HardwareSpec:
    """A preset, `cpu` (this machine) or a user's JSON file, as is: no calibration is applied here (see
    ftopt.planner.calibration.calibrated_hardware, which callers use explicitly). A file's errors name its
    fields, never its values (a file given by mistake may hold secrets)."""
    path = Path(name)
    if is_hardware_file(name):
        data = read_json_object(path, "hardware file")
        try:
            return HardwareSpec(**data)
        except ValidationError as e:
            raise FtoptError(
                f"The hardware file {path} is not a valid hardware spec: {validation_message(e, values=False)}."
            ) from None
    if name == "cpu":
        return cpu_spec()
    names = hardware_names()
    if name not in names and path.exists():  # a path where a preset name belongs: "Unknown GPU" would mislead
        kind = "a folder" if path.is_dir() else "a file without the .json suffix"
        raise FtoptError(
            f"'{name}' is {kind}, so neither a hardware preset nor a hardware file; give one of {', '.join(names)}, "
            "or a hardware .json file."
        )
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Known: {', '.join(names)}."
        raise FtoptError(f"Unknown GPU '{name}'.{hint}")
    data = json.loads(resources.files("ftopt.presets.hardware").joinpath(f"{name}.json").read_text())
    return HardwareSpec(**data)
