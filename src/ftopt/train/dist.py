"""What the ranks of one run agree on before training, and how they end: engine-neutral (DeepSpeed's and FSDP's
workers alike), over torch.distributed.

- the run: rank 0's specification is broadcast; a node started with a different run fails at once;
- the output folder: shared by all nodes, or one per node (then DeepSpeed keeps checkpoints node-local);
- the checkpoint to resume from: rank 0 decides, every rank loads that one;
- Ctrl-C: a rank that gets SIGINT stops at the end of the step, together with all others (StopVote);
- the end: every rank destroys its process group (a group left to the interpreter's exit aborted rank 1 once,
  "terminate called without an active exception", after the run had finished).
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import NamedTuple

from ftopt.spec.errors import FtoptError

MARKER = ".ftopt-shared-check"  # rank 0 writes it; a node that sees it shares rank 0's output folder


def init(device, always: bool = False) -> int:
    """Join the run's process group (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from the launcher); the world size.
    Joined before the Trainer, which then uses this group, because the ranks must agree on the above first.
    `always`: join it with one rank too (FSDP2 shards over a device mesh even of one)."""
    import datetime

    import torch.distributed as dist

    from ftopt.spec.dsconfig import RANK_TIMEOUT_SECONDS

    world = int(os.environ.get("WORLD_SIZE", 1))
    if (world > 1 or always) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=RANK_TIMEOUT_SECONDS))
    return world


def collective_device() -> str:
    """Where a small tensor for a collective lives: NCCL reduces CUDA tensors only, gloo CPU ones."""
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def close() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _broadcast(obj):
    import torch.distributed as dist

    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_on_run(spec):
    """Rank 0's run for every rank, with this node's own output folder; a different run on this node fails."""
    from ftopt.train.outputs import differences

    theirs = _broadcast(spec.to_json())
    mine = spec.identity()
    rank0 = type(spec).model_validate(theirs)
    diff = differences(rank0.identity(), mine)
    if diff:
        raise FtoptError(f"this node was started with a different run than node 0: {'; '.join(diff[:3])}.")
    return rank0.model_copy(update={"output": spec.output})


def output_shared(out: Path, rank: int) -> bool:
    """Whether every rank sees rank 0's output folder (one shared folder) or only node 0's ranks do (one folder per
    node); a mix fails. Rank 0 writes a random token there and the ranks of the other nodes look for it."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return True
    token = secrets.token_hex(8) if rank == 0 else None
    if rank == 0:
        (out / MARKER).write_text(token)
    token = _broadcast(token)
    other_node = rank != int(os.environ.get("LOCAL_RANK", 0))  # node 0's ranks are 0..k-1, their local ranks
    try:
        sees = other_node and (out / MARKER).read_text() == token
    except OSError:
        sees = False
    votes = torch.tensor([int(sees), int(other_node)], device=collective_device())
    dist.all_reduce(votes)
    dist.barrier()
    if rank == 0:
        (out / MARKER).unlink(missing_ok=True)
    seen, others = int(votes[0].item()), int(votes[1].item())
    if 0 < seen < others:
        raise FtoptError(
            f"{seen} of the {others} ranks on other nodes see node 0's output folder {out}: give every node its "
            "own folder, or one folder all nodes share."
        )
    return seen == others


def finished(spec, rank: int) -> dict | None:
    """--resume of a run that already finished: rank 0 reads its folder and tells every rank (a per-node run's
    other nodes may not see that folder); rank 0 gets the metrics, the others {}, and nobody trains."""
    from ftopt.train.outputs import finished_run

    done = finished_run(spec) if rank == 0 and spec.output.resume else None
    return (done if rank == 0 else {}) if _broadcast(done is not None) else None


class Agreed(NamedTuple):
    spec: object  # RunSpec: rank 0's, with this node's output folder
    done: dict | None  # --resume of a finished run: its metrics (rank 0) or {} (the others); nobody trains
    node_local: bool  # this node has its own output folder (not rank 0's)
    resume: Path | None  # the checkpoint every rank resumes from


def agree(spec, rank: int, world: int, latest, *, claim: bool) -> Agreed:
    """What the ranks settle before training, in order (the module doc says why): the run, whether it already
    finished, the output folder (`claim`: no launcher claimed it, so rank 0 does here), the checkpoint (`latest`:
    the worker's newest complete checkpoint in a folder)."""
    done = None
    if world > 1:
        spec = agree_on_run(spec)
    if world > 1 or claim:  # a launcher checked a one-process run itself (ftopt.train.engine.launch)
        done = finished(spec, rank)
        if done is not None:
            return Agreed(spec, done, False, None)
    if claim:
        claim_folder(spec, rank)
    node_local = not output_shared(spec.output_dir, rank)
    resume = resume_checkpoint(spec.output_dir, rank, latest) if spec.output.resume else None
    return Agreed(spec, None, node_local, resume)


def claim_folder(spec, rank: int) -> None:
    """The folder claim of ranks no launcher started (torchrun.sh): rank 0 claims it (ftopt.train.outputs.
    prepare_output, the same claim as ftopt's launcher makes) before any rank writes there; a refusal ends every
    rank with the same sentence."""
    from ftopt.train.outputs import prepare_output

    error = None
    if rank == 0:
        try:
            prepare_output(spec)
        except FtoptError as e:
            error = str(e)
    error = _broadcast(error)
    if error is not None:
        raise FtoptError(error)
    if rank != 0:
        prepare_output(spec, claim=False)  # a node's own folder, when it does not share rank 0's


def resume_checkpoint(out: Path, rank: int, latest) -> Path | None:
    """Rank 0's newest complete checkpoint, the one every rank resumes from; a rank without it fails at once."""
    name = _broadcast(latest(out).name if rank == 0 and latest(out) else None)
    if name is None:
        return None
    path = out / name
    if not (path / "trainer_state.json").exists():
        raise FtoptError(f"rank 0 resumes from {name}, which {out} on this node does not hold complete.")
    return path


class Interrupt:
    """SIGINT (forwarded by the launcher) inside the training loop asks for a stop at the end of the step; outside
    it, it interrupts at once as usual."""

    def __init__(self):
        self.asked = False
        self.in_loop = False
        self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if not self.in_loop:
            raise KeyboardInterrupt
        self.asked = True

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._old)
