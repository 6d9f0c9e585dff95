"""FSDP2 as a combination, in both estimators, in the plan and in `plan --export` (the runs: tests/train/test_fsdp.py)."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.estimate import estimate
from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model

runner = CliRunner()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--fsdp", "full", "--zero", "3"), "--fsdp=full and ZeRO stage 3 are two sharding engines"),
        (("--fsdp", "grad-op", "--offload", "optimizer"), "use --offload=all, not optimizer"),
        (("--fsdp", "full", "--lora-r", "8", "--quant", "nf4"), "--quant=nf4 cannot be sharded by --fsdp=full"),
        (("--fsdp", "full", "--optim", "adamw-8bit"), "--optim=adamw-8bit is run by Trainer alone"),
        (("--fsdp", "half"), "--fsdp must be one of none, full, grad-op, got 'half'"),
    ],
)
def test_bad_fsdp_combinations_are_one_line(args, fragment):
    r = runner.invoke(app, ["estimate", "--gpus", "2", *args])
    assert r.exit_code == 2 and fragment in r.output and "Traceback" not in r.output, r.output


def _bd(combo: Combination, gpus: int = 2, method: str = "analytic"):
    setup = TrainingSetup(seq_len=256, micro_batch=2, precision="fp32", packing=True, gpus_per_node=gpus)
    return estimate(load_model("tiny-llama"), load_hardware("cpu"), setup, combo, method)


def test_grad_op_keeps_every_layer_unsharded_until_backward():
    """reshard_after_forward=False holds all layers' all-gathered parameters at the start of backward; True holds
    the current and the prefetched one: the difference is exactly (layers - 2) layers of fp32 parameters."""
    full, grad_op = _bd(Combination(fsdp="full")), _bd(Combination(fsdp="grad-op"))
    assert full.peak_phase == grad_op.peak_phase == "forward/backward"
    diff = grad_op.breakdown.engine_buffers - full.breakdown.engine_buffers
    # Worked by hand from tiny-llama's config (hidden 128, 4 heads of 32, 2 KV heads, intermediate 352, 4 layers):
    # one layer = q 128x128 + k, v 128x64 each + o 128x128 + gate, up, down 3 x 128x352 + two norms of 128
    #           = 16,384 + 16,384 + 16,384 + 135,168 + 256 = 184,576 parameters;
    # the 4 - 2 layers beyond the current and the prefetched one, in fp32: 2 x 184,576 x 4 = 1,476,608 bytes.
    assert diff == 1_476_608


def test_states_shard_over_ranks_and_offload_moves_them_to_host():
    two, four = _bd(Combination(fsdp="full"), 2), _bd(Combination(fsdp="full"), 4)
    assert four.breakdown.optimizer_states * 2 == pytest.approx(two.breakdown.optimizer_states, abs=8)
    assert four.breakdown.weights * 2 == pytest.approx(two.breakdown.weights, abs=8)
    off = _bd(Combination(fsdp="full", offload="all"))
    assert off.breakdown.weights == off.breakdown.optimizer_states == 0 and off.cpu_bytes_per_node > 0


def test_traced_fsdp_takes_the_activations_from_the_trace():
    e = _bd(Combination(fsdp="full", gc=True), method="traced")
    assert e.method.value == "traced" and e.breakdown.activations > 0 and e.breakdown.engine_buffers > 0


def test_plan_lists_fsdp2_beside_zero_for_70b():
    r = runner.invoke(app, ["plan", "--model", "llama-2-70b", "--gpu", "a100-80g", "--gpus", "8", "--json"])
    assert r.exit_code == 0, r.output
    cands = json.loads(r.stdout)["candidates"]
    engines = {c["sharding"] for c in cands if c["fits"]}
    assert {"fsdp2-full", "fsdp2-grad-op"} & engines and any(e.startswith("deepspeed-zero") for e in engines)


def test_export_writes_an_accelerate_fsdp2_config_and_a_torchrun_command(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    folder = tmp_path / "x"
    args = ["plan", "--model", "llama-2-13b", "--gpu", "a100-80g", "--gpus", "8", "--engine", "fsdp", "--full-only"]
    r = runner.invoke(app, [*args, "--export", str(folder)])
    assert r.exit_code == 0, r.output
    cfg = ClusterConfig.from_yaml_file(str(folder / "accelerate_fsdp2.yaml"))
    assert cfg.distributed_type == "FSDP" and cfg.num_processes == 8
    assert cfg.fsdp_config["fsdp_version"] == 2
    assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    run = json.loads((folder / "run.json").read_text())
    mode = run["combination"]["fsdp"]
    assert cfg.fsdp_config["fsdp_reshard_after_forward"] is (mode == "full")
    torchrun = (folder / "torchrun.sh").read_text()
    assert "--nproc_per_node 8 " in torchrun and "-m ftopt.train.fsdp_worker run.json" in torchrun
    assert "--config_file accelerate_fsdp2.yaml" in (folder / "launch.sh").read_text()
    sft = yaml.safe_load((folder / "sft_config.yaml").read_text())
    assert sft["gradient_checkpointing"] is False  # under FSDP2, accelerate's fsdp_activation_checkpointing


def _wide_vocab(tied: bool = False):
    """A small llama whose root group (embeddings, LM head) outweighs its layers, as a large vocabulary does."""
    from ftopt.spec import from_hf_config

    cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return from_hf_config({**cfg, "num_key_value_heads": 2, "vocab_size": 8000, "tie_word_embeddings": tied}, "wide")


def _root_reduce(model, gloo: bool, combo: Combination | None = None):
    from ftopt.estimate import fsdp

    setup = TrainingSetup(seq_len=16, micro_batch=1, precision="fp32", packing=True, gpus_per_node=2)
    bd, phase, _ = fsdp.peak(model, setup, combo or Combination(fsdp="grad-op", gc=True), gloo=gloo)
    return bd, phase


def test_gloo_holds_a_copy_of_the_roots_reduce_scatter_input_and_nccl_does_not():
    """gloo's reduce-scatter fallback clones its input (ProcessGroupGloo::reduce_scatter_tensor_coalesced); at a
    short sequence the root's reduce-scatter is the peak, and gloo's differs from NCCL's by exactly that copy."""
    m = _wide_vocab()
    gloo, phase = _root_reduce(m, True)
    nccl, _ = _root_reduce(m, False)
    root = m.param_count() - m.num_layers * m.layer_params()
    assert phase == "end of backward, root reduce-scatter"
    assert gloo.engine_buffers == 2 * root * 4 and nccl.engine_buffers == root * 4
    # NCCL's peak may be the copy-in just before (the root's unsharded gradients instead of its shard and head)
    assert gloo.total() - nccl.total() == pytest.approx(root * 4, rel=1e-3)


def test_an_untied_lm_heads_gradient_outlives_the_roots_copy_in():
    """foreach_reduce's loop variable keeps the group's last gradient (an untied LM head's) until it returns."""
    untied, tied = _wide_vocab(), _wide_vocab(tied=True)
    (u, phase), (t, _) = _root_reduce(untied, True), _root_reduce(tied, True)
    head = untied.vocab_size * untied.hidden_size * 4
    # untied: every shard (the head's half too) plus the whole head; tied: the shards of one embedding only
    assert phase == "end of backward, root reduce-scatter"
    assert u.gradients - t.gradients == pytest.approx(head / 2 + head, rel=0.01)
