"""Plans whose words match their numbers: the sentence, the rule and the table describe the estimates that
answered; a what-if never returns a candidate the trace rejected; a trace that cannot run is a visible, typed
warning; the shortfall names the limit that was missed. The trace is replaced by the formulas' estimate with
altered figures (no FakeTensor trace runs here), except where the tracer's own error handling is under test."""

import importlib

import pytest

import ftopt.planner.whatif as whatif
from ftopt.cli.display import console, print_plan
from ftopt.estimate import FallbackCause, Method, estimate
from ftopt.planner.plan import Answer, combinations, fewest_gpus, plan
from ftopt.planner.whatif import CONFIRM_TRIES
from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model
from ftopt.spec.units import fmt_bytes

GIB = 2**30


def fake_trace(monkeypatch, judge):
    """The 'trace' is the analytic estimate as `judge(estimate, n)` alters it (n: 1 for the first trace, ...),
    labelled traced. Returns the combinations traced, in order."""
    real, traced = whatif.estimate, []

    def fake(model, hw, setup, combo, method=Method.ANALYTIC):
        e = real(model, hw, setup, combo, Method.ANALYTIC)
        if Method(method) is not Method.TRACED:
            return e
        traced.append(combo)
        return judge(e, len(traced)).model_copy(update={"method": Method.TRACED})

    monkeypatch.setattr(whatif, "estimate", fake)
    return traced


def rejected(e, _n):
    return e.model_copy(update={"device_bytes_per_gpu": e.capacity_bytes, "fits": False})


def base():
    return load_model("llama-2-7b"), load_hardware("a100-80g"), TrainingSetup()


def test_the_reason_quotes_the_estimate_that_confirmed_the_pick(monkeypatch):
    """The trace confirms the pick with 3 GiB less than the formulas: the sentence gives the traced figure."""
    fake_trace(
        monkeypatch, lambda e, n: e.model_copy(update={"device_bytes_per_gpu": e.device_bytes_per_gpu - 3 * GIB})
    )
    m, hw, s = base()
    p = plan(m, hw, s, method=Method.TRACED, what_ifs=False)
    rec = p.recommended
    assert rec.method is Method.TRACED
    analytic = estimate(m, hw, s, rec.combination)
    quoted = f"{fmt_bytes(rec.device_bytes_per_gpu)} of {fmt_bytes(rec.capacity_bytes)} per GPU by the traced estimate"
    assert quoted in p.reason
    assert fmt_bytes(analytic.device_bytes_per_gpu) not in p.reason


def test_a_pick_the_trace_overturns_is_named_in_the_reason_and_the_rule(monkeypatch):
    traced = fake_trace(monkeypatch, lambda e, n: rejected(e, n) if n == 1 else e)
    m, hw, s = base()
    p = plan(m, hw, s, method=Method.TRACED, what_ifs=False)
    first = traced[0]
    assert p.recommended.combination != first and p.recommended.method is Method.TRACED
    assert p.tie_break.rejected_by_trace == [first.label()]
    assert f"set aside what the formulas had picked first: {first.label()} ({fmt_bytes(hw.memory_bytes)} traced" in (
        p.reason
    )
    assert f"{fmt_bytes(p.recommended.device_bytes_per_gpu)} of" in p.reason
    assert p.to_json()["tie_break"]["rejected_by_trace"] == [first.label()]


def test_a_plan_out_of_traces_says_its_pick_is_unconfirmed_and_never_a_rejected_one(monkeypatch):
    traced = fake_trace(monkeypatch, rejected)
    m, hw, s = base()
    p = plan(m, hw, s, method=Method.TRACED, what_ifs=False)
    assert len(traced) == CONFIRM_TRIES and p.recommended.combination not in traced
    assert p.recommended.method is Method.ANALYTIC
    why = p.fallbacks[Answer.RECOMMENDED]
    assert why.cause is FallbackCause.TRIES_EXHAUSTED
    assert p.to_json()["fallbacks"]["recommended"]["cause"] == "tries-exhausted"
    with console.capture() as cap:
        print_plan(p)
    assert "warning: recommended is not confirmed" in cap.get()


def test_fewest_gpus_out_of_traces_never_returns_a_candidate_the_trace_rejected(monkeypatch):
    traced = fake_trace(monkeypatch, rejected)
    m, hw, s = base()
    answer = fewest_gpus(m, hw, s, combinations(hw), Method.TRACED, confirm=True)
    assert len(traced) == CONFIRM_TRIES
    assert answer[1] is not None and answer[1] not in traced
    assert answer[2] is Method.ANALYTIC and answer[3].cause is FallbackCause.TRIES_EXHAUSTED


def test_a_longest_context_the_trace_never_confirmed_claims_no_estimator(monkeypatch):
    traced = fake_trace(monkeypatch, rejected)
    m, hw, s = base()
    answer = whatif.confirmed_longest_context(m, hw, s, Combination(lora_r=16), confirm=True)
    assert len(traced) == CONFIRM_TRIES
    assert answer[:3] == (None, None, None)  # neither the formulas' length (rejected) nor a traced one
    assert answer[3].cause is FallbackCause.TRIES_EXHAUSTED


def test_the_table_names_the_estimator_of_each_row(monkeypatch):
    fake_trace(monkeypatch, lambda e, n: e)
    m, hw, s = base()
    p = plan(m, hw, s, method=Method.TRACED, what_ifs=False)
    with console.capture() as cap:
        print_plan(p)
    rows = [line for line in cap.get().splitlines() if "│" in line]
    pick = next(line for line in rows if "* " + p.recommended.combination.label() in line)
    assert "traced" in pick
    assert any("analytic" in line for line in rows if line is not pick)


def test_a_margin_miss_is_not_called_a_host_ram_miss():
    """Nothing fits within an 85% margin although many fit the GPU: the margin is the limit, not host RAM."""
    p = plan(
        load_model("llama-2-7b"), load_hardware("rtx4090"), TrainingSetup(seq_len=4096, headroom=0.85), what_ifs=False
    )
    assert p.recommended is None
    assert "--headroom" in p.shortfall and "85% kept free" in p.shortfall
    assert "host RAM" not in p.shortfall


# ---- the tracer's own fallback -----------------------------------------------------------------------------------
def _break_the_trace(monkeypatch, error: Exception):
    traced = importlib.import_module("ftopt.estimate.traced")

    def broken(*a, **k):
        raise error

    monkeypatch.setattr(traced, "_trace", broken)


def test_an_error_the_tracer_does_not_expect_is_not_hidden_behind_the_formulas(monkeypatch):
    _break_the_trace(monkeypatch, KeyError("a defect in ftopt"))
    with pytest.raises(KeyError, match="a defect in ftopt"):
        estimate(load_model("tiny-llama"), load_hardware("cpu"), TrainingSetup(seq_len=32), Combination(), "traced")


def test_a_trace_that_cannot_run_is_a_typed_warning_in_the_plan_json_and_console(monkeypatch):
    from torch._subclasses.fake_tensor import UnsupportedOperatorException

    _break_the_trace(monkeypatch, UnsupportedOperatorException("aten.custom_op.default"))
    m, hw = load_model("tiny-llama"), load_hardware("a100-80g")
    e = estimate(m, hw, TrainingSetup(seq_len=256), Combination(), "traced")
    assert e.method is Method.ANALYTIC and e.trace_fallback.error == "UnsupportedOperatorException"
    assert e.to_json()["trace_fallback"]["cause"] == "trace-unavailable"
    p = plan(m, hw, TrainingSetup(seq_len=256), method=Method.TRACED)
    assert set(p.fallbacks) == {Answer.RECOMMENDED, Answer.LONGEST_CONTEXT, Answer.FEWEST_GPUS}
    doc = p.to_json()
    assert doc["fallbacks"]["recommended"]["error"] == "UnsupportedOperatorException"
    assert doc["answered_by"]["recommended"] == "analytic"
    with console.capture() as cap:
        print_plan(p)
    out = cap.get()
    assert "warning: recommended is not confirmed: the traced estimator could not run llama" in out
    assert "did not confirm it (see the warning)" in out


def test_estimate_prints_the_fallback_as_a_warning_and_keeps_it_in_its_json(monkeypatch):
    import json

    from typer.testing import CliRunner

    from ftopt.cli.app import app

    _break_the_trace(monkeypatch, NotImplementedError("no meta kernel for aten.custom_op"))
    args = ["estimate", "--model", "tiny-llama", "--gpu", "a100-80g", "--seq-len", "256", "--method", "traced"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "warning: the traced estimator could not run llama (NotImplementedError" in r.output
    r = CliRunner().invoke(app, [*args, "--json"])
    doc = json.loads(r.stdout)
    assert doc["method"] == "analytic" and doc["trace_fallback"]["error"] == "NotImplementedError"


def test_a_plan_on_a_cpu_calls_its_processes_processes_and_words_a_tiny_budget():
    """`ftopt plan -m tiny-llama --gpu cpu --max-hours 1e-7 --dataset-tokens 1000000` said "the fewest cpu GPUs that
    fit the model: 1" and "it still exceeds the 1e-07 h budget: add GPUs"."""
    s = TrainingSetup(seq_len=64, micro_batch=8, precision="fp32", dataset_tokens=1_000_000)
    p = plan(load_model("tiny-llama"), load_hardware("cpu"), s, max_hours=1e-7)
    assert p.on_cpu and p.fewest_gpus == 1
    assert "it still exceeds the 0.36 ms budget: add processes or shorten the data" in p.reason
    assert "per process by the analytic estimate" in p.reason
    with console.capture() as cap:
        print_plan(p)
    text = " ".join(cap.get().split())  # rich wraps lines
    assert "What if: the fewest cpu processes that fit the model: 1 (" in text and "per-process memory" in text
    assert "GPU" not in text and "1e-07" not in text
    gpu = plan(load_model("tiny-llama"), load_hardware("a100-80g"), TrainingSetup(seq_len=64, micro_batch=8))
    with console.capture() as cap:
        print_plan(gpu)
    assert "the fewest a100-80g GPUs that fit the model: 1" in " ".join(cap.get().split())
