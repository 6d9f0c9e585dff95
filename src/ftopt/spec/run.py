"""The run specification: everything one fine-tuning run needs, in one validated object.

`ftopt plan --out` writes it in full, `ftopt train --plan` runs exactly that, `ftopt bench` hands one to each run
as a file, and `resolved_config.json`, `metrics.json` and every results line echo it. Nothing downstream rebuilds
a run from loose flags: the CLI builds a `RunSpec` once and passes it along.

Defaults live here and in `TrainingSetup`/`Combination`; where a CPU and a GPU need different ones (a CPU cannot
train 2048-token bf16 batches in reasonable time), `TrainingSetup.for_hardware` derives them from the hardware.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftopt.spec.combination import Combination
from ftopt.spec.errors import FieldError
from ftopt.spec.hardware import HardwareSpec
from ftopt.spec.training import AdamWKernel, TrainingSetup

RUN_SCHEMA = "ftopt.run/1"
OPTIMIZER_DEFAULTS = ("weight_decay", "max_grad_norm")  # Schedule fields a run spec may lack (see identity)
DEFAULT_MODEL = "tiny-llama"  # the built-in model: a 4-layer llama preset


class LrSchedule(str, Enum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class ReportTo(str, Enum):
    NONE = "none"
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


class TrainOn(str, Enum):
    """Which tokens of a chat example carry a loss label (`--train-on`; ftopt.train.chat_spans finds them)."""

    ALL = "all"  # every token, user and system turns included
    ASSISTANT = "assistant"  # every assistant turn (content + the end-of-turn token the template emits)
    LAST_ASSISTANT = "last-assistant"  # the last assistant turn only; earlier turns are context


class ModelRef(BaseModel):
    """Which model: a preset, a config.json, a local folder or a Hub id (`org/name[@revision]`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ref: str = Field(DEFAULT_MODEL, description="preset, config.json, local model folder or Hub id")
    weights: bool = Field(False, description="load pretrained weights (folder or Hub); False = random init")
    tokenizer: str | None = Field(None, description="tokenizer folder or Hub id; None = the model's own")
    trust_remote_code: bool = False

    @property
    def builtin(self) -> bool:
        return self.ref == DEFAULT_MODEL and not self.weights


class DataSpec(BaseModel):
    """Training and evaluation data, and how evaluation generates (capped: generation is slow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    train: str | None = Field(None, description="JSONL/JSON/CSV/Parquet file or datasets folder; None = built-in task")
    eval: str | None = None
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="held out from --data when no --eval-data; 0 = none")
    eval_max_examples: int = Field(64, ge=0, description="held-out examples scored by generation; 0 = no generation")
    metrics: tuple[str, ...] = Field(
        (), description="user quality metrics, module:function -> float (ftopt.results.quality)"
    )
    train_on: TrainOn = Field(TrainOn.ASSISTANT, description="chat data: which tokens are trained")

    @model_validator(mode="after")
    def _eval_needs_train(self) -> DataSpec:
        # the built-in task brings its own held-out rows: a file given beside it would be read by nothing
        if self.eval is not None and self.train is None:
            raise FieldError(
                f"eval {self.eval} needs train: the built-in task holds out its own rows, so the file "
                "would not be read",
                "eval",
                "train",
            )
        return self


class Schedule(BaseModel):
    """How long and how fast: steps, learning rate, checkpoints, an optional wall-clock budget."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # an infinite rate or budget is a typo
    max_steps: int = Field(-1, description="-1 = run the epochs")
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: LrSchedule = LrSchedule.COSINE
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    # TrainingArguments' defaults (transformers 5), read by every engine: the Trainer, ftopt's FSDP2 loop and the
    # exported configs, so the same run spec trains alike whichever engine shards it
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay (not on biases and norms)")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the global gradient norm to this; 0 = no clipping")
    # numpy's legacy seeding, which transformers' set_seed calls, takes 0 to 2**32 - 1 and raises on anything else
    seed: int = Field(0, ge=0, lt=2**32, description="random seed of the run and of the held-out split")
    save_steps: int = Field(200, gt=0)
    max_hours: float | None = Field(None, gt=0, description="stop cleanly at a checkpoint after this many hours")

    @model_validator(mode="after")
    def _rules(self) -> Schedule:
        if self.max_steps == 0 or self.max_steps < -1:
            raise FieldError(f"max_steps must be positive, or -1 to run the epochs; got {self.max_steps}", "max_steps")
        return self


class OutputSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dir: str = "ftopt-runs/default"
    resume: bool = False
    overwrite: bool = False
    report_to: ReportTo = ReportTo.NONE

    @model_validator(mode="after")
    def _rules(self) -> OutputSpec:
        if self.resume and self.overwrite:
            raise FieldError(
                "give resume (continue the run in the folder) or overwrite (replace it), not both",
                "resume",
                "overwrite",
            )
        return self


# Combination fields a run specification written before them lacks; at their defaults they leave the identity as it was
LORA_VARIANT_FIELDS = ("dora", "rslora", "qlora_recipe", "adapter_dtype", "lora_dropout")


class RunSpec(BaseModel):
    """One fine-tuning run, complete. Serialized as `resolved_config.json` and as `run` in a plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_id: Literal["ftopt.run/1"] = Field(RUN_SCHEMA, alias="schema")
    model: ModelRef = ModelRef()
    hardware: HardwareSpec = Field(description="the hardware the predictions assume (a preset, 'cpu' or a file)")
    setup: TrainingSetup
    combination: Combination = Combination()
    data: DataSpec = DataSpec()
    schedule: Schedule = Schedule()
    output: OutputSpec = OutputSpec()
    # several nodes need it only in hostfile mode (train checks): a plan is made before anyone has the cluster
    hostfile: str | None = Field(None, description="DeepSpeed host file for several nodes started from one host")

    @model_validator(mode="before")
    @classmethod
    def _packing_moved(cls, data):
        """Files written before packing moved from `data` to `setup` (it shapes every batch the estimates see)."""
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "packing" in data["data"]:
            d = dict(data["data"])
            packing = d.pop("packing")
            setup = data.get("setup")
            setup = setup.model_dump() if isinstance(setup, TrainingSetup) else dict(setup or {})
            data = {**data, "data": d, "setup": {**setup, "packing": setup.get("packing", packing)}}
        return data

    @model_validator(mode="after")
    def _runs_as_ftopt_trains(self) -> RunSpec:
        """A run is trained by ftopt's own loop; the setup fields that describe other loops (for estimating their
        published runs) cannot be honoured, so a run file that sets them is refused rather than run otherwise."""
        s = self.setup
        if s.adamw_kernel is not AdamWKernel.FUSED or s.keeps_outputs or s.kv_cache or not s.expandable_segments:
            raise ValueError(
                "setup.adamw_kernel=foreach, keeps_outputs, kv_cache and expandable_segments=false describe other "
                "training loops for the estimators; `ftopt train` runs fused AdamW through Trainer with expandable "
                "segments"
            )
        return self

    @property
    def uses_launcher(self) -> bool:
        # FSDP2 runs its ranks under the launcher even alone (ftopt.train.fsdp_worker)
        return self.setup.world_size > 1 or self.combination.uses_deepspeed or self.combination.uses_fsdp

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    def identity(self) -> dict:
        """What makes two runs the same run (resume checks this): everything but the output options."""
        d = self.to_json()
        d.pop("output")
        d["schedule"].pop("max_hours", None)
        d["setup"].pop("headroom", None)  # the margin judges the prediction; it changes nothing the run does
        d["hardware"] = self.hardware.name  # its time-model constants may be recalibrated between the two starts
        if self.data.train_on is TrainOn.ASSISTANT:  # the default: runs (and bench keys) from before it existed match
            d["data"].pop("train_on")
        for field in LORA_VARIANT_FIELDS:  # likewise the LoRA variants and QLoRA recipe at their defaults
            if d["combination"].get(field) == Combination.model_fields[field].default:
                d["combination"].pop(field)
        for k in OPTIMIZER_DEFAULTS:  # likewise: at their defaults they leave a stored run's identity as it was
            if d["schedule"][k] == Schedule.model_fields[k].default:
                d["schedule"].pop(k)
        return d
