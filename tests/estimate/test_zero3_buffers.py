"""ZeRO-3's engine buffers, read off a real DeepSpeed engine built the way `ftopt train` builds it (ftopt's own
DeepSpeed config through Hugging Face Trainer, one CPU rank over gloo, in a child process), against the analytic
terms: the gradient partition buffer exists before the first forward (so it counts in the forward/backward peak,
which the formula missed before), and the contiguous-gradients bucket is the one reduce_bucket_size buffer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ftopt.estimate import analytic
from ftopt.spec import Combination, Precision, TrainingSetup, load_model
from ftopt.spec.policy import storage

CHILD = r"""
import json, sys, torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback
from ftopt.model.build import build_model
from ftopt.spec import RunSpec, load_model
from ftopt.train.worker import training_arguments

spec = RunSpec.model_validate_json(sys.argv[1])
model_spec = load_model(spec.model.ref)
args = training_arguments(spec, torch.device("cpu"), 1, spec.schedule.max_steps)  # registers the ZeRO-3 config
model = build_model(model_spec, spec.combination, spec.setup.precision, device="cpu")
ids = torch.arange(2 * spec.setup.seq_len).remainder(model_spec.vocab_size).view(2, -1)
data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
seen = {}

class BeforeFirstForward(TrainerCallback):
    def on_step_begin(self, *a, **k):
        if seen:
            return
        opt = trainer.model_wrapped.optimizer  # DeepSpeedZeroOptimizer_Stage3
        buf = opt.grad_partitions_flat_buffer
        seen.update(type=type(opt).__name__, grad_buffer_bytes=buf.numel() * buf.element_size(),
                    bucket_bytes=[b.buffer.numel() * b.buffer.element_size() for b in opt.ipg_buckets.values()])

trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[BeforeFirstForward()])
trainer.train()
print(json.dumps(seen))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_zero3_gradient_buffer_and_bucket_match_a_real_engine(tmp_path):
    pytest.importorskip("deepspeed")
    from ftopt.spec import RunSpec, load_hardware

    # seq 128: the loss tensors make forward/backward the peak, the phase where a formula without the partition buffer counts no gradients
    setup = TrainingSetup(seq_len=128, micro_batch=2, precision=Precision.FP32)
    combo = Combination(zero=3, attn="eager")
    spec = RunSpec(
        model={"ref": "tiny-llama"},
        hardware=load_hardware("cpu"),
        setup=setup,
        combination=combo,
        schedule={"max_steps": 1},
        output={"dir": str(tmp_path / "run")},
    )
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    p = subprocess.run(
        [sys.executable, "-c", CHILD, spec.model_dump_json(by_alias=True)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    real = json.loads(p.stdout.strip().splitlines()[-1])
    assert real["type"] == "DeepSpeedZeroOptimizer_Stage3"

    model = load_model("tiny-llama")
    st = storage(setup.precision, combo)
    states = analytic.zero_states(model, setup, combo, st)
    # allocated when the engine is built, before the first forward: resident in every phase
    assert real["grad_buffer_bytes"] == states.grads > 0
    assert analytic.gradients_resident(setup, combo)
    bd, phase, _ = analytic.memory(model, setup, combo, on_gpu=False)
    assert phase == "forward/backward" and bd.gradients == real["grad_buffer_bytes"]
    # one reduce_bucket_size buffer per communication dtype, the size Hugging Face fills in for ftopt's "auto"
    assert analytic.reduce_bucket_bytes(model, combo, st) == sum(real["bucket_bytes"])


def test_the_trace_runs_inside_a_zero3_run():
    """The worker predicts after training, with transformers' ZeRO-3 config still registered: the trace must build
    its meta model outside deepspeed.zero.Init (before, it fell back to the formulas) and leave the config set."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from ftopt.estimate.traced import traced_memory

    registered = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    setup = TrainingSetup(seq_len=32, micro_batch=2, precision=Precision.FP32, gpus_per_node=2)
    bd, _phase, _ = traced_memory(load_model("tiny-llama"), setup, Combination(zero=3, attn="eager"), target="cpu")
    assert bd.activations > 0 and is_deepspeed_zero3_enabled()
    del registered
