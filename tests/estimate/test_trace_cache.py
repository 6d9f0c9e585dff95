"""Traces run once per configuration, and a stored trace answers exactly what a fresh one does."""

import importlib
import json

from ftopt.estimate import trace_cache
from ftopt.planner.plan import plan
from ftopt.spec import Batching, Combination, Quant, TrainingSetup, from_hf_config, load_hardware

traced = importlib.import_module("ftopt.estimate.traced")
trace_storage = importlib.import_module("ftopt.estimate.trace_storage")
layout = importlib.import_module("ftopt.estimate.layout")
modeling = importlib.import_module("ftopt.model.build")

# six layers, so the trace of 2 and 3 layers is extrapolated; rope_scaling as Llama 3.1 ships it
CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 1024,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
}
SETUP = TrainingSetup(seq_len=256, micro_batch=2, precision="bf16-mixed")


def _traced_plan():
    spec = from_hf_config(CONFIG, "tiny-rope")
    return plan(spec, load_hardware("a100-80g"), SETUP, method="traced", quants=(Quant.NONE,)).to_json()


def test_a_traced_plan_runs_each_trace_once(fresh_cache, monkeypatch):
    """The pick is traced to confirm it and again as the fewest-GPUs answer on one GPU: the same step, one trace."""
    built, runs = [], []
    real_build, real_inputs = modeling.build_model, layout.step_inputs

    def build(*a, **k):
        built.append(k["num_layers"])
        return real_build(*a, **k)

    def inputs(setup, combo, device):
        runs.append((built[-1], setup.seq_len, setup.micro_batch, combo.label()))
        return real_inputs(setup, combo, device)

    monkeypatch.setattr(modeling, "build_model", build)
    monkeypatch.setattr(layout, "step_inputs", inputs)
    doc = _traced_plan()
    assert doc["answered_by"] == {"recommended": "traced", "longest_context": "traced", "fewest_gpus": "traced"}
    assert runs and len(runs) == len(set(runs)), runs


def test_a_stored_trace_answers_as_a_fresh_one(fresh_cache, monkeypatch):
    fresh = _traced_plan()
    assert list((fresh_cache / "traces").glob("*.json"))
    trace_cache.forget()  # from the files

    def no_trace(*a, **k):
        raise AssertionError("a stored configuration was traced again")

    monkeypatch.setattr(traced, "_run_trace", no_trace)
    assert json.dumps(_traced_plan(), sort_keys=True) == json.dumps(fresh, sort_keys=True)


def test_the_key_holds_what_the_trace_reads(fresh_cache):
    spec = from_hf_config(CONFIG, "tiny-rope")
    combo = Combination(lora_r=4, gc=True)
    k = trace_cache.key(spec, SETUP, combo, 2, "cpu", (1.0, 0))
    assert k == trace_cache.key(
        spec, SETUP.model_copy(update={"headroom": 0.2, "epochs": 3}), combo, 2, "cpu", (1.0, 0)
    )
    for other in (
        trace_cache.key(spec, SETUP.model_copy(update={"seq_len": 512}), combo, 2, "cpu", (1.0, 0)),
        trace_cache.key(spec, SETUP.model_copy(update={"batching": Batching.PACKED}), combo, 2, "cpu", (1.0, 0)),
        trace_cache.key(spec, SETUP, combo.model_copy(update={"attn": "eager"}), 2, "cpu", (1.0, 0)),
        trace_cache.key(spec, SETUP, combo, 3, "cpu", (1.0, 0)),
        trace_cache.key(spec, SETUP, combo, 2, "cuda", (1.0, 0)),
        trace_cache.key(spec, SETUP, combo, 2, "cpu", (0.5, 0)),
    ):
        assert other != k


def test_tracing_leaves_the_model_spec_as_it_was(fresh_cache):
    """transformers completes rope_scaling in place; the spec (and so the next trace's key) must not change."""
    spec = from_hf_config(CONFIG, "tiny-rope")
    before = spec.model_dump_json()
    traced.traced_memory(spec, SETUP, Combination(lora_r=4), target="cpu")
    assert spec.model_dump_json() == before


def test_running_totals_match_a_recount(fresh_cache, monkeypatch):
    """The tracker keeps bytes per category as storages come and go; at every op they equal a recount."""
    checks = []
    real = trace_storage.Tracker.check_peak

    def check(self):
        recount: dict = {}
        for nbytes, cat in self.live.values():
            recount[cat] = recount.get(cat, 0) + nbytes
        assert self.totals() == recount
        checks.append(1)
        real(self)

    monkeypatch.setattr(trace_storage.Tracker, "check_peak", check)
    spec = from_hf_config(CONFIG, "tiny-rope")
    setup = SETUP.model_copy(update={"gpus_per_node": 2})
    for combo in (Combination(lora_r=4, gc=True), Combination(zero=2), Combination(optim="adamw-8bit")):
        traced.traced_memory(spec, setup, combo, target="cpu")
    assert len(checks) > 1000
