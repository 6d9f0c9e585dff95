"""benchmarks/published_time.py: the fit and the leave-one-out it reports, and the shipped defaults it backs."""

import json

import pytest

from ftopt.spec import load_hardware
from tests.benchmarks import ROOT, load_benchmark


@pytest.fixture(scope="module")
def pt():
    return load_benchmark("published_time")


def test_the_fit_recovers_the_share_of_peak_the_steps_ran_at(pt):
    points = [(a, b, a / 0.3 + b) for a, b in ((0.1, 0.02), (0.5, 0.0), (0.05, 0.1))]
    assert pt.fit_mfu(points) == pytest.approx(0.3, abs=1e-3)


def test_leave_one_out_never_sees_the_row_it_predicts(pt):
    """Three rows at 30% of peak and one at 10% on the same GPU: the odd row is predicted from the others (30%),
    so its error shows; pooled rows stand in only for a GPU with no other row."""
    rows = [
        {"setup": {"hardware": "x"}, "a": a, "b": 0.0, "published_step_seconds": a / m}
        for a, m in ((1.0, 0.3), (2.0, 0.3), (3.0, 0.3), (1.0, 0.1))
    ]
    rows.append({"setup": {"hardware": "y"}, "a": 1.0, "b": 0.0, "published_step_seconds": 1 / 0.3})
    held = pt.leave_one_out(rows)
    assert held[3] == pytest.approx(1 / 0.3, rel=1e-2)  # not the published 10.0 s
    assert held[0] > rows[0]["published_step_seconds"]  # the slow row among its fit pulls it slower
    assert 1 / 0.3 < held[4] < 10  # y has no other row: fitted to all the others, the 10% row among them


def test_a_preset_fitted_to_published_runs_names_them_and_ships_their_fit(pt):
    """The L40S default is PEFT's published runs, not an assumption: its rows exist in the shared data file with a
    source each, and its mfu is what the script fits to them."""
    prov = load_hardware("l40s").time_constants.provenance
    assert prov.rows and prov.fitted_on and "assumption" not in prov.source
    doc = json.loads((ROOT / "benchmarks" / "published" / "rows.json").read_text())
    ids = {r["id"]: r for r in doc["time_rows"]}
    assert all(ids[i]["repo"] and ids[i]["commit"] and ids[i]["date"] for i in prov.rows)
    usable, _ = pt.load()
    rows = [r for r in usable if r["id"] in prov.rows]
    for r in rows:
        r["a"], r["b"] = pt.terms(r["setup"])
    mfu, fitted_ids = pt.per_gpu_fit(rows)["l40s"]
    assert set(fitted_ids) == set(prov.rows)
    assert load_hardware("l40s").time_constants.mfu == pytest.approx(mfu, abs=1e-3)
