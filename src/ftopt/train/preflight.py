"""Checks on this machine's devices before anything loads: a run that cannot work fails in one line, at once.

The hardware in the RunSpec is what the *predictions* assume (possibly a GPU you are planning to rent); this file
checks what this machine can actually run.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil

from ftopt.spec import Attention, Precision, RunSpec
from ftopt.spec.errors import FtoptError
from ftopt.spec.hardware import AMPERE, FP16_NEEDS_CUDA  # AMPERE: FlashAttention-2 and bf16 need sm80+


def check_devices(spec: RunSpec) -> None:
    import torch

    from ftopt.spec.combination import Offload, Optim, Quant

    if spec.combination.quant is not Quant.NONE or spec.combination.optim is not Optim.ADAMW:
        from ftopt.model.quantize import require_bitsandbytes

        require_bitsandbytes()
    precision, attn = spec.setup.precision, spec.combination.attn
    if not torch.cuda.is_available():
        if attn is Attention.FLASH:
            raise FtoptError(
                "--attn flash needs a CUDA GPU (and the flash-attn package); on this machine use --attn sdpa."
            )
        if precision is Precision.FP16_MIXED:
            raise FtoptError(FP16_NEEDS_CUDA)
        if spec.combination.uses_fsdp and spec.combination.offload is Offload.ALL:
            # CPUOffloadPolicy pins host memory for a CUDA device: without one every rank fails as it shards
            raise FtoptError(
                "--fsdp with --offload all (FSDP2's CPUOffloadPolicy) moves states between a CUDA GPU and the host; "
                "this machine has no CUDA GPU: use --offload none."
            )
        return
    cap = torch.cuda.get_device_capability(0)
    name = torch.cuda.get_device_name(0)
    if precision in (Precision.BF16_MIXED, Precision.BF16_TRUE) and cap < AMPERE:
        raise FtoptError(
            f"This GPU ({name}, compute capability {cap[0]}.{cap[1]}) cannot run bf16; use "
            "--precision fp16-mixed or fp32."
        )
    if attn is Attention.FLASH:
        if cap < AMPERE:
            raise FtoptError(
                f"--attn flash needs compute capability 8.0 or newer; this GPU ({name}) has "
                f"{cap[0]}.{cap[1]}. Use --attn sdpa."
            )
        if importlib.util.find_spec("flash_attn") is None:
            raise FtoptError("--attn flash needs the flash-attn package (pip install flash-attn); or use --attn sdpa.")
    if spec.setup.gpus_per_node > torch.cuda.device_count():
        raise FtoptError(
            f"--gpus {spec.setup.gpus_per_node} but this machine has {torch.cuda.device_count()} CUDA GPU(s)."
        )


def check_launch(spec: RunSpec, rdzv) -> None:
    """Several nodes: a hostfile that is readable and well formed (DeepSpeed's parser), or a per-node rendezvous
    (ftopt.train.ranks.Rendezvous), before anything starts."""
    s = spec.setup
    if rdzv is not None:
        if spec.hostfile:
            raise FtoptError(
                "give --hostfile (start every node from here) or --node-rank (run on each node), not both."
            )
        return
    if spec.hostfile and s.nodes == 1:
        raise FtoptError(
            f"--hostfile {spec.hostfile} starts several nodes; give --nodes N as well (how many of its hosts)."
        )
    if s.nodes == 1 or not spec.uses_launcher:
        return
    if not spec.hostfile:
        raise FtoptError(
            f"--nodes {s.nodes} needs --hostfile FILE (start every node from here over ssh) or --node-rank K "
            "--master-addr HOST (run this command on each node, as Slurm or Kubernetes do)."
        )
    from deepspeed.launcher.runner import _parse_hostfile
    from deepspeed.utils import logger as ds_logger

    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # its "Bad hostfile text" log line repeats what the error below says
    try:
        with open(spec.hostfile) as f:
            hosts = _parse_hostfile(f.readlines())
    except OSError as e:
        raise FtoptError(f"--hostfile {spec.hostfile} cannot be read: {e.strerror}.") from None
    except ValueError as e:
        raise FtoptError(
            f"--hostfile {spec.hostfile} is not a DeepSpeed host file ('host slots=N' lines): {e}"
        ) from None
    finally:
        ds_logger.setLevel(level)
    if len(hosts) < s.nodes:
        raise FtoptError(f"--hostfile {spec.hostfile} lists {len(hosts)} host(s); --nodes {s.nodes} needs {s.nodes}.")
    short = [h for h, n in list(hosts.items())[: s.nodes] if n < s.gpus_per_node]
    if short:
        raise FtoptError(
            f"--hostfile {spec.hostfile}: {short[0]} has {hosts[short[0]]} slot(s); --gpus {s.gpus_per_node} needs "
            f"{s.gpus_per_node} per node."
        )
    missing = " and ".join(tool for tool in ("pdsh", "ssh") if shutil.which(tool) is None)
    if missing:  # DeepSpeed's runner would fail only after the output folder was claimed
        raise FtoptError(
            f"--hostfile starts every node from here with pdsh over ssh, and this host lacks {missing}: install "
            "it, or run this command on each node with --node-rank K --master-addr HOST."
        )
