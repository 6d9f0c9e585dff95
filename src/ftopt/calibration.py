"""Per-hardware time-model constants fitted from measured runs (`ftopt bench`), stored with their provenance.

Stored under $FTOPT_CACHE/calibration/<hardware>.json (default ~/.cache/ftopt). `load_hardware` applies them, so
later `plan`/`estimate` calls use measured efficiency instead of the datasheet assumption.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ftopt.io import atomic_write_text


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hardware: str
    mfu: float = Field(gt=0, le=1)
    fixed_step_seconds: float = Field(0.0, ge=0, description="per-step overhead not proportional to FLOPs")
    zero_step_seconds: dict[int, float] = Field(default_factory=dict, description="DeepSpeed engine cost per step, by stage")
    source: str = Field(description="where the numbers come from: results file, runs used, fit error")


def calibration_path(hardware: str) -> Path:
    root = Path(os.environ.get("FTOPT_CACHE", Path.home() / ".cache" / "ftopt"))
    return root / "calibration" / f"{hardware}.json"


def save_calibration(cal: Calibration) -> Path:
    path = calibration_path(cal.hardware)
    atomic_write_text(path, cal.model_dump_json(indent=2))
    return path


def load_calibration(hardware: str) -> Calibration | None:
    path = calibration_path(hardware)
    if not path.exists():
        return None
    try:
        return Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # a corrupt cache falls back to the datasheet assumption


def apply_calibration(hw):
    cal = load_calibration(hw.name)
    if cal is None:
        return hw
    return hw.model_copy(update={"mfu": cal.mfu, "fixed_step_seconds": cal.fixed_step_seconds,
                                 "zero_step_seconds": cal.zero_step_seconds,
                                 "source": f"{hw.source}; time model calibrated: {cal.source}"})
