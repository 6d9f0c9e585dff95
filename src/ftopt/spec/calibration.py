"""Where a time-model calibration came from: the typed provenance a HardwareSpec carries once one is applied.

The fitting and storage live in ftopt/planner/calibration.py (which imports this module; nothing here imports it back).
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The bound that matters: a fit that pins mfu at 100% could not tell the FLOP rate from the overheads.
MFU_AT_BOUND = "mfu at its 100% bound"


def installed_version(dist: str) -> str | None:
    """A distribution's version from package metadata, None when it is not installed. Reads no module: estimate and
    plan stay instant and run without deepspeed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class SoftwareVersions(BaseModel):
    """The libraries whose kernels and engine decide step time; a calibration applies only under the same ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    torch: str | None = None
    transformers: str | None = None
    deepspeed: str | None = None

    @classmethod
    def installed(cls) -> SoftwareVersions:
        v = installed_version
        return cls(torch=v("torch"), transformers=v("transformers"), deepspeed=v("deepspeed"))

    def label(self) -> str:
        return ", ".join(f"{k} {v or 'absent'}" for k, v in self.model_dump().items())


class CalibrationProvenance(BaseModel):
    """What a stored calibration was fitted on, shown by every estimate/plan that uses it and recorded in a RunSpec."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["calibrated"] = "calibrated"  # TimeConstants.provenance: fitted, as against a default
    hardware: str = Field(description="hardware preset name the runs used")
    models: list[str] = Field(description="models benchmarked (a fit on a tiny model says little about a 70B one)")
    versions: SoftwareVersions
    runs: int = Field(ge=0, description="successful runs pooled into the fit")
    combinations: int = Field(ge=0, description="distinct (model, combination, process count) points")
    sources: list[str] = Field(description="results files or sweeps the points came from")
    date: str = Field(description="UTC date of the latest fit, ISO 8601")
    at_bound: list[str] = Field(
        default_factory=list, description="fitted constants that sit on a bound (mfu at 100%, an overhead at 0)"
    )
    holdout_median_abs_error: float | None = Field(None, description="leave-one-out step-time error, median")
    fewest_steps: int | None = Field(
        None, ge=0, description="fewest steady (measured, warm-up left out) steps behind one point; None = unknown"
    )
    file: str | None = Field(None, description="the calibration file it was read from")

    @property
    def mfu_at_bound(self) -> bool:
        return MFU_AT_BOUND in self.at_bound

    def summary(self) -> str:
        """One line: what, from how much, under which versions, and any constant stuck on a bound."""
        held = (
            f", held-out error {self.holdout_median_abs_error:.1%}" if self.holdout_median_abs_error is not None else ""
        )
        bound = f"; at a bound: {', '.join(self.at_bound)}" if self.at_bound else ""
        points = f"{self.combinations} point{'' if self.combinations == 1 else 's'}"
        return (
            f"{self.runs} run{'' if self.runs == 1 else 's'} of {points} on {self.hardware} "
            f"({', '.join(self.models)}), {self.date}, {self.versions.label()}{held}{bound}"
            + (f"; from {', '.join(self.sources)}" if self.sources else "")
            + (f"; file {self.file}" if self.file else "")
        )
