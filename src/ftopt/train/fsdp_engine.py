"""The FSDP2 engine of `ftopt train --fsdp`: PyTorch's `fully_shard` driven directly, the way torchtune's recipes do.

Why not the Hugging Face Trainer (accelerate's FSDP plugin): its FSDP path does not run on a CPU (`use_cpu=True`
silently falls back to DDP; without it accelerate raises "Using fsdp only works in distributed training"), so it
could never be tested or measured here. `fully_shard` itself runs on CPU (gloo) and GPU (NCCL) alike, so ftopt owns
the small loop (ftopt.train.fsdp_worker) and reuses everything else: the model build (LoRA, GC), the data, the step
log, the memory helper and metrics.json.

Launch: ftopt's own launcher starts one `python -m ftopt.train.fsdp_worker` per GPU or, on a CPU, per gloo rank,
exactly as it starts the Trainer worker (ftopt.train.engine, ftopt.train.ranks: per-node runs, rank logs, Ctrl-C,
the failing rank and OOM named); `plan --export` also writes the torchrun command.

Sharding (this module): each decoder layer is one FSDP unit, then the root (embeddings, final norm, LM head):
torch/distributed/fsdp/_fully_shard/_fully_shard.py ("users ... apply fully_shard to each transformer block and
then to the root"), as torchtune's `shard_model` does. A LoRA model's frozen base is sharded with its adapters:
FSDP2 allows frozen and trainable parameters in one group (per-parameter sharding, no FlatParameter). The root is
the transformers model, inside PEFT's wrapper (which holds no parameters of its own): PeftModel.generate calls the
inner model's generate, which runs the inner model's forward, so only a root there gathers the embeddings and LM
head for generation (and FSDP2 takes the first FSDP module whose forward runs as the root).
"""

from __future__ import annotations

import json

from ftopt.spec import Offload, Precision, RunSpec
from ftopt.spec.errors import FtoptError

CHECKPOINT_STATE = "trainer_state.json"  # written last into checkpoint-N (outputs.latest_complete_checkpoint reads it)


def decoder_layers(model) -> list:
    """The modules that become one FSDP unit each: the classes transformers lists in `_no_split_modules` (the
    decoder layer; accelerate's transformer auto-wrap policy reads the same attribute)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise FtoptError(f"{type(base).__name__} names no decoder layer class (_no_split_modules); --fsdp needs one.")
    return layers


def shard_model(model, spec: RunSpec, mesh) -> None:
    """fully_shard per decoder layer, then the root (the transformers model, under PEFT's wrapper: see the module
    docstring), in place; parameters become DTensors sharded on dim 0."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    c, p = spec.combination, spec.setup.precision
    # bf16/fp16-mixed: fp32 sharded parameters, 16-bit unsharded ones for compute, fp32 gradient reduction
    # (torchtune's and accelerate's FSDP2 default for mixed precision); fp32 and bf16-true: no casts
    compute = {Precision.BF16_MIXED: torch.bfloat16, Precision.FP16_MIXED: torch.float16}.get(p)
    mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)
    offload = CPUOffloadPolicy() if c.offload is Offload.ALL else OffloadPolicy()
    kw = dict(mesh=mesh, reshard_after_forward=c.fsdp.reshard_after_forward, mp_policy=mp, offload_policy=offload)
    for layer in decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model.get_base_model() if hasattr(model, "get_base_model") else model, **kw)


def save_checkpoint(folder, model, optimizer, extra: dict, rank: int) -> None:
    """A distributed checkpoint (torch.distributed.checkpoint: every rank writes its shards), then rank 0 writes
    `trainer_state.json` last, so a crash mid-save leaves a folder resume ignores."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ftopt.spec.io import atomic_write_text

    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))
    dist.barrier()
    if rank == 0:
        atomic_write_text(folder / CHECKPOINT_STATE, json.dumps(extra))


def load_checkpoint(folder, model, optimizer) -> dict:
    """Restore the shards a checkpoint holds into the sharded model and optimizer; returns its trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((folder / CHECKPOINT_STATE).read_text())


def prune_checkpoints(out, keep: int = 2) -> None:
    """Keep the newest `keep` complete checkpoints (the Trainer's save_total_limit=2, as the ZeRO runs keep)."""
    import shutil

    cks = sorted((p for p in out.glob("checkpoint-*") if p.name[11:].isdigit()), key=lambda p: int(p.name[11:]))
    for p in cks[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def full_state_dict(model) -> dict:
    """The unsharded state dict on rank 0 (every rank joins the all-gathers; the others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
