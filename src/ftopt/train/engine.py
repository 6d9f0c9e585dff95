"""`ftopt train`: Hugging Face Trainer + PEFT + DeepSpeed with one RunSpec, measured.

One process runs in-process. ZeRO or several GPUs start one process per rank running `ftopt.train.worker`, each
handed the run specification itself (not a path that must exist on every node):
- on one node, and on each node of a per-node run (`--nodes N --node-rank K --master-addr HOST`, the way Slurm
  and Kubernetes start one command per node), ftopt.train.ranks starts this node's ranks;
- with `--hostfile`, DeepSpeed's pdsh runner starts every node's ranks from this host (ftopt.train.hostfile).
On a CPU the ranks use gloo, on GPUs NCCL. A run has no wall-clock limit (fine-tunes take hours or days); a lost
rank fails it through the collective timeout (dsconfig.RANK_TIMEOUT_SECONDS), and `--max-hours` stops it cleanly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError, Interrupted
from ftopt.spec.trust import CommandLineTrust, admit
from ftopt.train import hostfile, ranks
from ftopt.train.allocator import allocator_env
from ftopt.train.outputs import finished_run, prepare_output
from ftopt.train.preflight import check_devices, check_launch


def launch(
    spec: RunSpec, trust: CommandLineTrust, rdzv: ranks.Rendezvous | None = None, source: str | Path | None = None
) -> dict | None:
    """Every way `ftopt train` starts a run (one process, this node's ranks, every node over a host file) passes
    here, after ftopt.train.start.prepare's checks: the trust gate (ftopt.spec.trust.admit; `trust` is the command
    line's, `source` the file the run was read from; prepare passed it already, so it changes nothing then), the
    folder claim (ftopt.train.outputs.prepare_output), then the run. Returns metrics.json's content (None on a node
    whose folder does not hold it: a per-node run's other nodes, when the output folder is not shared)."""
    spec = admit(spec, trust, source)
    check_devices(spec)
    check_launch(spec, rdzv)
    # a per-node run's other nodes cannot see node 0's folder: there rank 0 decides (ftopt.train.dist.finished)
    done = finished_run(spec) if rdzv is None else None
    if done is not None:
        steps = (done.get("measured") or {}).get("steps")
        print(f"--resume: the run in {spec.output_dir} is complete ({steps} steps); nothing to train.", file=sys.stderr)
        return done
    by_hostfile = spec.setup.nodes > 1 and rdzv is None  # DeepSpeed's pdsh runner starts the nodes
    trainer_ranks = spec.uses_launcher and not spec.combination.uses_fsdp  # FSDP2 ranks need no DeepSpeed
    if (by_hostfile or trainer_ranks) and importlib.util.find_spec("deepspeed") is None:
        raise FtoptError("ZeRO, multi-GPU and --hostfile runs need DeepSpeed: pip install deepspeed.")
    prepare_output(spec, claim=rdzv is None or rdzv.node_rank == 0)
    if not spec.uses_launcher:
        from ftopt.train.worker import run_worker

        # read by torch when CUDA first allocates, which happens after this (the worker builds the model)
        os.environ.update(allocator_env(os.environ, on_cuda=not spec.hardware.is_cpu))
        return run_worker(spec, claim=False)
    args = ranks.rank_args(spec, trust)  # each rank passes the same gates; the folder is claimed already
    if by_hostfile:
        return hostfile.launch(spec, _env(spec), worker_module(spec), args)
    rdzv = rdzv or ranks.Rendezvous(procs_per_node=spec.setup.gpus_per_node, master_port=ranks.free_port())
    return _launch_ranks(spec, rdzv, args)


def worker_module(spec: RunSpec) -> str:
    """What each rank runs: the Trainer worker, or the FSDP2 one (ftopt.train.fsdp_engine says why FSDP2 has its
    own); both read the same environment and end the same way (ftopt.train.ranks.end_rank)."""
    return "ftopt.train.fsdp_worker" if spec.combination.uses_fsdp else "ftopt.train.worker"


def _env(spec: RunSpec) -> dict[str, str]:
    alloc = allocator_env(os.environ, on_cuda=not spec.hardware.is_cpu)
    env = {**os.environ, **alloc, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    if spec.hardware.is_cpu and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the cores: one thread pool per rank sized to its share avoids oversubscription
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.setup.gpus_per_node))
    return env


def _launch_ranks(spec: RunSpec, rdzv: ranks.Rendezvous, args: list[str]) -> dict | None:
    out = spec.output_dir
    log_dir = out / ranks.LOG_DIR
    cmd = [sys.executable, "-u", "-m", worker_module(spec), *args]
    codes, interrupted = ranks.run_ranks(cmd, rdzv, log_dir, _env(spec))
    stopped = [c for c in codes.values() if c != 0]
    if interrupted or (stopped and all(c == ranks.INTERRUPTED for c in stopped)):
        raise Interrupted(ranks.interrupted_line(out))  # the command prints it, once
    _judge(codes, log_dir)
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        if rdzv.node_rank > 0:
            return None
        raise FtoptError(f"The run ended without metrics; see {ranks.rank_log(log_dir, 0)}.")
    return json.loads(metrics_path.read_text())


def _judge(codes: dict[int, int], log_dir) -> None:
    """Fail the run on a rank that failed before its work was done (named, with its last exception, as OOM when it
    ran out of memory); a rank that crashed after it finished is a warning."""
    for rank, code in sorted(codes.items()):
        log = ranks.rank_log(log_dir, rank)
        if code != 0 and _finished(log, rank):
            print(
                f"warning: rank {rank} exited with {code} after it finished its work: {ranks.last_exception(log)} "
                f"(log: {log})",
                file=sys.stderr,
            )
    failed = {r: c for r, c in codes.items() if c != 0 and not _finished(ranks.rank_log(log_dir, r), r)}
    rank = ranks.failing_rank(failed)
    if rank is None:
        return
    oom = [r for r in failed if ranks.is_oom(ranks.rank_log(log_dir, r))]
    rank = oom[0] if oom else rank
    log = ranks.rank_log(log_dir, rank)
    raise FtoptError(ranks.failure_message(rank, ranks.last_exception(log), log, oom=bool(oom), code=codes[rank]))


def _finished(log, rank: int) -> bool:
    try:
        return ranks.FINISHED.format(rank=rank) in log.read_text(errors="replace")
    except OSError:
        return False
