"""QLoRA and 8-bit AdamW train for real on the CPU (bitsandbytes' CPU backend), and quantization really happens."""

import json

import pytest

pytest.importorskip("bitsandbytes")


def _train(combo, precision, steps=25, lr=3e-3):
    """The worker's recipe in-process: ftopt's model builder, Trainer with the combination's optimizer name."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from ftopt.model.build import build_model
    from ftopt.spec import load_model

    spec = load_model("tiny-llama")
    torch.manual_seed(0)
    # a learnable task: every sequence is the same repeating pattern
    ids = (torch.arange(32) % 7 + 5).repeat(16, 1)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    model = build_model(spec, combo, precision)
    losses = []
    args = TrainingArguments(
        output_dir="/tmp/ftopt-quant-test",
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        optim=combo.optim.hf_name,
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=precision.value == "bf16-mixed",
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return model, trainer, losses


def test_qlora_trains_with_nf4_linears():
    import bitsandbytes as bnb
    import torch

    # fp32 compute keeps the test fast on CPUs without bf16 units; the base is NF4 all the same
    from ftopt.spec import Combination, Precision, load_model

    targets = tuple(load_model("tiny-llama").all_linear_names())
    model, _, losses = _train(
        Combination(lora_r=8, lora_targets=targets, quant="nf4", gc=True), Precision.FP32, steps=20, lr=1e-2
    )
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 4 * 7  # every decoder linear of the 4-layer model, not the LM head
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested for m in four_bit)
    assert all(m.weight.dtype == torch.uint8 and not m.weight.requires_grad for m in four_bit)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # adapters in fp32
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_adamw_8bit_keeps_uint8_states():
    import torch

    from ftopt.spec import Combination, Precision

    model, trainer, losses = _train(Combination(optim="adamw-8bit"), Precision.FP32, steps=20, lr=1e-3)
    states = trainer.optimizer.state
    emb = model.get_input_embeddings().weight
    big = [p for p in model.parameters() if p.numel() >= 4096 and p is not emb]
    assert big and all(
        states[p]["state1"].dtype == torch.uint8 and states[p]["state2"].dtype == torch.uint8 for p in big
    )
    assert states[emb]["state1"].dtype == torch.float32  # Trainer's 32-bit override for nn.Embedding
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_cli_train_runs_qlora(tmp_path):
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    out = tmp_path / "q"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--out",
            str(out),
            "--json",
            "--max-steps",
            "4",
            "--lora-r",
            "4",
            "--quant",
            "nf4",
            "--optim",
            "adamw-8bit",
            "--precision",
            "fp32",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["combination"]["quant"] == "nf4" and m["combination"]["optim"] == "adamw-8bit"
