"""`ftopt plan --export DIR`: the recommended run for the runners people already use.

- `ds_config.json`: the DeepSpeed config with every "auto" value resolved as Hugging Face's integration resolves
  it (transformers/integrations/deepspeed.py, `HfTrainerDeepSpeedConfig.trainer_config_finalize`), so DeepSpeed
  alone accepts it too. Written only when the run uses ZeRO.
- `sft_config.yaml`: one `trl sft --config` file (TRL's ScriptArguments + SFTConfig + ModelConfig fields).
- `launch.sh`: the `accelerate launch` command line that runs it on the planned GPUs and nodes.

axolotl is not installable here, so no axolotl YAML is written (its schema could not be checked).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from ftopt.io import atomic_write_text
from ftopt.policy import lora_targets, storage
from ftopt.spec import ModelSpec, Precision, RunSpec, preset_names

HF_MAX_GRAD_NORM = 1.0  # TrainingArguments.max_grad_norm default, what "gradient_clipping": "auto" becomes


def resolved_deepspeed_config(run: RunSpec, model: ModelSpec) -> dict:
    """ftopt's DeepSpeed config with "auto" replaced as transformers' integration does for this model:
    reduce_bucket_size = hidden^2, stage3_prefetch_bucket_size = 0.9 hidden^2, persistence threshold = 10 hidden."""
    from ftopt.train.dsconfig import deepspeed_config

    s, h = run.setup, model.hidden_size
    ds = deepspeed_config(run)
    ds.update(train_micro_batch_size_per_gpu=s.micro_batch, gradient_accumulation_steps=s.grad_accum,
              train_batch_size=s.micro_batch * s.grad_accum * s.world_size, gradient_clipping=HF_MAX_GRAD_NORM)
    zero = ds["zero_optimization"]
    zero["reduce_bucket_size"] = h * h
    if "stage3_prefetch_bucket_size" in zero:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * h * h)
        zero["stage3_param_persistence_threshold"] = 10 * h
    return ds


def _dataset_fields(run: RunSpec) -> dict:
    """TRL's DatasetMixtureConfig for a local file; the built-in task exists only inside ftopt."""
    if run.data.train is None:
        return {"dataset_name": "REPLACE-WITH-YOUR-DATASET"}
    path = str(Path(run.data.train).expanduser().resolve())
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(Path(path).suffix, path)
    entry = {"path": kind, "split": "train"} | ({"data_files": path} if kind != path else {})
    return {"datasets": [entry]}


def _load_dtype(run: RunSpec) -> str:
    """The dtype the weights are loaded in, as ftopt's planned run stores them (ftopt.policy.storage)."""
    st = storage(run.setup.precision, run.combination)
    weight_bytes = st.frozen_weight if run.combination.lora else st.trainable_weight
    if weight_bytes == 4:
        return "float32"
    return "float16" if run.setup.precision is Precision.FP16_MIXED else "bfloat16"


def _model_id(run: RunSpec) -> str:
    """TRL loads from the Hub or a folder; an ftopt preset only names an architecture."""
    ref = run.model.ref
    return f"REPLACE-WITH-THE-HUB-ID-OF-{ref}" if ref in preset_names() else ref


def sft_config(run: RunSpec, model: ModelSpec, ds_path: str | None) -> dict:
    """The `trl sft --config` document for the run."""
    s, c, sch = run.setup, run.combination, run.schedule
    doc = {
        # ModelConfig
        "model_name_or_path": _model_id(run), "attn_implementation": c.attn.hf_name, "dtype": _load_dtype(run),
        "use_peft": c.lora, "trust_remote_code": run.model.trust_remote_code,
        # SFTConfig (TrainingArguments + TRL's data options)
        "output_dir": run.output.dir, "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum, "num_train_epochs": s.epochs, "max_steps": sch.max_steps,
        "learning_rate": sch.learning_rate, "lr_scheduler_type": sch.lr_schedule.value,
        "warmup_steps": sch.warmup_ratio, "seed": sch.seed, "save_steps": sch.save_steps,
        "gradient_checkpointing": c.gc, "bf16": s.precision is Precision.BF16_MIXED,
        "fp16": s.precision is Precision.FP16_MIXED, "max_length": s.seq_len, "packing": s.packing,
        "padding_free": s.packing, "report_to": run.output.report_to.value, "logging_steps": 1,
        **_dataset_fields(run),
    }
    if c.lora:
        doc["lora_r"] = c.lora_r
        doc["lora_target_modules"] = lora_targets(model, c)  # the planned ones (not TRL's all-linear)
    if ds_path:
        doc["deepspeed"] = ds_path
    return doc


def launch_command(run: RunSpec, config_name: str) -> list[str]:
    s = run.setup
    cmd = ["accelerate", "launch", "--num_processes", str(s.world_size), "--num_machines", str(s.nodes)]
    if run.combination.uses_deepspeed:
        cmd.append("--use_deepspeed")  # the config itself is named in the SFT config's `deepspeed` field
    return cmd + ["-m", "trl.scripts.sft", "--config", config_name]


def export_run(run: RunSpec, model: ModelSpec, folder: Path) -> list[Path]:
    """Write the files (see the module docstring) into `folder`; returns their paths."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    ds_path = None
    if run.combination.uses_deepspeed:
        ds_file = folder / "ds_config.json"
        atomic_write_text(ds_file, json.dumps(resolved_deepspeed_config(run, model), indent=2))
        written.append(ds_file)
        ds_path = str(ds_file.resolve())
    cfg_file = folder / "sft_config.yaml"
    atomic_write_text(cfg_file, yaml.safe_dump(sft_config(run, model, ds_path), sort_keys=False))
    launch = folder / "launch.sh"
    atomic_write_text(launch, "#!/bin/sh\n# the planned run through TRL's SFT script (" + run.combination.label() +
                      ")\ncd \"$(dirname \"$0\")\"\nexec " + shlex.join(launch_command(run, cfg_file.name)) + "\n")
    launch.chmod(0o755)
    return written + [cfg_file, launch]
