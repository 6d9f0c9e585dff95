"""One plan for the page: the same calls `ftopt plan` makes (ftopt.planner.resolve, planner.hardware.planning_hardware,
ftopt.planner.request.plan_for, with the same PlanLevers), the same JSON `plan --json` prints, then views the page draws, derived from that JSON alone (no
estimate is made here: the technique comparison and the Pareto front are lookups among the plan's candidates)."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

from ftopt.serve.query import PlanQuery
from ftopt.spec import HardwareSpec, ModelSpec
from ftopt.spec.errors import FtoptError

GIB = 2**30
GB = 1e9  # bandwidths are quoted in decimal GB/s by vendors (and in the presets' sources)


def local_refused(flag: str, value: str, instead: str) -> FtoptError:
    """The one answer for a path off loopback, whether or not it exists (the server never looks)."""
    return FtoptError(f"{flag} {value}: local files are read only when the server listens on loopback; {instead}.")


def hardware_for(q: PlanQuery, allow_local: bool = True) -> HardwareSpec:
    """The CLI's planning hardware (preset, stored calibration), with the page's custom memory/bandwidth on top.
    A hardware JSON file is read only on loopback, as a local model is (load_planned_model)."""
    from ftopt.planner.hardware import planning_hardware
    from ftopt.spec.hardware import is_hardware_file

    if not allow_local and is_hardware_file(q.gpu):
        raise local_refused("--gpu", q.gpu, "pick a preset and set its memory and bandwidth here instead")
    hw = planning_hardware(q.gpu, None, None)
    custom = {}
    for name, value, field, unit in (
        ("gpu_memory_gib", q.gpu_memory_gib, "memory_bytes", GIB),
        ("gpu_bandwidth_gbs", q.gpu_bandwidth_gbs, "hbm_bandwidth_bytes_per_s", GB),
    ):
        if value is not None:
            if not 0 < value * unit < 2**63:  # within a device's int64 byte count (and bytes/s)
                raise FtoptError(f"{name} must be positive and below {2**63 / unit:g}, got {value:g}.")
            custom[field] = int(value * unit) if field == "memory_bytes" else value * unit
    if not custom:
        return hw
    return HardwareSpec.model_validate({**hw.model_dump(), **custom, "name": f"{hw.name} (custom)"})


def load_planned_model(q: PlanQuery, config: dict | None, allow_local: bool) -> ModelSpec:
    """The preset, Hub id or local folder named by `q.model`, or an uploaded config.json (`config`). Off loopback
    the file system is not consulted at all: a path-like name is refused unlooked-at, any other is a preset or a
    Hub id."""
    from ftopt.spec import load_model
    from ftopt.spec.hf_config import from_hf_config
    from ftopt.spec.hub import is_local_path

    if config is not None:
        return from_hf_config(config, name=Path(q.model).stem or "uploaded")
    if not allow_local and is_local_path(q.model):
        raise local_refused("--model", q.model, "upload its config.json instead")
    return load_model(q.model, local=allow_local)


def make_plan(q: PlanQuery, config: dict | None = None, allow_local: bool = True):
    """(plan JSON as `ftopt plan --json` prints it, its RunSpec or None, the ModelSpec, the HardwareSpec)."""
    from ftopt.planner import resolve
    from ftopt.planner.request import plan_for, with_run

    m = load_planned_model(q, config, allow_local)
    hw = hardware_for(q, allow_local)
    setup = resolve.plan_setup(
        m,
        hw,
        seq_len=q.seq_len,
        micro_batch=q.micro_batch,
        precision=q.precision,
        batching=q.batching,
        gpus_per_node=q.gpus,
        nodes=q.nodes,
        dataset_tokens=q.dataset_tokens,
        headroom=q.headroom,
    )
    p = plan_for(q, m, hw, setup)
    ref = resolve.model_ref(q.model, weights=config is None and resolve.has_weights(q.model, local=allow_local))
    planned = with_run(p, m, hw, setup, ref)
    return planned.to_json(), planned.run, m, hw


def estimated_by(doc: dict) -> str:
    """The estimator that chose the plan's recommendation ("analytic" or "traced"): the export's name says it."""
    return (doc.get("answered_by") or {}).get("recommended") or doc["method"]


def export_zip(doc: dict, run, model: ModelSpec) -> bytes:
    """plan.json plus the `plan --export` files (ftopt.export.configs.export_run), as one zip."""
    from ftopt.export.configs import export_run

    if run is None:
        raise FtoptError("Nothing fits, so there is no run to export; relax the plan's constraints.")
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.comment = f"ftopt plan export: the run the {estimated_by(doc)} estimate chose".encode()
        z.writestr("plan.json", json.dumps(doc, indent=2))
        for path in export_run(run, model, Path(tmp) / "export"):
            z.write(path, f"export/{path.name}")
    return buf.getvalue()
