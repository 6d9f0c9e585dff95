"""The time model's constants, apart from the device's facts: what a step achieves on this hardware (fraction of
peak FLOP/s, per-step and per-operator overheads, the DeepSpeed engine's cost per ZeRO stage, bitsandbytes' rates)
and where those numbers came from.

A HardwareSpec holds datasheet facts (memory, peak FLOP/s, bandwidths) that no measurement changes; its
`time_constants` field holds one `TimeConstants`, either the shipped default (presets/time_constants.json, with its
source) or a calibration fitted by `ftopt bench` (ftopt.planner.calibration_store, with the results files, date and runs
behind it). docs/time-constants.md describes both and the file shapes.
The constants are never overwritten in place: a calibration is a new TimeConstants object, applied explicitly.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ftopt.spec.calibration import CalibrationProvenance

# The keys HardwareSpec carried itself before the constants were split off (hardware files and run.json files
# written then still load: ftopt.spec.hardware moves them here).
FLAT_KEYS = (
    "mfu",
    "fixed_step_seconds",
    "seconds_per_kernel",
    "zero_step_seconds",
    "fsdp_step_seconds",
    "dequant_bytes_per_s",
    "bnb_optimizer_bytes_per_s",
)


class DefaultProvenance(BaseModel):
    """Constants nobody measured here: the shipped assumption (or a hardware file's own figures) and its source."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["default"] = "default"
    source: str = Field(min_length=1, description="where the figures come from (paper, benchmark run, file)")
    rows: tuple[str, ...] = Field(
        (), description="the published runs the figures were fitted to (time_rows ids, benchmarks/published/rows.json)"
    )
    fitted_on: str | None = Field(None, description="the date they were fitted (YYYY-MM-DD); None = not fitted")
    not_applied: str | None = Field(
        None, description="why the stored calibration for this hardware was not applied (None: there was none)"
    )


Provenance = Annotated[DefaultProvenance | CalibrationProvenance, Field(discriminator="kind")]


class TimeConstants(BaseModel):
    """The fitted (or assumed) constants of estimate/time.py, with their provenance."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mfu: float = Field(gt=0, le=1, description="achieved fraction of peak FLOP/s")
    fixed_step_seconds: float = Field(0.0, ge=0, description="per-step overhead not proportional to FLOPs")
    seconds_per_kernel: float = Field(
        0.0, ge=0, description="exposed cost of one dispatched operator (0: launches hide behind the kernels)"
    )
    zero_step_seconds: dict[int, float] = Field(
        default_factory=dict, description="extra per-step cost of the DeepSpeed engine by ZeRO stage"
    )
    fsdp_step_seconds: dict[str, float] = Field(
        default_factory=dict, description="extra per-step cost of the FSDP2 engine by mode (an Fsdp value)"
    )
    dequant_bytes_per_s: float | None = Field(
        None,
        gt=0,
        description="achieved rate of bitsandbytes dequantization (bytes read + written per second); "
        "None: memory-bound at the device's HBM bandwidth, the GPU assumption",
    )
    bnb_optimizer_bytes_per_s: float | None = Field(
        None,
        gt=0,
        description="achieved rate of a bitsandbytes 8-bit optimizer update (bytes moved per second); "
        "None: memory-bound at the device's HBM bandwidth, the GPU assumption",
    )
    provenance: Provenance

    @property
    def calibration(self) -> CalibrationProvenance | None:
        """The calibration these constants were fitted by, or None for a default."""
        p = self.provenance
        return p if isinstance(p, CalibrationProvenance) else None

    def figures(self) -> str:
        """The constants in one phrase (units spelled out), for the CLI and the report."""
        zero = "".join(f", ZeRO-{z} +{s * 1e3:.3g} ms" for z, s in sorted(self.zero_step_seconds.items()))
        zero += "".join(f", FSDP2-{f} +{s * 1e3:.3g} ms" for f, s in sorted(self.fsdp_step_seconds.items()))
        return (
            f"mfu {self.mfu:.1%}, {self.seconds_per_kernel * 1e6:.3g} µs per operator, "
            f"fixed {self.fixed_step_seconds * 1e3:.3g} ms per step{zero}"
        )


@functools.lru_cache(maxsize=1)
def _defaults_file() -> dict:
    return json.loads(resources.files("ftopt.presets").joinpath("time_constants.json").read_text())


def default_time_constants(hardware: str) -> TimeConstants:
    """The shipped constants for a preset (or `cpu`), else the generic default, each with its source
    (presets/time_constants.json: the one place the defaults live). Where published runs exist for a GPU the figures
    are fitted to them (benchmarks/published_time.py) and name those rows and the date; elsewhere they are the
    stated assumption."""
    data = _defaults_file()
    entry = data["hardware"].get(hardware, data["generic"])
    about = ("source", "rows", "fitted_on")
    figures = {k: v for k, v in entry.items() if k not in about}
    prov = DefaultProvenance(
        source=entry.get("source", data["source"]), rows=entry.get("rows", ()), fitted_on=entry.get("fitted_on")
    )
    return TimeConstants(**figures, provenance=prov)


def migrate_flat(data: dict, where: str) -> dict:
    """A hardware document with the constants at its top level (written before the split) as the current shape:
    the constants under `time_constants`, with the old `calibration` (if any) as their provenance, else `where` as
    their source; figures the document lacks come from the default for its name."""
    flat = {k: data[k] for k in FLAT_KEYS if k in data}
    if not flat and "calibration" not in data:
        return data
    out = {k: v for k, v in data.items() if k not in FLAT_KEYS and k != "calibration"}
    if "time_constants" in out:
        raise ValueError(
            f"give the time-model constants under 'time_constants' only, not also at the top level ({sorted(flat)})"
        )
    cal = data.get("calibration")
    base = default_time_constants(str(data.get("name", ""))).model_dump(exclude={"provenance"})
    prov = {**cal, "kind": "calibrated"} if cal else {"kind": "default", "source": where}
    out["time_constants"] = {**base, **flat, "provenance": prov}
    return out
