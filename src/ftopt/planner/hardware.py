"""The hardware `estimate`, `plan` and the planner page assume, and the estimator a user named: the same calls
from the terminal and the page."""

from __future__ import annotations

from pathlib import Path

from ftopt.spec.errors import FtoptError
from ftopt.spec.hardware import PLANNING_DEFAULT_GPU


def hardware(gpu: str | None):
    from ftopt.spec import load_hardware
    from ftopt.spec.device import detect_hardware

    if gpu is not None and not gpu.strip():  # "" would silently mean this machine's or the default GPU
        raise FtoptError("--gpu is empty; give a hardware preset, 'cpu' or a JSON file.")
    name = gpu or detect_hardware()
    if name is None:
        raise FtoptError("This machine's GPU has no hardware preset; pass --gpu with a preset or a JSON file.")
    return load_hardware(name)


def planning_hardware(gpu: str | None, calibration: Path | None, host_ram: str | None):
    """The hardware estimate/plan assume: preset (or this machine's), --host-ram, then the calibration applied
    explicitly (the named file, else the stored one matching hardware and library versions, else none)."""
    from ftopt.planner.calibration_store import calibrated_hardware
    from ftopt.spec.units import parse_bytes

    hw = hardware(PLANNING_DEFAULT_GPU if gpu is None else gpu)
    if host_ram is not None:
        hw = hw.model_copy(update={"host_memory_bytes": parse_bytes(host_ram, "--host-ram")})
    return calibrated_hardware(hw, calibration)


def method_of(m: str):
    from ftopt.estimate import Method

    try:
        return Method(m)
    except ValueError:
        raise FtoptError(f"--method must be one of {', '.join(x.value for x in Method)}, got '{m}'.") from None
