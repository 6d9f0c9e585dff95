"""The FSDP2 loop steps as the Hugging Face Trainer steps: the gradient of the mean token loss over the whole step,
however the tokens fall into micro-batches; the Trainer's weight decay (0.0 by default); fp16-mixed with a loss
scaler that skips a step whose gradients overflow. One process, a one-rank gloo group and a tiny llama sharded by
ftopt's own shard_model, so the loop runs exactly as on a rank."""

import copy

import pytest
import torch

from ftopt.spec import Combination, OutputSpec, RunSpec, Schedule, TrainingSetup, load_hardware
from ftopt.train.sft import SftCollator
from tests.train.test_sft import _tiny_llama as tiny_llama  # untied embeddings: unused rows get no gradient

PAD = 0


@pytest.fixture
def group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class NoPeak:
    def after_step(self, step: int) -> None:
        pass


class Prep:
    """What FsdpLoop reads of ftopt.train.prepare.Prepared: the rows and the collator."""

    def __init__(self, rows):
        self.train_dataset, self.collator = rows, SftCollator(pad_token_id=PAD)


def row(tokens: list[int], trained: int) -> dict:
    """A row whose last `trained` tokens carry labels (a prompt and its completion)."""
    return {"input_ids": tokens, "labels": [-100] * (len(tokens) - trained) + tokens[-trained:]}


def loop_for(tmp_path, model, rows, precision="fp32", **schedule):
    from torch.distributed.device_mesh import init_device_mesh

    from ftopt.train.fsdp_engine import shard_model
    from ftopt.train.fsdp_loop import FsdpLoop

    spec = RunSpec(
        hardware=load_hardware("cpu"),
        setup=TrainingSetup(seq_len=16, micro_batch=1, grad_accum=len(rows), precision=precision),
        combination=Combination(fsdp="full"),
        schedule=Schedule(max_steps=1, learning_rate=1e-3, warmup_ratio=0, **schedule),
        output=OutputSpec(dir=str(tmp_path / "run")),
    )
    shard_model(model, spec, init_device_mesh("cpu", (1,)))
    return FsdpLoop(spec, model, Prep(rows), torch.device("cpu"), 0, 1, 1, NoPeak())


def full(p) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


ROWS = [row([5, 6, 7, 8, 9], trained=2), row(list(range(10, 22)), trained=11)]  # 1 and 10 predicted tokens


def test_an_accumulated_step_has_the_gradient_of_the_mean_token_loss_over_the_step(tmp_path, group):
    """Two micro-batches of 1 and 10 predicted tokens: the step's gradient is that of the 11 tokens' mean loss
    (the Trainer's num_items_in_batch), not the mean of the two micro-batches' means."""
    model = tiny_llama()
    ref = copy.deepcopy(model)
    logits = [ref(input_ids=torch.tensor([r["input_ids"]])).logits[0, :-1] for r in ROWS]
    labels = torch.tensor([t for r in ROWS for t in r["labels"][1:]])
    loss = torch.nn.functional.cross_entropy(torch.cat(logits), labels, ignore_index=-100, reduction="mean")
    loss.backward()
    loop = loop_for(tmp_path, model, ROWS, max_grad_norm=0)  # no clipping: the raw gradient is compared
    seen = {}

    def grads(optimizer, args, kwargs):
        seen.update({n: full(p.grad).clone() for n, p in model.named_parameters()})

    loop.optimizer.register_step_pre_hook(grads)
    loop.train(lambda m: None)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(seen[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    logged = [r["loss"] for r in loop.steps_log.read()]
    assert logged == pytest.approx([loss.item()], rel=1e-5)  # the logged loss is that mean too


def test_a_step_decays_no_weight_by_default_as_the_trainer(tmp_path, group):
    """TrainingArguments.weight_decay is 0.0: embedding rows of tokens the step never saw keep their values
    (AdamW's update is 0 without a gradient; decay alone would shrink them)."""
    model = tiny_llama()
    before = model.model.embed_tokens.weight.detach().clone()
    loop = loop_for(tmp_path, model, ROWS)
    loop.train(lambda m: None)
    after = full(model.model.embed_tokens.weight).detach()
    seen = sorted({t for r in ROWS for t in r["input_ids"]})
    unseen = [t for t in range(after.shape[0]) if t not in seen]
    assert not torch.equal(after[seen], before[seen])  # the step did update what it saw
    assert torch.equal(after[unseen], before[unseen])


def test_fp16_mixed_skips_a_step_whose_gradients_overflow(tmp_path, group):
    """fp16-mixed scales the loss (torch.amp.GradScaler on FSDP2's DTensor gradients): logits pushed past fp16's
    range give inf/NaN gradients, and the step is skipped, every weight kept finite and unchanged, the learning
    rate schedule not advanced and the loss scale backed off."""
    model = tiny_llama()
    model.lm_head.register_forward_hook(lambda m, i, out: out * 1e6)  # beyond fp16's 65504
    loop = loop_for(tmp_path, model, ROWS, precision="fp16-mixed")
    before = {n: full(p).detach().clone() for n, p in model.named_parameters()}
    loop.train(lambda m: None)
    for n, p in model.named_parameters():
        assert torch.equal(full(p).detach(), before[n]), n
    assert loop.scaler.get_scale() < 2.0**16  # GradScaler's init_scale
    assert loop.scheduler.last_epoch == 0
