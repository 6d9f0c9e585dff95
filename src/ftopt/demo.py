"""`ftopt demo`: the whole loop — plan, bench, calibrate, report — on the built-in tiny model and data, on this
machine's CPU, offline. ZeRO-2 and ZeRO-3 run over two processes (DeepSpeed launcher, gloo); every process has one
thread (one core stands for one GPU), which keeps step times steady enough on a shared machine to calibrate on."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ftopt.bench import reference_combinations, run_sweep, sweep_runs
from ftopt.calibration_store import calibrate_and_store
from ftopt.display import console, print_calibration, print_plan
from ftopt.io import atomic_write_text
from ftopt.plan import plan
from ftopt.report.render import build_report
from ftopt.spec import DataSpec, ModelRef, RunSpec, Schedule, TrainingSetup, load_hardware, load_model

DEMO_MODEL = "tiny-llama"
DEMO_STEPS = 120
DEMO_LR = 3e-3  # the tiny random-init model learns the built-in task fastest near this rate (README figures)
DEMO_ZERO_PROCESSES = 2  # two CPU processes, so ZeRO has something to partition


def run_demo(out_dir: str | Path = "ftopt-runs/demo", steps: int = DEMO_STEPS, langs=("en", "ja")) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    spec, hw = load_model(DEMO_MODEL), load_hardware("cpu")
    # packed sequences: every step sees exactly seq_len x micro_batch tokens, as the estimates assume
    setup = TrainingSetup.for_hardware(True)
    setup = setup.model_copy(update={"dataset_tokens": steps * setup.micro_batch * setup.seq_len})
    base = RunSpec(model=ModelRef(ref=DEMO_MODEL), hardware=hw, setup=setup, data=DataSpec(packing=True),
                   schedule=Schedule(max_steps=steps, learning_rate=DEMO_LR))
    console.rule("1/3 plan: predicted memory and time of every combination")
    p = plan(spec, hw, setup, lora_r=8)
    print_plan(p, limit=8)
    atomic_write_text(out / "plan.json", json.dumps(p.to_json(), indent=2))

    console.rule(f"2/3 bench: each reference combination trained for {steps} steps (re-running skips finished ones)")
    combos = reference_combinations(hw, lora_r=8)

    def event(kind: str, info: dict) -> None:
        tag = {"start": "running", "skip": "already done", "done": info.get("status", "")}[kind]
        console.print(f"  [{info['index']}/{info['total']}] {info['label']}: {tag}  "
                      f"({time.perf_counter() - t0:.0f} s)")

    runs = sweep_runs(base, combos, out / "runs", zero_gpus=DEMO_ZERO_PROCESSES)
    rows = run_sweep(runs, out / "results.jsonl", on_event=event)

    console.rule("3/3 report")
    fit = None
    if any(r["status"] == "ok" for r in rows):
        fit, _ = calibrate_and_store(rows, hw, str((out / "results.jsonl").resolve()), DEMO_MODEL)
        print_calibration(fit)
    reports = {}
    for lang in langs:
        reports[lang] = build_report(rows, out, lang=lang, hardware="cpu", capacity_bytes=None,
                                     cost_per_gpu_hour=None, calibration=fit.model_dump() if fit else None)
    wall = time.perf_counter() - t0
    summary = {"wall_seconds": wall, "runs": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
               "calibration": fit.model_dump() if fit else None, "reports": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in reports.items()}}
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    console.print(f"[bold]Report:[/] {reports[langs[0]]['html']}  (also {', '.join(str(v['html']) for v in list(reports.values())[1:])})")
    console.print(f"demo finished in {wall:.0f} s: {summary['ok']} of {summary['runs']} runs succeeded")
    return summary
