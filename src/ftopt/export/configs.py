"""`ftopt plan --export DIR`: the recommended run for the runners people already use.

- `ds_config.json`: the DeepSpeed config with every "auto" value resolved as Hugging Face's integration resolves
  it (transformers/integrations/deepspeed.py, `HfTrainerDeepSpeedConfig.trainer_config_finalize`), so DeepSpeed
  alone accepts it too. Written only when the run uses ZeRO.
- `sft_config.yaml`: one `trl sft --config` file (TRL's ScriptArguments + SFTConfig + ModelConfig fields).
- `launch.sh`: the `accelerate launch` command line that runs it on the planned GPUs and nodes.
- `run.json`, `hostfile`, `slurm.sbatch`: the run with ftopt itself on a cluster (ftopt.export.cluster).

The model loads as ftopt's run loads it: the same bitsandbytes quantization (TRL's ModelConfig `load_in_4bit`,
`bnb_4bit_quant_type`, `use_bnb_nested_quant`, `load_in_8bit`), the same optimizer (TrainingArguments `optim`) and the
same LoRA (`lora_alpha` from ftopt.spec.policy; `lora_dropout`, `use_dora`, `use_rslora` from the combination, the
dropout always stated: TRL's ModelConfig defaults it to 0.05). Differences TRL's script imposes on a quantized base,
stated in a comment atop sft_config.yaml (qlora_notes): TRL's `dtype` is also the 4-bit compute dtype, and TRL 1.16's
sft does not run `prepare_model_for_kbit_training`, so the non-quantized parameters stay in that dtype (the PEFT recipe
plans them in fp32; torchtune's and LitGPT's keep bf16, as TRL does); its PEFT adapters beside a 4-bit base are fp32
(torchtune and LitGPT train bf16 ones); it cannot quantize the LM head (LitGPT's recipe does).

Paths in the files are relative to the export folder (launch.sh runs from it), so the folder can be copied to a
cluster as it is. The learning rate is the published one for the run's method and model size (ftopt.spec.recipes; the
source is a comment in sft_config.yaml), not ftopt's default for its tiny built-in model.

axolotl is not installable here, so no axolotl YAML is written (its schema could not be checked).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from ftopt.export.cluster import allocator_lines, export_cluster, write_template
from ftopt.spec import AdapterDtype, Batching, ModelSpec, Precision, Quant, RunSpec, preset_names
from ftopt.spec.policy import lora_alpha, lora_targets, quantizes_head, storage
from ftopt.spec.recipes import suggested_learning_rate


def resolved_deepspeed_config(run: RunSpec, model: ModelSpec) -> dict:
    """ftopt's DeepSpeed config with "auto" replaced as transformers' integration does for this model
    (dsconfig.hf_auto_zero_sizes: bucket sizes and persistence threshold from the hidden size)."""
    from ftopt.spec.dsconfig import deepspeed_config, hf_auto_zero_sizes

    s = run.setup
    ds = deepspeed_config(run)
    ds.update(
        train_micro_batch_size_per_gpu=s.micro_batch,
        gradient_accumulation_steps=s.grad_accum,
        train_batch_size=s.micro_batch * s.grad_accum * s.world_size,
        gradient_clipping=run.schedule.max_grad_norm,  # what "auto" becomes: TrainingArguments.max_grad_norm
    )
    zero = ds["zero_optimization"]
    zero.update({k: v for k, v in hf_auto_zero_sizes(model.hidden_size).items() if zero.get(k) == "auto"})
    return ds


def _dataset_fields(run: RunSpec, folder: Path) -> dict:
    """TRL's DatasetMixtureConfig for a local file (relative to the export folder); the built-in task exists only
    inside ftopt."""
    if run.data.train is None:
        return {"dataset_name": "REPLACE-WITH-YOUR-DATASET"}
    path = os.path.relpath(Path(run.data.train).expanduser().resolve(), folder.resolve())
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(Path(path).suffix, path)
    entry = {"path": kind, "split": "train"} | ({"data_files": path} if kind != path else {})
    return {"datasets": [entry]}


_TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # Precision.compute_dtype -> torch


def _load_dtype(run: RunSpec) -> str:
    """The dtype the weights are loaded in, as ftopt's planned run stores them (ftopt.spec.policy.storage): fp32, or the
    16-bit compute dtype; for a quantized base the compute dtype (TRL passes `dtype` as bnb_4bit_compute_dtype)."""
    st = storage(run.setup.precision, run.combination)
    weight_bytes = st.frozen_weight if run.combination.lora else st.trainable_weight
    if weight_bytes == 4 and run.combination.quant is Quant.NONE:
        return "float32"
    return _TORCH_DTYPE_NAMES[run.setup.precision.compute_dtype]


def _model_id(run: RunSpec) -> str:
    """TRL loads from the Hub or a folder; an ftopt preset only names an architecture."""
    ref = run.model.ref
    return f"REPLACE-WITH-THE-HUB-ID-OF-{ref}" if ref in preset_names() else ref


def sft_config(run: RunSpec, model: ModelSpec, ds_path: str | None, folder: Path) -> dict:
    """The `trl sft --config` document for the run; paths relative to `folder`."""
    s, c, sch = run.setup, run.combination, run.schedule
    doc = {
        # ModelConfig
        "model_name_or_path": _model_id(run),
        "attn_implementation": c.attn.hf_name,
        "dtype": _load_dtype(run),
        "use_peft": c.lora,
        # SFTConfig (TrainingArguments + TRL's data options)
        # trust_remote_code (SFTConfig's, which trl/scripts/sft.py loads the model with) never from this file:
        # launch.sh's own command line gives it (`./launch.sh --trust-remote-code`; TRL's parser lets command-line
        # values override the config file, trl/scripts/utils.py TrlParser.parse_args_and_config)
        "trust_remote_code": False,
        "output_dir": run.output.dir,
        "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        "num_train_epochs": s.epochs,
        "max_steps": sch.max_steps,
        "learning_rate": suggested_learning_rate(model, c).value,
        "lr_scheduler_type": sch.lr_schedule.value,
        "warmup_steps": sch.warmup_ratio,
        "weight_decay": sch.weight_decay,
        "max_grad_norm": sch.max_grad_norm,
        "seed": sch.seed,
        "save_steps": sch.save_steps,
        "gradient_checkpointing": c.gc and not c.uses_fsdp,  # FSDP2: accelerate's fsdp_activation_checkpointing
        "bf16": s.precision is Precision.BF16_MIXED,
        "fp16": s.precision is Precision.FP16_MIXED,
        "max_length": s.seq_len,
        "packing": s.packing,
        "padding_free": s.packing,
        # --batching padded-max: every row padded to max_length, as `ftopt train` pads it (TRL's collator option)
        "pad_to_multiple_of": s.seq_len if s.batching is Batching.PADDED_MAX else None,
        "optim": c.optim.hf_name,
        "report_to": run.output.report_to.value,
        "logging_steps": 1,
        **_dataset_fields(run, folder),
    }
    if c.lora:
        doc.update(
            lora_r=c.lora_r,
            lora_alpha=lora_alpha(c.lora_r),
            lora_dropout=c.lora_dropout,
            lora_target_modules=lora_targets(model, c),  # by name, as planned ('all-linear' expanded)
            use_dora=c.dora,
            use_rslora=c.rslora,
        )
    doc.update(_quantization_fields(c.quant))
    if ds_path:
        doc["deepspeed"] = ds_path
    return doc


def _quantization_fields(quant: Quant) -> dict:
    """TRL ModelConfig's bitsandbytes fields for ftopt's recipe (ftopt.model.quantize.bnb_config: double quant for 4-bit;
    TRL's 8-bit config keeps BitsAndBytesConfig's default outlier threshold, as ftopt does)."""
    if quant is Quant.NONE:
        return {}
    if quant is Quant.INT8:
        return {"load_in_8bit": True}
    return {"load_in_4bit": True, "bnb_4bit_quant_type": quant.value, "use_bnb_nested_quant": True}


def qlora_notes(run: RunSpec, model: ModelSpec) -> list[str]:
    """Where `trl sft` with this config holds a quantized base otherwise than the planned QLoRA recipe (see the
    module docstring); one comment line each."""
    c = run.combination
    if c.quant is Quant.NONE:
        return []
    dtype = _load_dtype(run)
    if not c.qlora_recipe.keeps_16bit:
        return [
            f"QLoRA recipe peft: TRL's sft does not run prepare_model_for_kbit_training, so embeddings, norms and "
            f"the LM head stay {dtype} (ftopt planned them in fp32)"
        ]
    notes = [
        f"QLoRA recipe {c.qlora_recipe.value}: TRL keeps the base's other parameters {dtype} as planned; its LoRA "
        "adapters beside a 4-bit base are fp32 (planned: bf16)"
    ]
    if quantizes_head(model, c):
        notes.append("TRL's ModelConfig cannot quantize the LM head (planned: quantized); it stays " + dtype)
    return notes


def launch_command(run: RunSpec, config_name: str) -> list[str]:
    s = run.setup
    cmd = ["accelerate", "launch", "--num_processes", str(s.world_size), "--num_machines", str(s.nodes)]
    if run.combination.uses_deepspeed:
        cmd.append("--use_deepspeed")  # the config itself is named in the SFT config's `deepspeed` field
    if run.combination.uses_fsdp:
        from ftopt.export.fsdp import ACCELERATE_CONFIG

        cmd += ["--config_file", ACCELERATE_CONFIG]
    return cmd + ["-m", "trl.scripts.sft", "--config", config_name]


def launch_line(run: RunSpec, config_name: str) -> str:
    """launch_command as a shell line, with a multi-node run's machine arguments before the script's, and
    launch.sh's own arguments after them (TRL's flags: trust is given there, never by sft_config.yaml)."""
    cmd = launch_command(run, config_name)
    at = cmd.index("-m")
    return shlex.join(cmd[:at]) + machine_args(run) + " " + shlex.join(cmd[at:]) + ' "$@"'


LAUNCH_TRUST_NOTE = (
    "# trust comes from this command line, never from sft_config.yaml: ./launch.sh --trust-remote-code\n"
)


def machine_args(run: RunSpec) -> str:
    """Several nodes: launch.sh runs once per node, with that node's rank and node 0's address from the
    environment (accelerate has no way to find them itself)."""
    if run.setup.nodes == 1:
        return ""
    return (
        " --machine_rank \"${MACHINE_RANK:?set MACHINE_RANK to this node's rank, 0.."
        + str(run.setup.nodes - 1)
        + '}" --main_process_ip "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP to node 0\'s address}"'
    )


def _adapter_dtype_comment(run: RunSpec) -> str:
    """TRL's SFT script (trl 1.16 SFTTrainer) calls get_peft_model with PEFT's default fp32 adapters, passing
    autocast_adapter_dtype=False only under ZeRO-3, and its config has no field for it: a run planned with
    16-bit adapters says so where TRL reads its settings."""
    if run.combination.adapter_dtype is AdapterDtype.FP32 or not run.combination.lora:
        return ""
    return (
        "# planned with LoRA adapters in the base's dtype (--adapter-dtype base); TRL's SFT config has no field "
        "for PEFT's autocast_adapter_dtype=False, so this config trains fp32 adapters: run.json "
        "('ftopt train --plan run.json', torchrun.sh) runs the plan as planned\n"
    )


def export_run(run: RunSpec, model: ModelSpec, folder: Path) -> list[Path]:
    """Write the files (see the module docstring) into `folder`; returns their paths."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    ds_path = None
    if run.combination.uses_deepspeed:
        ds_file = write_template(folder, "ds_config.json", json.dumps(resolved_deepspeed_config(run, model), indent=2))
        written.append(ds_file)
        ds_path = "ds_config.json"  # relative: launch.sh runs from the folder; an edited one is the one used
    if run.combination.uses_fsdp:
        from ftopt.export.fsdp import export_fsdp

        written += export_fsdp(run, model, folder)
    lr = suggested_learning_rate(model, run.combination)
    # run.json (ftopt's own launch, Slurm's) trains at the same published rate as the SFT config, not at the
    # plan's default for the tiny built-in model
    run = run.model_copy(update={"schedule": run.schedule.model_copy(update={"learning_rate": lr.value})})
    cfg_file = write_template(
        folder,
        "sft_config.yaml",
        "".join(f"# {line}\n" for line in (lr.comment(), *qlora_notes(run, model)))
        + _adapter_dtype_comment(run)
        + yaml.safe_dump(sft_config(run, model, ds_path, folder), sort_keys=False),
    )
    launch = write_template(
        folder,
        "launch.sh",
        "#!/bin/sh\n# the planned run through TRL's SFT script ("
        + run.combination.label()
        + ")\n"
        + LAUNCH_TRUST_NOTE
        + allocator_lines(run)
        + 'cd "$(dirname "$0")"\nexec '
        + launch_line(run, "sft_config.yaml")
        + "\n",
    )
    launch.chmod(0o755)
    return written + [cfg_file, launch] + export_cluster(run, folder)
