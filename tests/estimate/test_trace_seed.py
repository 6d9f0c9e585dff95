"""The packaged trace results (presets/traces.json) answer a preset plan exactly as tracing it does, and only while
the libraries and ftopt sources they were made with are the ones running."""

import importlib
import json

import pytest

from ftopt.estimate import trace_cache
from ftopt.planner.request import PlanRequest, make
from ftopt.spec import Combination, ModelSpec, TrainingSetup

traced = importlib.import_module("ftopt.estimate.traced")
TABLE = json.loads(trace_cache.seed_path().read_text())


def _needs_the_tables_libraries():
    import torch

    if torch.cuda.is_available() or TABLE["libraries"] != trace_cache.library_versions():
        pytest.skip("the table holds CPU traces made with other library versions: it does not answer here")


def _plan_8b() -> str:
    """`ftopt plan --model llama-3.1-8b --gpu rtx4090 --seq-len 4096`, one of the table's plans."""
    given = dict(model="llama-3.1-8b", gpu="rtx4090", seq_len=4096, lora_r=16, full_only=False, method="traced")
    unset = {n: None for n, f in PlanRequest.model_fields.items() if f.is_required() and n not in given}
    planned = make(PlanRequest(**unset, **given))
    return json.dumps(planned.to_json(), sort_keys=True)


def test_a_plan_from_the_table_is_the_plan_a_trace_gives(fresh_cache, monkeypatch, tmp_path):
    """The table answers every trace of a plan it was made for, and with the figures the traces give: the same
    plan, byte for byte, once the table is taken away and the traces run. Fails when scripts/trace_seed.py was not
    run after a change to a source file the trace loads."""
    _needs_the_tables_libraries()
    runs = []
    real = traced._run_trace

    def counted(*a, **k):
        runs.append(a[3])
        return real(*a, **k)

    monkeypatch.setattr(traced, "_run_trace", counted)
    from_table = _plan_8b()
    assert runs == [], "the packaged table is stale: run `make traces` (scripts/trace_seed.py)"
    trace_cache.forget()
    for f in (fresh_cache / "traces").glob("*.json"):
        f.unlink()
    monkeypatch.setattr(trace_cache, "seed_path", lambda: tmp_path / "absent.json")
    assert _plan_8b() == from_table
    assert runs  # the second plan was traced


def _entry_key(entry: dict) -> trace_cache.TraceKey:
    call = entry["call"]
    spec, setup = ModelSpec.model_validate(call["spec"]), TrainingSetup.model_validate(call["setup"])
    combo = Combination.model_validate(call["combination"])
    return trace_cache.key(spec, setup, combo, call["num_layers"], call["device"], tuple(call["world"]))


@pytest.mark.parametrize("change", ["source", "library"])
def test_the_table_answers_only_for_its_own_sources_and_libraries(fresh_cache, monkeypatch, tmp_path, change):
    _needs_the_tables_libraries()
    k = _entry_key(next(iter(TABLE["entries"].values())))
    assert trace_cache.get(k) is not None
    other = json.loads(json.dumps(TABLE))
    if change == "source":
        other["sources"]["ftopt/estimate/traced.py"] = "0" * 64
    else:
        other["libraries"]["torch"] = "0.0"
    (tmp_path / "other.json").write_text(json.dumps(other))
    monkeypatch.setattr(trace_cache, "seed_path", lambda: tmp_path / "other.json")
    trace_cache.forget()
    for f in (fresh_cache / "traces").glob("*.json"):
        f.unlink()
    assert trace_cache.get(k) is None
