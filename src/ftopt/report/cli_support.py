"""Turn the report and demo flags into typed report settings, checking them before anything is drawn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ftopt.report.projection import production_target_for
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import ResultRow
from ftopt.spec import HardwareSpec, ProductionOptions, load_hardware
from ftopt.spec.errors import FtoptError


def recorded_hardware(rows: list[ResultRow]) -> HardwareSpec:
    """The hardware the rows ran on, from each results line's run specification (`run.hardware`); lines written
    before results carried it (ftopt.bench/1) say nothing, and with none recorded it is 'cpu', as it was."""
    specs = {}
    for r in rows:
        if r.run is not None:
            specs.setdefault(r.run.hardware.name, r.run.hardware)
    if len(specs) > 1:
        raise FtoptError(
            f"The results ran on different hardware ({', '.join(sorted(map(str, specs)))}); "
            "pass --gpu to say which one the report describes."
        )
    if not specs:
        return load_hardware("cpu")
    (hw,) = specs.values()
    return hw


def bench_target(rows: list[ResultRow]) -> QualityTarget | None:
    """The quality target the sweep was run with (`ftopt bench --quality-target`): the last line's that has one."""
    return next((r.quality_target for r in reversed(rows) if r.quality_target is not None), None)


def report_settings(
    rows: list[ResultRow],
    *,
    gpu: str | None = None,
    title: str | None = None,
    quality_target: str | None = None,
    quality_source: str = "src_given",
    production: ProductionOptions | None = None,
    headroom: float | None = None,
) -> dict:
    """Keyword arguments for `build_report` (ReportSettings fields). `production` holds the production flags;
    its target GPU and model are checked here, before any projection."""
    from ftopt.planner.calibration import calibrate

    if title is not None and not title.strip():  # '' would silently fall back to the default heading
        raise FtoptError("--title is empty; give a title, or leave it out for the default one.")

    p = production or ProductionOptions()
    if headroom is not None:
        from ftopt.spec import TrainingSetup

        TrainingSetup(headroom=headroom)  # its rule and message, checked even without a projection
    target = QualityTarget.parse(quality_target) if quality_target else bench_target(rows)
    if quality_target is None and target is not None:
        quality_source = "src_bench"
    projected = None
    if p.projects:
        load_hardware(p.target_gpu)  # an unknown preset fails here with its own message
        if p.target_model is not None:
            from ftopt.spec import load_model

            load_model(p.target_model)  # likewise an unknown target model, before any projection
        projected = production_target_for(rows, p, headroom)
    hw = load_hardware(gpu) if gpu is not None else recorded_hardware(rows)
    try:
        fit = calibrate(rows, hw)
    except FtoptError:
        fit = None  # no successful run with predictions: the report says so without a calibration line
    return dict(
        title=title,
        hardware=hw.name,
        capacity_bytes=None if hw.is_cpu else hw.memory_bytes,
        cost_per_gpu_hour=p.cost_per_gpu_hour,
        currency=p.currency,
        max_hours=p.max_hours,
        quality_target=target,
        quality_source=quality_source,
        production=projected,
        calibration=fit.model_dump() if fit else None,
    )


def write_report(path: Path, out: Path, *, lang: str, warn: Callable[[str], None], **flags) -> dict[str, Path]:
    """`ftopt report` once its paths are checked: read the results (a line that is not a result row is a warning
    when others are; with none valid, the error alone says how many and why), settings from the flags
    (`report_settings` keywords), write the files; returns their paths by kind."""
    from ftopt.report.render import build_report
    from ftopt.results.rows import scan_results

    found = scan_results(path)
    if not found.rows:
        raise found.no_rows_error()
    for message in found.warnings():
        warn(message)
    rows = found.rows
    settings = report_settings(rows, **flags)
    check_target(rows, settings["quality_target"])
    return build_report(rows, out, lang=lang, **settings)


def check_target(rows: list[ResultRow], target: QualityTarget | None) -> None:
    """An unknown metric fails before anything is drawn (ftopt.report.decision.check_metric)."""
    from ftopt.report.decision import check_metric

    if target is not None:
        check_metric(target, [r for r in rows if r.ok])
