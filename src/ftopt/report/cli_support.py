"""Turn the report and demo flags into typed report settings, checking them before anything is drawn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ftopt.errors import FtoptError
from ftopt.quality import QualityTarget
from ftopt.report.sections import production_target_for
from ftopt.spec import HardwareSpec, load_hardware


def recorded_hardware(rows: list[dict]) -> HardwareSpec:
    """The hardware the rows ran on, from each results line's run specification (`run.hardware`); lines written
    before results carried it (ftopt.bench/1) say nothing, and with none recorded it is 'cpu', as it was."""
    specs = {}
    for r in rows:
        hw = (r.get("run") or {}).get("hardware")
        if isinstance(hw, dict):
            specs.setdefault(hw.get("name"), hw)
    if len(specs) > 1:
        raise FtoptError(
            f"The results ran on different hardware ({', '.join(sorted(map(str, specs)))}); "
            "pass --gpu to say which one the report describes."
        )
    if not specs:
        return load_hardware("cpu")
    (doc,) = specs.values()
    return HardwareSpec.model_validate(doc)


def report_settings(
    rows: list[dict],
    *,
    gpu: str | None,
    title: str | None,
    quality_target: str | None,
    quality_source: str = "src_given",
    target_gpu: str | None,
    target_gpus: int,
    target_nodes: int,
    target_model: str | None = None,
    dataset_tokens: int | None,
    epochs: float,
    retrains_per_year: float,
    cost_per_gpu_hour: float | None,
    currency: str,
    max_hours: float | None,
    headroom: float | None = None,
) -> dict:
    """Keyword arguments for `build_report` (ReportSettings fields)."""
    from ftopt.calibration import calibrate

    target = QualityTarget.parse(quality_target) if quality_target else None
    if (target_gpu is None) != (dataset_tokens is None):
        raise FtoptError(
            "Give --target-gpu and --dataset-tokens together to project production; got only "
            f"{'--target-gpu' if target_gpu else '--dataset-tokens'}."
        )
    production = None
    if target_gpu is not None:
        load_hardware(target_gpu)  # an unknown preset fails here with its own message
        production = production_target_for(
            rows,
            model=target_model,
            gpu=target_gpu,
            gpus_per_node=target_gpus,
            nodes=target_nodes,
            dataset_tokens=dataset_tokens,
            epochs=epochs,
            retrains_per_year=retrains_per_year,
            cost_per_gpu_hour=cost_per_gpu_hour,
            currency=currency,
            max_hours=max_hours,
            headroom=headroom,
        )
    hw = load_hardware(gpu) if gpu is not None else recorded_hardware(rows)
    try:
        fit = calibrate(rows, hw)
    except FtoptError:
        fit = None  # no successful run with predictions: the report says so without a calibration line
    return dict(
        title=title,
        hardware=hw.name,
        capacity_bytes=None if hw.is_cpu else hw.memory_bytes,
        cost_per_gpu_hour=cost_per_gpu_hour,
        currency=currency,
        max_hours=max_hours,
        quality_target=target,
        quality_source=quality_source,
        production=production,
        calibration=fit.model_dump() if fit else None,
    )


def write_report(path: Path, out: Path, *, lang: str, warn: Callable[[str], None], **flags) -> dict[str, Path]:
    """`ftopt report` once its paths are checked: read the results (a corrupt line is a warning), settings from the
    flags (`report_settings` keywords), write the files; returns their paths by kind."""
    from ftopt.bench import read_results
    from ftopt.report.render import build_report

    rows = read_results(path, warn=warn)
    if not rows:
        raise FtoptError(f"The results file {path} has no valid result line.")
    return build_report(rows, out, lang=lang, **report_settings(rows, **flags))
