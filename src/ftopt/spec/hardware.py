"""Hardware spec: per-device memory and throughput, read from data files in ftopt/presets/hardware.

`cpu` is special: its memory comes from the OS and its FLOP/s from a short matmul probe, cached on disk, so that
ftopt can plan (and `ftopt demo` can compare) runs on the machine it is on.
"""
from __future__ import annotations

import difflib
import json
import os
import time
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ftopt.errors import FtoptError


class HardwareSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    memory_bytes: int = Field(gt=0, description="device memory as the driver reports it")
    peak_flops: dict[str, float] = Field(description="dense peak FLOP/s by compute dtype: bf16, fp16, fp32")
    hbm_bandwidth_bytes_per_s: float = Field(gt=0)
    intra_node_bandwidth_bytes_per_s: float = Field(gt=0, description="per-GPU, one direction (NVLink or PCIe)")
    inter_node_bandwidth_bytes_per_s: float = Field(gt=0, description="per node, one direction")
    host_link_bandwidth_bytes_per_s: float = Field(gt=0, description="GPU <-> CPU memory (PCIe), used by offload")
    mfu: float = Field(gt=0, le=1, description="achieved fraction of peak FLOP/s; an assumption until calibrated")
    host_memory_bytes: int = Field(1024 * 2**30, gt=0, description="CPU RAM per node, needed by offload")
    fixed_step_seconds: float = Field(0.0, ge=0, description="per-step overhead not proportional to FLOPs (calibrated)")
    seconds_per_kernel: float = Field(0.0, ge=0, description="exposed cost of one dispatched operator (calibrated; "
                                                             "0 assumes launches hide behind the kernels)")
    zero_step_seconds: dict[int, float] = Field(default_factory=dict,
                                                description="extra per-step cost of the DeepSpeed engine by ZeRO stage (calibrated)")
    source: str = ""
    is_cpu: bool = False

    def flops_for(self, dtype: str) -> float | None:
        return self.peak_flops.get(dtype)


def hardware_names() -> list[str]:
    return sorted([p.name.removesuffix(".json") for p in resources.files("ftopt.presets.hardware").iterdir()
                   if p.name.endswith(".json")] + ["cpu"])


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


def cpu_spec() -> HardwareSpec:
    """This machine as a 'device': OS memory, probed FLOP/s (cached), memory bandwidth as a stated assumption."""
    import psutil

    cache = _cache_dir() / "cpu_probe.json"
    flops = None
    if cache.exists():
        try:
            flops = float(json.loads(cache.read_text())["fp32_flops"])
        except (ValueError, KeyError, OSError):
            flops = None
    if flops is None:
        flops = probe_cpu_flops()
        from ftopt.io import atomic_write_text

        try:
            atomic_write_text(cache, json.dumps({"fp32_flops": flops, "cores": os.cpu_count()}))
        except OSError:
            pass  # a read-only home only costs us the cache
    mem = psutil.virtual_memory().total
    # CPU "bf16" runs at about the fp32 rate without AMX; we state that rather than guess a speed-up.
    return HardwareSpec(
        name="cpu", memory_bytes=mem, peak_flops={"fp32": flops, "bf16": flops, "fp16": flops},
        hbm_bandwidth_bytes_per_s=20e9, intra_node_bandwidth_bytes_per_s=5e9, inter_node_bandwidth_bytes_per_s=1e9,
        host_link_bandwidth_bytes_per_s=20e9, mfu=0.5, host_memory_bytes=mem, is_cpu=True,
        source=f"this machine: {os.cpu_count()} cores, memory from the OS, fp32 FLOP/s from a matmul probe",
    )


def load_hardware(name: str) -> HardwareSpec:
    """A preset or `cpu`, with this machine's stored time-model calibration applied; or a user's JSON file as is."""
    from ftopt.calibration import apply_calibration

    path = Path(name)
    if path.suffix == ".json":
        try:
            return HardwareSpec(**json.loads(path.read_text()))
        except OSError as e:
            raise FtoptError(f"Cannot read the hardware file {path}: {e.strerror}.") from None
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise FtoptError(f"The hardware file {path} is not a valid hardware spec: {str(e).splitlines()[0]}.") from None
    if name == "cpu":
        return apply_calibration(cpu_spec())
    names = hardware_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Known: {', '.join(names)}."
        raise FtoptError(f"Unknown GPU '{name}'.{hint}")
    data = json.loads(resources.files("ftopt.presets.hardware").joinpath(f"{name}.json").read_text())
    return apply_calibration(HardwareSpec(**data))
