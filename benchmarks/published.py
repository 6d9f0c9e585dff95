"""ftopt's predictions against GPU memory peaks measured and published by others. Prints figures; not a test.

    python benchmarks/published.py            # every row of benchmarks/published/rows.json, both estimators
    python benchmarks/published.py --analytic-only
    python benchmarks/published.py --seq-len 650   # every predicted row at another longest batch (a what-if)

Each row of benchmarks/published/rows.json names its source (repository, path, commit, field), what was measured
(torch.cuda.max_memory_allocated or max_memory_reserved), the measured bytes and the setup it ran under. For a row
with a `setup`, the estimators predict the same quantity (peak_bytes_per_gpu for allocated, reserved_bytes_per_gpu
for reserved) and the signed error (predicted - measured) / measured is printed, then the median |error| and the
worst per estimator against the targets (docs/accuracy.md). Rows measured as a reserved peak whose traced allocated
peak alone is larger are listed (`overstated`): no run can do that, so their setup describes a larger step than the
run took. A row with `missing` is one ftopt cannot express: the feature is named, and the features are ranked by how
many rows they block. The estimators never read these values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROWS = ROOT / "benchmarks" / "published" / "rows.json"
TARGETS = {"traced": (0.02, 0.05), "analytic": (0.04, 0.08)}  # median |error|, worst |error|
PREDICTED = {"max_memory_allocated": "peak_bytes_per_gpu", "max_memory_reserved": "reserved_bytes_per_gpu"}
GIB = 2**30


def predict_both(setup: dict, method: str) -> tuple[int, int]:
    """The estimator's allocated and reserved peaks (bytes per GPU) for a row's setup."""
    from ftopt.estimate import estimate
    from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model

    s = dict(setup)
    model, hw = load_model(s.pop("model")), load_hardware(s.pop("hardware"))
    combo = Combination(**{k: s.pop(k) for k in Combination.model_fields if k in s})
    e = estimate(model, hw, TrainingSetup(**s), combo, method)
    return e.peak_bytes_per_gpu, e.reserved_bytes_per_gpu


def measured_kind(peaks: tuple[int, int], measured: str) -> int:
    """Of (allocated, reserved), the figure for the quantity the source measured."""
    allocated, reserved = peaks
    return allocated if PREDICTED[measured] == "peak_bytes_per_gpu" else reserved


def predict(setup: dict, measured: str, method: str) -> int:
    """The estimator's figure for the quantity the source measured."""
    return measured_kind(predict_both(setup, method), measured)


def overstated(rows: list[dict], traced_allocated: dict[str, int]) -> list[tuple[str, int, int]]:
    """Rows measured as a reserved peak whose traced *allocated* peak (by row id, as predicted for the table)
    already exceeds it. A real run cannot do that (the caching allocator reserves every byte it hands out: reserved
    >= allocated at every instant), so the row's setup describes a larger step than the run took: here, a longest
    batch shorter than the truncation length."""
    out = []
    for r in rows:
        allocated = traced_allocated.get(r["id"])
        if allocated is not None and r["measured"] == "max_memory_reserved" and allocated > r["value_bytes"]:
            out.append((r["id"], allocated, r["value_bytes"]))
    return out


def header(methods: list[str]) -> str:
    """The table's head: row, measured, what was measured, then each method's prediction and signed error (the
    shape benchmarks/gpu_check.py prints too)."""
    return f"{'row':24} {'measured':>9} {'what':9} " + " ".join(f"{m:>9} {'err':>7}" for m in methods)


def line(row_id: str, measured: int, what: str, predicted: dict[str, int | None]) -> str:
    """One row: the measured bytes, then each method's predicted bytes and (predicted - measured) / measured."""
    out = f"{row_id:24} {measured / GIB:8.2f}G {what:9} "
    for p in predicted.values():
        out += f"{p / GIB:8.2f}G {(p - measured) / measured:+7.1%} " if p else f"{'-':>9} {'-':>7} "
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analytic-only", action="store_true", help="skip the traced estimator (seconds per row)")
    ap.add_argument(
        "--seq-len",
        type=int,
        help="predict every row at this padded length instead of its setup's: the runs publish no batch shape, so "
        "the longest batch is a what-if (docs/accuracy.md)",
    )
    args = ap.parse_args()
    from ftopt.spec import quiet

    quiet.install()  # third-party notices an ftopt command would not show (bitsandbytes' optional CPU kernel)
    if args.seq_len is not None and args.seq_len <= 0:
        ap.error(f"--seq-len is a token count above 0, got {args.seq_len}")
    methods = ["analytic"] if args.analytic_only else ["analytic", "traced"]
    rows = json.loads(ROWS.read_text())["rows"]
    errors: dict[str, list[float]] = {m: [] for m in methods}
    traced_allocated: dict[str, int] = {}
    print(header(methods))
    for r in rows:
        if "setup" not in r:
            continue
        setup = r["setup"] if args.seq_len is None else {**r["setup"], "seq_len": args.seq_len}
        peaks = {m: predict_both(setup, m) for m in methods}
        predicted = {m: measured_kind(both, r["measured"]) for m, both in peaks.items()}
        if "traced" in peaks:
            traced_allocated[r["id"]] = peaks["traced"][0]
        for m, p in predicted.items():
            errors[m].append((p - r["value_bytes"]) / r["value_bytes"])
        print(line(r["id"], r["value_bytes"], r["measured"][11:], predicted), flush=True)
    for m in methods:
        med, worst = statistics.median(abs(e) for e in errors[m]), max(errors[m], key=abs)
        tm, tw = TARGETS[m]
        print(
            f"{m:9} median |error| {med:.1%} (target {tm:.0%}), worst {worst:+.1%} (target {tw:.0%}) "
            f"over {len(errors[m])} rows: {'met' if med <= tm and abs(worst) <= tw else 'NOT met'}"
        )
    if "traced" in methods:
        over = overstated(rows, traced_allocated)
        print(f"\nRows whose traced allocated peak alone exceeds the measured reserved peak: {len(over)}")
        for row_id, allocated, measured in over:
            print(f"  {row_id:24} allocated {allocated / GIB:.2f}G > reserved {measured / GIB:.2f}G measured")
    blocked = Counter(r["missing"] for r in rows if "missing" in r)
    print("\nRows ftopt cannot express, by the missing feature (most rows first):")
    for feature, n in blocked.most_common():
        ids = ", ".join(r["id"] for r in rows if r.get("missing") == feature)
        print(f"  {n}  {feature}: {ids}")
    near = [r for r in rows if "informative_setup" in r]
    if near:
        print(
            "\nThe nearest setup ftopt can express, for scale only (not in the targets; the missing feature differs):"
        )
        for r in near:
            p = predict(r["informative_setup"], r["measured"], "analytic")
            err = (p - r["value_bytes"]) / r["value_bytes"]
            print(
                f"  {r['id']:24} {r['value_bytes'] / GIB:8.2f}G {r['measured'][11:]:9} analytic {p / GIB:8.2f}G {err:+7.1%}"
            )


if __name__ == "__main__":
    main()
