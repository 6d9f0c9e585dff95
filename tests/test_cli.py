"""CLI: the documented JSON schema and one clear line with exit code 2 for bad input."""
import json

import pytest
from typer.testing import CliRunner

from ftopt.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_estimate_json_schema():
    r = run("estimate", "--model", "llama-2-7b", "--gpu", "a100-80g", "--lora-r", "8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert isinstance(d["peak_bytes_per_gpu"], int) and isinstance(d["fits"], bool)
    assert sum(d["breakdown"].values()) == d["peak_bytes_per_gpu"]
    assert d["step_seconds"] > 0 and d["combination"]["lora_r"] == 8


def test_plan_json_schema(tmp_path):
    out = tmp_path / "plan.json"
    r = run("plan", "--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "8", "--json", "--out", str(out))
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d["recommended"]) >= {"gc", "lora_r", "zero", "offload", "attn"}
    c = d["candidates"][0]
    assert set(c) >= {"gc", "lora_r", "zero", "offload", "attn", "peak_bytes_per_gpu", "fits", "epoch_seconds"}
    assert json.loads(out.read_text()) == d


def test_plan_table():
    r = run("plan", "--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "8", "--seq-len", "2048")
    assert r.exit_code == 0, r.output
    assert "Recommended:" in r.output and "LoRA" in r.output


@pytest.mark.parametrize("args,fragment", [
    (("estimate", "--model", "llama-2-8b"), "Did you mean"),
    (("estimate", "--model", "/nonexistent/config.json"), "does not exist"),
    (("estimate", "--gpu", "a100"), "Unknown GPU"),
    (("estimate", "--seq-len", "0"), "seq_len"),
    (("estimate", "--micro-batch", "-1"), "micro_batch"),
    (("estimate", "--offload", "all", "--zero", "2"), "needs ZeRO stage 3"),
    (("estimate", "--offload", "optimizer"), "needs a ZeRO stage"),
    (("estimate", "--attn", "xformers"), "--attn must be one of"),
    (("estimate", "--precision", "int4"), "--precision must be one of"),
    (("estimate", "--lora-r", "8", "--lora-targets", "nope"), "candidates: q_proj"),
    (("estimate", "--gpu", "t4", "--precision", "bf16-mixed"), "no bf16 support"),
    (("plan", "--max-hours", "0"), "--max-hours must be positive"),
])
def test_bad_input_is_one_line_exit_2(args, fragment):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert fragment in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_malformed_and_non_decoder_configs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    enc = tmp_path / "enc.json"
    enc.write_text('{"model_type": "bert"}')
    for path, frag in ((bad, "not valid JSON"), (enc, "not a decoder-only")):
        r = run("estimate", "--model", str(path))
        assert r.exit_code == 2 and frag in r.output


def test_seq_len_beyond_positions_warns():
    r = run("estimate", "--model", "llama-2-7b", "--seq-len", "8192")
    assert r.exit_code == 0 and "exceeds the model's 4096 positions" in r.output


@pytest.mark.parametrize("command", [["bench", "--max-steps", "1"], ["demo", "--steps", "1"], ["report", "R"],
                                     ["train", "--max-steps", "1"], ["plan"]])
def test_output_under_a_regular_file_is_one_line(tmp_path, command):
    f = tmp_path / "file"
    f.write_text("x")
    results = tmp_path / "r.jsonl"
    results.write_text('{"key": "a", "status": "ok", "label": "x", "measured": {}}\n')
    args = [str(results) if a == "R" else a for a in command]
    target = f / "sub" / ("plan.json" if command[0] == "plan" else "")
    r = run(*args, "--out", str(target))
    assert r.exit_code == 2, r.output
    assert "is a file" in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_version_and_help_state_defaults():
    from ftopt import __version__

    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    import typer

    cmd = typer.main.get_command(app)
    for name in ("estimate", "plan", "train", "bench"):
        params = {p.name: p for p in cmd.commands[name].params}
        assert "64 on cpu" in params["seq_len"].help  # hardware-derived defaults are shown in --help
        undocumented = [p.name for p in params.values() if not getattr(p, "help", None) and p.name != "results"]
        assert not undocumented, f"{name}: flags without help: {undocumented}"
