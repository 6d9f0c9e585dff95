"""Stored time-model calibrations: provenance, merging of new fits with earlier ones, and explicit application.

Nothing applies a calibration behind the caller's back: `load_hardware` returns the preset as is, and
`calibrated_hardware` is the one explicit call that applies either a named file (`--calibration FILE`) or the
stored calibration that matches this hardware and these library versions.

Storage: $FTOPT_CACHE/calibration/<hardware>/<torch>_<transformers>_<deepspeed>.json (default ~/.cache/ftopt), one
file per hardware and library versions, so a fit made under other versions is never applied silently.

Merge rule: a file keeps every measured point (one per model, combination and process count, with the number of
runs behind it and the results file it came from). A new bench's point replaces the stored point of the same
combination from its own results file (its results are re-read, so the new point holds the earlier runs of that
combination too); every other point stays. The constants are then refitted on all fit-worthy points, identical
points from different files pooled by a run-weighted mean. A two-run smoke bench therefore adds two runs to an
eight-run fit instead of replacing it.

Points on fewer than MIN_STEADY_STEPS steady steps (a smoke bench's `--max-steps 4`) are stored, each with why, but
left out of the fit while a longer point remains (ftopt.planner.calibration.fit_worthy); a short point replaces only
a short one, so a smoke bench into a results file never displaces the full bench's points of that file, while a
longer point replaces a short one as well as a long one, so a smoke bench then the full one leaves no stale point.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftopt.planner.calibration import (
    CalibrationFit,
    TimePoint,
    calibrate_points,
    fit_worthy,
    short_reason,
    time_points,
)
from ftopt.spec.calibration import CalibrationProvenance, SoftwareVersions
from ftopt.spec.errors import FtoptError, validation_message
from ftopt.spec.hardware import HardwareSpec
from ftopt.spec.io import atomic_write_text, read_text
from ftopt.spec.time_constants import TimeConstants

STORE_SCHEMA = "ftopt.calibration/3"
# The constants `ftopt bench` fits (ftopt.planner.calibration.CalibrationFit); the other time constants (bitsandbytes rates)
# are kept from the hardware's default.
FITTED = ("mfu", "fixed_step_seconds", "seconds_per_kernel", "zero_step_seconds", "fsdp_step_seconds")


class StoredPoint(BaseModel):
    """One measured point of a fit: the median step time of `runs` runs of one combination of one model."""

    model_config = ConfigDict(extra="forbid")
    model: str
    label: str
    gpus: int = Field(ge=1)
    zero: int = Field(ge=0, le=3)
    fsdp: str = "none"  # FSDP2 mode of the run (Fsdp value)
    ideal_seconds: float = Field(gt=0, description="FLOPs per step / peak FLOP/s of the hardware")
    kernels: int | None = Field(None, description="dispatched operators per step")
    measured_seconds: float = Field(gt=0)
    runs: int = Field(ge=1)
    steps: int | None = Field(None, ge=0, description="steady steps behind measured_seconds; None = not recorded")
    source: str = Field(description="the results file (or sweep) it came from")
    excluded: str | None = Field(None, description="why the fit left this point out; None = the fit stands on it")

    def same_point(self) -> tuple:
        return self.model, self.label, self.gpus, self.zero, self.fsdp, round(self.ideal_seconds, 15), self.kernels


class Calibration(BaseModel):
    """A stored calibration: the fitted time constants (their provenance inside) and the points they were fitted on.

    ftopt.calibration/2 files kept the constants and the provenance at the top level: they load (`_migrate`)."""

    model_config = ConfigDict(extra="forbid")
    schema_: str = Field(STORE_SCHEMA, alias="schema")
    constants: TimeConstants
    points: list[StoredPoint]

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data):
        if not isinstance(data, dict) or "constants" in data or "provenance" not in data:
            return data
        flat = {k: data[k] for k in FITTED if k in data}
        rest = {k: v for k, v in data.items() if k not in FITTED and k != "provenance"}
        prov = {**data["provenance"], "kind": "calibrated"}
        return {**rest, "schema": STORE_SCHEMA, "constants": {**flat, "provenance": prov}}

    @model_validator(mode="after")
    def _calibrated(self) -> Calibration:
        if self.constants.calibration is None:
            raise ValueError("a stored calibration's constants need a calibrated provenance, got a default")
        return self

    @property
    def provenance(self) -> CalibrationProvenance:
        return self.constants.calibration


def _cache_root() -> Path:
    return Path(os.environ.get("FTOPT_CACHE", Path.home() / ".cache" / "ftopt")) / "calibration"


def _safe(part: str) -> str:
    """A path component from a name a user's hardware file may set: no separators, never '.' or '..'."""
    return re.sub(r"[^A-Za-z0-9.+-]", "-", part).lstrip(".") or "-"


def calibration_path(hardware: str, versions: SoftwareVersions) -> Path:
    slug = "_".join(_safe(v or "none") for v in versions.model_dump().values())
    return _cache_root() / _safe(hardware) / f"{slug}.json"


def read_calibration(path: Path) -> Calibration:
    text = read_text(path, "calibration file")
    try:
        return Calibration.model_validate_json(text)
    except ValidationError as e:
        raise FtoptError(f"{path} is not a calibration written by 'ftopt bench': {validation_message(e)}.") from None


def find_calibration(hardware: str, versions: SoftwareVersions | None = None) -> Calibration | None:
    """The stored calibration for this hardware under these library versions (installed ones by default)."""
    path = calibration_path(hardware, versions or SoftwareVersions.installed())
    if not path.exists():
        return None
    try:
        return read_calibration(path)
    except FtoptError:
        return None  # a corrupt or old-format cache is ignored: the estimate says "uncalibrated"


def apply_calibration(hw: HardwareSpec, cal: Calibration, file: Path | None = None) -> HardwareSpec:
    """`hw` with the calibration's time constants (provenance naming `file`); the device facts are unchanged, and
    a rate the calibration does not carry (files from before it stored them) stays the hardware's default."""
    c = cal.constants
    kept = {k: getattr(hw.time_constants, k) for k in TimeConstants.model_fields if getattr(c, k) is None}
    prov = c.provenance.model_copy(update={"file": str(file)} if file else {})
    return hw.with_time(c.model_copy(update={**kept, "provenance": prov}))


# A stored calibration is applied only when its median held-out step-time error (each combination predicted by a fit
# on the others, ftopt.planner.calibration) is at most this. Sweeps of the reference points on this project's CPUs
# check at 3.0% and 4.2% (planner/choice.py, TIME_MODEL_ERROR), and repeats of one combination on a shared machine
# differ by up to ~10% (RANK_TIE_FRACTION): above 15% the fit predicts runs it did not see worse than that noise
# explains (too few or too short runs, a loaded machine), so it does not describe the hardware and would rank
# combinations on error; the default constants, with their stated source, are the honester answer.
MAX_HOLDOUT_ERROR = 0.15


def unfit_reasons(prov: CalibrationProvenance) -> list[str]:
    """Why a calibration is not fit to apply unasked (empty: it is): the fit pinned mfu to its bound, failed its
    held-out check, or stands on too few measured steps. A file from before a figure was stored is not judged on it."""
    why = []
    if prov.mfu_at_bound:
        why.append("its mfu sits at the 100% bound (the runs could not tell the FLOP rate from the overheads)")
    err = prov.holdout_median_abs_error
    if err is not None and err > MAX_HOLDOUT_ERROR:
        why.append(f"its held-out step-time error is {err:.1%} median, above the {MAX_HOLDOUT_ERROR:.0%} allowed")
    short = short_reason(prov.fewest_steps)
    if short is not None:
        why.append(f"a point stands on {short}")
    return why


def not_applied_note(prov: CalibrationProvenance, path: Path, why: list[str]) -> str:
    """The one sentence plan/estimate show beside the default constants when the stored calibration was refused."""
    return (
        f"the stored calibration {path} ({prov.runs} run{'' if prov.runs == 1 else 's'}, {prov.date}) is not "
        f"applied: {'; '.join(why)}; a bench with more or longer runs refits it, --calibration FILE applies it anyway"
    )


def calibrated_hardware(hw: HardwareSpec, file: Path | None = None) -> HardwareSpec:
    """Apply the calibration named by `file` (it must be for this hardware; other library versions are allowed,
    since the user asked for it), else the stored one that matches hardware and installed versions when it passes
    `unfit_reasons` (else the hardware's constants, their provenance saying why it was not applied), else none."""
    if file is not None:
        cal = read_calibration(file)
        if cal.provenance.hardware != hw.name:
            raise FtoptError(
                f"The calibration {file} was fitted on {cal.provenance.hardware}, not {hw.name}; "
                f"use --gpu {cal.provenance.hardware} or another calibration file."
            )
        return apply_calibration(hw, cal, file)
    cal = find_calibration(hw.name)
    if cal is None:
        return hw
    path = calibration_path(hw.name, cal.provenance.versions)
    why = unfit_reasons(cal.provenance)
    if not why:
        return apply_calibration(hw, cal, path)
    if hw.calibration is not None:  # a hardware file's own calibrated constants: they stand, as they would have
        return hw
    note = not_applied_note(cal.provenance, path, why)
    tc = hw.time_constants
    return hw.with_time(tc.model_copy(update={"provenance": tc.provenance.model_copy(update={"not_applied": note})}))


def _pooled(points: list[StoredPoint]) -> list[TimePoint]:
    """Identical points from different results files as one, by a run-weighted mean of their medians."""
    groups: dict[tuple, list[StoredPoint]] = {}
    for p in points:
        groups.setdefault(p.same_point(), []).append(p)
    several = len({p.model for p in points}) > 1
    out = []
    for g in groups.values():
        runs = sum(p.runs for p in g)
        seconds = sum(p.measured_seconds * p.runs for p in g) / runs
        p = g[0]
        # the combination names the point; the model only where the fit spans several, by its name, not its path
        label = f"{Path(p.model).name}: {p.label}" if several else p.label
        steps = None if any(q.steps is None for q in g) else sum(q.steps for q in g)
        out.append(TimePoint(label, p.ideal_seconds, p.kernels, p.zero, seconds, p.gpus, runs, p.fsdp, steps))
    return out


def _merge_key(p: StoredPoint) -> tuple:
    return p.source, p.same_point(), short_reason(p.steps) is not None


def merge_points(old: list[StoredPoint], new: list[StoredPoint]) -> list[StoredPoint]:
    """The merge rule (module docstring): a new point replaces the stored ones of its source and combination, a
    short one only a short one (a longer rerun supersedes a smoke point, never the reverse); every other point
    stays."""
    replaced = {_merge_key(p) for p in new}
    replaced |= {(source, point, True) for source, point, short in replaced if not short}
    return [p for p in old if _merge_key(p) not in replaced] + new


def _stored(pts: list[TimePoint], model: str, source: str) -> list[StoredPoint]:
    keep = ("label", "gpus", "zero", "fsdp", "ideal_seconds", "kernels", "measured_seconds", "runs", "steps")
    return [StoredPoint(model=model, source=source, **{k: getattr(p, k) for k in keep}) for p in pts]


def calibrate_and_store(
    rows: list, hw: HardwareSpec, source: str, model: str
) -> tuple[CalibrationFit, Calibration, Path]:
    """Fit the sweep's successful runs of `model` on `hw`, merge them with the stored points for this hardware and
    library versions, refit on the fit-worthy ones (fit_worthy: the others are stored with why they were left out),
    and store the result. Returns (fit of the merged points, the stored calibration with its time constants, file)."""
    versions = SoftwareVersions.installed()
    new = _stored(time_points(rows, hw)[0], model, source)
    if not new:
        raise FtoptError("No successful runs to calibrate the time model with.")
    old = find_calibration(hw.name, versions)
    used, short = fit_worthy(merge_points(old.points if old else [], new))
    fit = calibrate_points(_pooled(used)).model_copy(
        update={"left_out": [f"{p.label} ({p.source}): {short_reason(p.steps)}" for p in short]}
    )
    prov = CalibrationProvenance(
        hardware=hw.name,
        models=sorted({p.model for p in used}),
        versions=versions,
        runs=fit.fit_runs,
        combinations=fit.combinations,
        sources=sorted({p.source for p in used}),
        date=datetime.now(timezone.utc).date().isoformat(),
        at_bound=fit.at_bound,
        holdout_median_abs_error=fit.holdout_median_abs_error,
        fewest_steps=min((p.steps for p in used if p.steps is not None), default=None),
    )
    points = [p.model_copy(update={"excluded": None}) for p in used]
    points += [p.model_copy(update={"excluded": short_reason(p.steps)}) for p in short]
    cal = Calibration(constants=fitted_constants(fit, prov, hw.time_constants), points=points)
    path = calibration_path(hw.name, versions)
    atomic_write_text(path, json.dumps(cal.model_dump(mode="json", by_alias=True), indent=2))
    return fit, cal, path


def fitted_constants(fit: CalibrationFit, prov: CalibrationProvenance, base: TimeConstants) -> TimeConstants:
    """The time constants a fit produces: its fitted figures and provenance, the others (bitsandbytes rates, which
    bench does not fit) from `base`, the hardware's constants before the fit."""
    return base.model_copy(update={**{k: getattr(fit, k) for k in FITTED}, "provenance": prov})
