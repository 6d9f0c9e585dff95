"""benchmarks/peers.py applies each peer's rule as documented, reads the measured runs generically and aggregates
errors right. Hand numbers below come from a tiny llama config counted by hand, not from the script."""

import json

import pytest

from tests.benchmarks import load_benchmark

# hidden 64, 4 heads of 16, 2 KV heads (kv dim 32), MLP 128, 2 layers, vocabulary 100, untied LM head.
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
# per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288; gate, up, down 3*64*128 = 24576; 2 RMSNorms 128
LAYER_PARAMS = 12288 + 24576 + 128
BASE_PARAMS = 100 * 64 + 2 * LAYER_PARAMS + 64  # embedding + layers + final norm = 80448 (AutoModel: no LM head)
CAUSAL_LM_PARAMS = BASE_PARAMS + 100 * 64  # + untied LM head = 86848
ROTARY_BUFFER_BYTES = 2 * (16 // 2) * 4  # inv_freq and original_inv_freq: head_dim / 2 fp32 values each


@pytest.fixture(scope="module")
def peers():
    return load_benchmark("peers")


@pytest.fixture
def tiny(peers, monkeypatch):
    monkeypatch.setitem(peers.ea.ARCHS, "peers-tiny", TINY)
    monkeypatch.setitem(peers.ea.ARCHS, "peers-tiny-tied", {**TINY, "tie_word_embeddings": True})


def _row(arch="peers-tiny", **kw):
    return {
        "arch": arch,
        "lora_r": 0,
        "gc": False,
        "attn": "sdpa",
        "precision": "fp32",
        "quant": "none",
        "optim": "adamw",
        "zero": 0,
        "processes": 1,
        "seq": 32,
        "batch": 2,
        **kw,
    }


def test_sixteen_bytes_per_parameter_counts_every_parameter_once(peers, tiny):
    assert peers.rule16_bytes(_row()) == 16 * CAUSAL_LM_PARAMS
    assert peers.rule16_bytes(_row(lora_r=8)) == 16 * CAUSAL_LM_PARAMS  # the rule has no LoRA: all parameters
    assert peers.rule16_bytes(_row("peers-tiny-tied")) == 16 * BASE_PARAMS  # a tied head is not counted twice


def test_accelerate_training_is_four_times_the_reported_size(peers, tiny):
    # "When training with Adam, you can expect roughly 4x the reported results (1x model, 1x gradients, 2x
    # optimizer)": the fp32 size of the base model for float32, the half-size float16/bfloat16 figure for mixed.
    fp32_size = BASE_PARAMS * 4 + ROTARY_BUFFER_BYTES
    assert peers.accelerate_bytes(_row()) == 4 * fp32_size
    assert peers.accelerate_bytes(_row(precision="bf16-mixed")) == 4 * (fp32_size // 2)
    assert peers.accelerate_bytes(_row(lora_r=8, quant="nf4", precision="bf16-mixed")) is None  # int4 shows N/A


def test_deepspeed_uses_the_run_stage_and_process_count(peers, tiny):
    # ZeRO-2, no offload: 2 B fp16 params + 18 B of grads and states spread over the GPUs; ZeRO-3 adds the largest
    # module's 4 B/param (here gate/up, 64 x 128) and spreads all 20 B.
    assert peers.deepspeed_bytes(_row()) == 20 * CAUSAL_LM_PARAMS
    assert peers.deepspeed_bytes(_row(zero=2, processes=2)) == 2 * CAUSAL_LM_PARAMS + 9 * CAUSAL_LM_PARAMS
    assert peers.deepspeed_bytes(_row(zero=3, processes=2)) == 4 * 64 * 128 + 9 * CAUSAL_LM_PARAMS


def test_fsdp2_runs_are_given_to_the_peers_as_their_zero_stage(peers, tiny):
    full, grad_op = _row(fsdp="full", processes=2), _row(fsdp="grad-op", processes=2)
    assert peers.deepspeed_bytes(full) == 4 * 64 * 128 + 9 * CAUSAL_LM_PARAMS
    assert peers.deepspeed_bytes(grad_op) == 2 * CAUSAL_LM_PARAMS + 9 * CAUSAL_LM_PARAMS
    assert peers.llm_analysis_input(full)["training"]["ds_zero"] == 3
    assert peers.llm_analysis_input(grad_op)["training"]["ds_zero"] == 2


def test_summary_aggregates_signed_errors_and_skips_rows_without_a_prediction(peers):
    rows = [{"measured_bytes": 100}, {"measured_bytes": 200}, {"measured_bytes": 400}]
    preds = [dict.fromkeys(peers.CANNOT_EXPRESS, None) for _ in rows]
    for p, v in zip(preds, (110, 150, 400)):  # +10%, -25%, 0%
        p["16 B/param rule"] = v
    preds[1]["ftopt traced"] = 260  # +30%, alone
    s = peers.summarise(rows, preds)
    rule = s["16 B/param rule"]
    assert rule["rows"] == 3 and rule["median_error"] == pytest.approx(0.0)
    assert rule["median_abs_error"] == pytest.approx(0.10) and rule["worst_abs_error"] == pytest.approx(0.25)
    assert s["ftopt traced"]["rows"] == 1 and s["ftopt traced"]["worst_abs_error"] == pytest.approx(0.30)
    assert s["accelerate estimate-memory"]["rows"] == 0 and s["accelerate estimate-memory"]["median_error"] is None
    table = peers.markdown(s)
    assert "| 16 B/param rule | 3 | +0.0% | 10.0% | 25.0% |" in table


def test_rows_come_from_every_result_file_once_with_the_defaults_filled(peers, tmp_path):
    run = {"arch": "a", "lora_r": 0, "gc": False, "attn": "eager", "precision": "fp32", "measured_bytes": 1}
    zero = {"arch": "a", "zero": 3, "lora_r": 0, "gc": True, "precision": "fp32", "processes": 2, "measured_bytes": 2}
    (tmp_path / "estimate_accuracy.json").write_text(json.dumps({"rows": [run], "seq_len": 256, "micro_batch": 2}))
    (tmp_path / "estimate_accuracy_x_0.json").write_text(
        json.dumps({"rows": [run, {**run, "seq": 1024, "batch": 1}], "zero_rows": [zero]})
    )
    (tmp_path / "other.json").write_text(json.dumps({"rows": [run]}))
    rows = peers.load_rows(tmp_path)
    assert [(r["seq"], r["batch"], r.get("zero")) for r in rows] == [(256, 2, 0), (1024, 1, 0), (256, 2, 3)]
    assert rows[2]["attn"] == "sdpa" and rows[2]["processes"] == 2 and rows[0]["quant"] == "none"


def test_dora_dropout_padded_and_fsdp_runs_are_scenarios_of_their_own(peers, tmp_path):
    lora = {"arch": "a", "lora_r": 8, "gc": False, "precision": "fp32", "measured_bytes": 1}
    runs = [lora, {**lora, "dora": True}, {**lora, "padded": True}, {**lora, "processes": 2, "fsdp": "full"}]
    runs.append({**lora, "processes": 2, "fsdp": "grad-op"})
    (tmp_path / "estimate_accuracy.json").write_text(json.dumps({"rows": runs}))
    (tmp_path / "estimate_accuracy_dropout.json").write_text(json.dumps({"rows": [{**lora, "lora_dropout": 0.1}]}))
    rows = peers.load_rows(tmp_path)
    assert [(r["dora"], r["padded"], r["fsdp"], r["lora_dropout"]) for r in rows] == [
        (False, False, "none", 0.0),
        (True, False, "none", 0.0),
        (False, True, "none", 0.0),
        (False, False, "full", 0.0),
        (False, False, "grad-op", 0.0),
        (False, False, "none", 0.1),
    ]


def test_llm_analysis_without_its_environment_is_skipped_with_one_message(peers, tmp_path):
    values, notes = peers.llm_analysis_all([_row()], tmp_path / "no-venv")
    assert values == [None] and len(notes) == 1 and "llm-analysis skipped" in notes[0]
