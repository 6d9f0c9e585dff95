"""`ftopt demo`: the whole loop — plan, bench, calibrate, report — on this machine's CPU, offline.

It fine-tunes the shipped base model (`presets/base/tiny-base`, a 4-layer llama pretrained by
scripts/build_base.py on a generated language: copy, shift and reverse words) on a task it has never seen
(`back`: every letter one step backward; see ftopt.sweep.sample_task), so the quality figures mean something: the base
scores 0% exact match, and the combinations differ in how much of the new rule they learn in the demo's steps.
ZeRO-2, ZeRO-3 and FSDP2 run over two processes (gloo); every process has one thread (one core stands for one GPU),
which keeps step times steady enough on a shared machine to calibrate on. Two one-process runs go side by side and
a two-process run alone (ftopt.sweep.schedule), so the machine carries two such processes throughout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol

from ftopt.planner.calibration_store import calibrate_and_store
from ftopt.planner.plan import plan
from ftopt.presets import base_model_dir
from ftopt.report.cli_support import report_settings
from ftopt.report.render import build_report
from ftopt.results.quality import QualityTarget
from ftopt.spec import (
    DataSpec,
    ModelRef,
    RunSpec,
    Schedule,
    TrainingSetup,
    load_hardware,
    load_model,
)
from ftopt.spec.io import atomic_write_text
from ftopt.sweep import sample_task
from ftopt.sweep.bench import REFERENCE_LORA_R, reference_combinations, run_sweep, sweep_rows, sweep_runs
from ftopt.sweep.demo_options import DEMO_QUALITY_TARGET, DEMO_STEPS, DemoOptions

DEMO_LR = 3e-3  # the same rate for every combination: the comparison is of techniques, not of tuning
DEMO_ZERO_PROCESSES = 2  # two CPU processes, so ZeRO has something to partition
DEMO_TRAIN_EXAMPLES = 4000  # ~14 tokens each: more than 120 steps x 8 x 64 tokens, so no row is seen twice
DEMO_EVAL_EXAMPLES = 64


class DemoView(Protocol):
    """Where the demo shows its progress: the terminal (ftopt.cli.display.ConsoleDemoView) or a test's recorder.
    The demo computes; its view prints."""

    def section(self, title: str) -> None: ...
    def line(self, text: str) -> None: ...
    def plan(self, p) -> None: ...
    def sweep_summary(self, rows: list, results_path: Path, target: QualityTarget) -> None: ...
    def calibration(self, fit) -> None: ...


def write_task(out: Path) -> tuple[Path, Path]:
    """The fine-tuning task as JSONL files (training rows and held-out rows)."""
    train, held_out = sample_task.finetune_task(DEMO_TRAIN_EXAMPLES, DEMO_EVAL_EXAMPLES)
    paths = out / "data" / "train.jsonl", out / "data" / "eval.jsonl"
    for path, rows in zip(paths, (train, held_out)):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return paths


def run_demo(
    out_dir: str | Path = "ftopt-runs/demo",
    steps: int = DEMO_STEPS,
    langs=("en", "ja"),
    options: DemoOptions | None = None,
    *,
    view: DemoView,
) -> dict:
    """The three steps (plan, bench, report), then the summary: demo_summary.json and each run's closing line."""
    t0 = time.perf_counter()
    o = options or DemoOptions()
    out = Path(out_dir)
    base = demo_run(out, steps)
    plan_step(base, out, view)
    target = QualityTarget.parse(o.quality_target or DEMO_QUALITY_TARGET)
    rows = bench_step(base, out, target, view, t0)
    fit, settings, reports = report_step(rows, base, out, o, langs, view)
    summary = {
        "wall_seconds": time.perf_counter() - t0,
        "runs": len(rows),
        "ok": sum(r.ok for r in rows),
        "quality_target": str(settings["quality_target"]),
        "quality": {r.label: r.measured.quality if r.measured else None for r in rows},
        "calibration": fit.model_dump() if fit else None,
        "reports": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in reports.items()},
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    for r in rows:
        view.line(quality_line(r))
    others = ", ".join(str(v["html"]) for v in list(reports.values())[1:])
    view.line(f"[bold]Report:[/] {reports[langs[0]]['html']}  (also {others})")
    view.line(f"demo finished in {summary['wall_seconds']:.0f} s: {summary['ok']} of {summary['runs']} runs succeeded")
    return summary


def demo_run(out: Path, steps: int) -> RunSpec:
    """The run every combination shares: the shipped base on the task's files, `steps` steps on this CPU."""
    base_dir = str(base_model_dir())
    train_path, eval_path = write_task(out)
    # packed sequences: every step sees exactly seq_len x micro_batch tokens, as the estimates assume
    setup = TrainingSetup.for_hardware(True, packing=True)
    setup = setup.model_copy(update={"dataset_tokens": steps * setup.micro_batch * setup.seq_len})
    return RunSpec(
        model=ModelRef(ref=base_dir, weights=True),
        hardware=load_hardware("cpu"),
        setup=setup,
        data=DataSpec(train=str(train_path), eval=str(eval_path)),
        schedule=Schedule(max_steps=steps, learning_rate=DEMO_LR),
    )


def plan_step(base: RunSpec, out: Path, view: DemoView) -> None:
    """1/3: every combination's predicted memory and time, shown and kept in plan.json."""
    view.section("1/3 plan: predicted memory and time of every combination")
    p = plan(load_model(base.model.ref), base.hardware, base.setup, lora_r=REFERENCE_LORA_R)
    view.plan(p)
    atomic_write_text(out / "plan.json", json.dumps(p.to_json(), indent=2))


def bench_step(base: RunSpec, out: Path, target: QualityTarget, view: DemoView, t0: float) -> list:
    """2/3: the seed combinations fine-tuned, two one-thread processes at any time: two one-process runs side by
    side, a ZeRO or FSDP2 run alone (ftopt.sweep.schedule). Returns this sweep's result rows."""
    steps = base.schedule.max_steps
    view.section(
        f"2/3 bench: fine-tune the pretrained base on the unseen '{sample_task.FINETUNE_OP}' task, "
        f"{steps} steps per combination (re-running skips finished ones)"
    )

    def event(kind: str, info: dict) -> None:
        tag = {"start": "running", "skip": "already done", "done": info.get("status", "")}[kind]
        view.line(f"  [{info['index']}/{info['total']}] {info['label']}: {tag}  ({time.perf_counter() - t0:.0f} s)")

    combos = reference_combinations(base.hardware)
    runs = sweep_runs(base, combos, out / "runs", zero_gpus=DEMO_ZERO_PROCESSES)
    slots = min(DEMO_ZERO_PROCESSES, os.cpu_count() or 1)
    results = run_sweep(runs, out / "results.jsonl", on_event=event, quality_target=target, slots=slots)
    rows = sweep_rows(results, runs)
    view.sweep_summary(rows, out / "results.jsonl", target)
    return rows


def report_step(rows: list, base: RunSpec, out: Path, o: DemoOptions, langs, view: DemoView):
    """3/3: the time model calibrated on the runs (stored for this machine) and the report in each language.
    Returns (calibration fit or None, the report's settings, {language: report files})."""
    view.section("3/3 report")
    fit = None
    if any(r.ok for r in rows):
        fit, _, _ = calibrate_and_store(rows, base.hardware, str((out / "results.jsonl").resolve()), base.model.ref)
        view.calibration(fit)
    settings = report_settings(
        rows,
        gpu="cpu",
        quality_target=o.quality_target or DEMO_QUALITY_TARGET,
        quality_source="src_given" if o.quality_target is not None else "src_demo",
        production=o,
    )
    reports = {lang: build_report(rows, out, lang=lang, **settings) for lang in langs}
    return fit, settings, reports


def quality_line(r) -> str:
    """One run's closing line (r: ftopt.results.rows.ResultRow): its quality figures, "not measured" where it has
    none (a run whose engine did not score generation), never a 0% it did not score."""
    if not r.ok:
        return f"  {r.label}: {r.status.value}"
    q = r.measured.quality
    em, f1 = q.get("exact_match"), q.get("token_f1")
    em_text = f"{em:.0%}" if em is not None else "not measured"
    f1_text = f"{f1:.2f}" if f1 is not None else "not measured"
    return f"  {r.label}: exact match {em_text}, token F1 {f1_text}"
