"""Task quality of an FSDP2 run (ftopt.results.quality: generation on the held-out rows), at step 0 and at the end,
as the Trainer worker scores its runs. Two ways, both giving rank 0 the figures metrics.json records:

- gathered (where the whole model fits rank 0's device: always on a CPU, whose host built it): the full state is
  gathered to rank 0's host (get_model_state_dict(full_state_dict=True, cpu_offload=True)), loaded into a plain
  model of the same build and generated there; the other ranks wait at the next collective. One gather, then no
  collective per token: where ranks share cores, every token's all-gathers wait for every rank (the demo's FSDP2
  run: both scorings added 31 s gathered, 109 s sharded; docs/fsdp.md).
- sharded (a model rank 0's GPU cannot hold whole): every rank generates the same rows in step with the sharded
  model (generate's synced_gpus), each layer all-gathered for its forward as in training, as ZeRO-3 runs generate.
"""

from __future__ import annotations

GIB = 2**30
# Room beside the gathered model on rank 0's GPU: the KV cache and activations of one greedy row (a few MiB for
# the short completions scored) and the allocator's rounding, with the model itself counted 1.2x for its
# fragmentation; rank 0's shards, gradients and AdamW states are already off the free figure.
GATHER_SLACK_BYTES = 1 * GIB
GATHER_FACTOR = 1.2


def model_bytes(model) -> int:
    """The whole model's parameter bytes (a DTensor's numel is its global one)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def gathered_fits(model, device) -> bool:
    """Whether every rank's device has room for the whole model (CPU: yes). All ranks take the same answer (a
    MIN all-reduce), since the way decides which collectives each rank joins."""
    import torch
    import torch.distributed as dist

    fits = True
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fits = model_bytes(model) * GATHER_FACTOR + GATHER_SLACK_BYTES <= free
    flag = torch.tensor(int(fits), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def plain_copy(model, build, device):
    """Rank 0: a model of the same build (`build()`: on the host) holding the sharded model's current weights, on
    `device`; other ranks: None. Every rank must call it: the state is gathered with collectives."""
    import torch.distributed as dist

    from ftopt.train.fsdp_engine import full_state_dict

    state = full_state_dict(model)
    if dist.get_rank() != 0:
        return None
    plain = build()
    plain.load_state_dict(state)  # strict: every key the build has, the gathered state fills
    return plain.to(device)


def quality(spec, model, build, tokenizer, prep, device, log) -> dict:
    """Generation quality now (ftopt.train.worker.scored_quality), gathered or sharded (module docstring); {} on
    ranks other than 0 in the gathered way, and where the data scores no quality."""
    import torch.distributed as dist

    from ftopt.train.worker import scored_quality, scores_quality

    if not scores_quality(spec, prep.eval_rows, prep.format):
        return {}
    rows, fmt = prep.eval_rows, prep.format
    if gathered_fits(model, device):
        plain = plain_copy(model, build, device)
        return scored_quality(spec, plain, tokenizer, rows, fmt, device, log) if plain is not None else {}
    synced = dist.get_world_size() > 1
    q = scored_quality(spec, model, tokenizer, rows, fmt, device, log, synced)
    reshard(model)
    return q


def reshard(model) -> None:
    """Free the unsharded parameters a forward without backward left gathered (grad-op: reshard_after_forward=False
    keeps them until backward), so a generation adds nothing to the training peak."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
