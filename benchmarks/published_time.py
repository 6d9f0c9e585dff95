"""ftopt's step time against training step times measured and published by others. Prints figures; not a test.

    python benchmarks/published_time.py

Every `time_rows` entry of benchmarks/published/rows.json (the file benchmarks/published.py reads for memory) names
its source (repository, path, commit, field, date), the published seconds per optimizer step and the setup it ran
under: its own `setup`, or `setup_from` a memory row of the same file with `setup_changes`. The time model
(estimate/time.py) is compute at a fraction `mfu` of the GPU's peak FLOP/s plus what does not scale with it
(optimizer traffic, dequantization, communication): step = A / mfu + B per row. One constant per GPU, mfu, is fitted
to that GPU's rows by least squares on log(predicted / published).

Printed per row: the published step, the prediction from constants fitted WITHOUT that row (leave-one-out: the
GPU's other rows, or every other row when the GPU has no other), its signed error; then the median |error| against
the target, and each GPU's mfu fitted to all its rows, the figures presets/time_constants.json ships. Rows with
`missing` are listed by the feature ftopt lacks. The estimators never read these values.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROWS = ROOT / "benchmarks" / "published" / "rows.json"
TARGET = 0.20  # median |error| of the held-out predictions
MFU_GRID = [i / 2000 for i in range(20, 2001)]  # 1% to 100% in steps of 0.05%


def load(path: Path = ROWS) -> tuple[list[dict], list[dict]]:
    """(time rows with a resolved `setup`, rows ftopt cannot express or reproduce: `missing`, some with the
    setup their source states)."""
    doc = json.loads(path.read_text())
    memory = {r["id"]: r for r in doc["rows"]}
    usable, missing = [], []
    for r in doc.get("time_rows", []):
        if "setup_from" in r:
            r = {**r, "setup": {**memory[r["setup_from"]]["setup"], **r.get("setup_changes", {})}}
        (missing if "missing" in r else usable).append(r)
    return usable, missing


def terms(setup: dict) -> tuple[float, float]:
    """(A, B) of step = A / mfu + B for this setup: A the compute at full peak, B what does not scale with mfu."""
    from ftopt.estimate.time import step_time
    from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model

    s = dict(setup)
    model, hw = load_model(s.pop("model")), load_hardware(s.pop("hardware"))
    combo = Combination(**{k: s.pop(k) for k in list(s) if k in Combination.model_fields})
    ts = TrainingSetup(**s)

    def at(mfu: float) -> float:
        return step_time(model, ts, combo, hw.with_time(hw.time_constants.model_copy(update={"mfu": mfu}))).step_seconds

    one, half = at(1.0), at(0.5)
    return half - one, 2 * one - half


def predict(a: float, b: float, mfu: float) -> float:
    return a / mfu + b


def fit_mfu(points: list[tuple[float, float, float]]) -> float:
    """The mfu minimizing the summed squared log error over (A, B, published seconds) points."""
    return min(MFU_GRID, key=lambda m: sum(math.log(predict(a, b, m) / t) ** 2 for a, b, t in points))


def leave_one_out(rows: list[dict]) -> list[float]:
    """Each row's prediction from an mfu fitted without it: to its GPU's other rows, else to all other rows."""
    out = []
    for i, r in enumerate(rows):
        others = [o for j, o in enumerate(rows) if j != i]
        same = [o for o in others if o["setup"]["hardware"] == r["setup"]["hardware"]]
        mfu = fit_mfu([(o["a"], o["b"], o["published_step_seconds"]) for o in (same or others)])
        out.append(predict(r["a"], r["b"], mfu))
    return out


def per_gpu_fit(rows: list[dict]) -> dict[str, tuple[float, list[str]]]:
    """Each GPU's mfu fitted to all its rows, with the rows behind it."""
    gpus: dict[str, list[dict]] = {}
    for r in rows:
        gpus.setdefault(r["setup"]["hardware"], []).append(r)
    return {
        g: (fit_mfu([(r["a"], r["b"], r["published_step_seconds"]) for r in rs]), [r["id"] for r in rs])
        for g, rs in gpus.items()
    }


def main() -> None:
    rows, missing = load()
    for r in rows:
        r["a"], r["b"] = terms(r["setup"])
    held_out = leave_one_out(rows)
    print(f"{'row':30} {'gpu':10} {'published':>10} {'predicted':>10} {'error':>7}   (held out: leave-one-out)")
    errors = []
    for r, p in zip(rows, held_out):
        t = r["published_step_seconds"]
        errors.append((p - t) / t)
        print(f"{r['id']:30} {r['setup']['hardware']:10} {t:9.3f}s {p:9.3f}s {errors[-1]:+7.1%}")
    med = statistics.median(abs(e) for e in errors)
    worst = max(errors, key=abs)
    verdict = "met" if med <= TARGET else "NOT met"
    print(f"median |error| {med:.1%} (target {TARGET:.0%}), worst {worst:+.1%} over {len(errors)} rows: {verdict}")
    print("\nmfu fitted to all of a GPU's rows (presets/time_constants.json):")
    for gpu, (mfu, ids) in sorted(per_gpu_fit(rows).items()):
        print(f"  {gpu:10} mfu {mfu:.4f}  from {', '.join(ids)}")
    if missing:
        print("\nRows left out, by what is missing:")
        for r in missing:
            print(f"  {r['id']}: {r['missing']}")
            if "setup" in r:  # the share of peak the stated setup would need: above ~0.7 no real step reaches
                a, b = terms(r["setup"])
                need = a / (r["published_step_seconds"] - b) if r["published_step_seconds"] > b else math.inf
                print(f"    the stated setup needs mfu {need:.2f} to match it")


if __name__ == "__main__":
    main()
