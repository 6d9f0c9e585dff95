"""How well the calibrated time model predicts combinations it did not see, from a bench results file, with and
without the per-operator term (side by side on the same measurements). Prints figures; not a test.

    .venv/bin/python benchmarks/calibration_check.py ftopt-runs/demo/results.jsonl

Leave-one-out: each combination's step time is predicted by a fit on all the others (repeats merged by median).
"""

from __future__ import annotations

import argparse

from ftopt.planner.calibration import RANK_TIE_FRACTION, calibrate
from ftopt.results.rows import read_results
from ftopt.spec import load_hardware


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--gpu", default="cpu", help="hardware the runs used")
    a = ap.parse_args()
    rows, hw = read_results(a.results, warn=print), load_hardware(a.gpu)
    without = [
        r.model_copy(
            update={
                "predicted": r.predicted.model_copy(
                    update={"analytic": r.predicted.analytic.model_copy(update={"kernels_per_step": None})}
                )
            }
        )
        if r.predicted.analytic is not None
        else r
        for r in rows
    ]
    for name, fit in (("FLOPs + operators + fixed", calibrate(rows, hw)), ("FLOPs + fixed", calibrate(without, hw))):
        print(
            f"{name:26s} held out {fit.holdout_runs} of {fit.combinations}: median |error| "
            f"{fit.holdout_median_abs_error:.1%}, worst {fit.holdout_worst_abs_error:.1%}, Spearman rho "
            f"{fit.spearman_rho:.2f}, pairs > {RANK_TIE_FRACTION:.0%} apart ordered right "
            f"{fit.pairs_ordered}/{fit.pairs_compared}"
        )
        for h in fit.holdout:
            print(
                f"    {h.label:28s} predicted {h.predicted_seconds * 1e3:7.1f} ms  measured "
                f"{h.measured_seconds * 1e3:7.1f} ms  {h.predicted_seconds / h.measured_seconds - 1:+.1%}"
            )


if __name__ == "__main__":
    main()
