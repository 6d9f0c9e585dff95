"""`ftopt plan --export` for an FSDP2 run: an accelerate config and two launch commands.

- `accelerate_fsdp2.yaml`: accelerate's FSDP plugin at fsdp_version 2 (the config keys `accelerate config` writes,
  accelerate/commands/config/cluster.py), the same sharding as ftopt's engine: one unit per decoder layer
  (TRANSFORMER_BASED_WRAP on the model's `_no_split_modules` class), reshard_after_forward from --fsdp,
  CPUOffloadPolicy from --offload all, activation checkpointing from --gc (FSDP2 wants it from accelerate, not
  from TrainingArguments.gradient_checkpointing), sharded (DCP) checkpoints.
- `launch.sh` (written by ftopt.export.configs) then runs TRL's SFT script through `accelerate launch --config_file`.
- `torchrun.sh`: ftopt's own FSDP2 engine (ftopt.train.fsdp_worker) under torchrun, the exact run that was planned
  (`run.json`, written by ftopt.export.cluster), on every node (NODE_RANK, MASTER_ADDR from the environment). Its
  own arguments go to every rank: trust (`./torchrun.sh --trust-remote-code`) and what to do with an output folder
  that holds a run (`--resume`, `--overwrite`) come from there, never from run.json (ftopt.train.ranks.
  RankCommandLine); rank 0 claims the output folder as ftopt's launcher does.
  `ftopt train --plan run.json` runs the same with ftopt's launcher (slurm.sbatch does, per node).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ftopt.export.cluster import RUN_FILE, allocator_lines, write_template  # RUN_FILE: the planned RunSpec
from ftopt.spec import ModelSpec, Offload, Precision, RunSpec

ACCELERATE_CONFIG = "accelerate_fsdp2.yaml"
TRUST_NOTE = (
    "# trust comes from this command line, never from run.json: add --trust-remote-code (the model repo's code),\n"
    "# --allow-metric-module (data.metrics), --resume or --overwrite (an output folder that holds a run)\n"
)
TORCHRUN_PORT = 29500  # torchrun's default master port


def decoder_layer_class(model: ModelSpec) -> str:
    """The class transformers names in `_no_split_modules` for the family (what accelerate wraps per layer)."""
    from ftopt.model.build import hf_config

    try:
        from transformers import AutoModelForCausalLM

        cls = AutoModelForCausalLM._model_mapping[type(hf_config(model))]
        return ",".join(cls._no_split_modules)
    except Exception:  # a family transformers maps differently: the user fills it in
        return "REPLACE-WITH-THE-DECODER-LAYER-CLASS"


def accelerate_config(run: RunSpec, model: ModelSpec) -> dict:
    s, c = run.setup, run.combination
    mixed = {Precision.BF16_MIXED: "bf16", Precision.FP16_MIXED: "fp16"}.get(s.precision, "no")
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP",
        "mixed_precision": mixed,
        "num_machines": s.nodes,
        "num_processes": s.world_size,
        "machine_rank": 0,
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": decoder_layer_class(model),
            "fsdp_reshard_after_forward": c.fsdp.reshard_after_forward,
            "fsdp_offload_params": c.offload is Offload.ALL,
            "fsdp_activation_checkpointing": c.gc,
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        },
    }


def torchrun_command(run: RunSpec, run_file: str) -> list[str]:
    s = run.setup
    return [
        "torchrun",
        "--nproc_per_node",
        str(s.gpus_per_node),
        "--nnodes",
        str(s.nodes),
        "--node_rank",
        "${NODE_RANK:-0}",
        "--master_addr",
        "${MASTER_ADDR:-127.0.0.1}",
        "--master_port",
        str(TORCHRUN_PORT),
        "-m",
        "ftopt.train.fsdp_worker",
        run_file,
        '"$@"',  # the script's own arguments: the rank's flags (ftopt.train.ranks.RankCommandLine)
    ]


def export_fsdp(run: RunSpec, model: ModelSpec, folder: Path) -> list[Path]:
    """Write the accelerate config and the torchrun script (which runs run.json); returns their paths."""
    import yaml

    cfg = write_template(folder, ACCELERATE_CONFIG, yaml.safe_dump(accelerate_config(run, model), sort_keys=False))
    # ${...} and "$@" stay unquoted so the shell expands them; every other word is quoted
    words = [w if w.startswith(("${", '"$')) else shlex.quote(w) for w in torchrun_command(run, RUN_FILE)]
    script = write_template(
        folder,
        "torchrun.sh",
        "#!/bin/sh\n# the planned run on ftopt's FSDP2 engine ("
        + run.combination.label()
        + "); run it on every node\n"
        + TRUST_NOTE
        + allocator_lines(run)
        + 'cd "$(dirname "$0")"\nexec '
        + " ".join(words)
        + "\n",
    )
    script.chmod(0o755)
    return [cfg, script]
