"""What every `ftopt` command shares: option declarations (declared once), the error boundary (`run_body`: one line,
exit 2), hardware selection, output-folder checks and the --json stdout guard."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ftopt.spec.combination import Combination
from ftopt.spec.errors import FtoptError, Interrupted, validation_message
from ftopt.spec.hardware import PLANNING_DEFAULT_GPU
from ftopt.spec.production import ProductionOptions
from ftopt.spec.run import DEFAULT_MODEL, DataSpec

# ---- shared options (declared once; estimate, plan, train and bench reuse them) --------------------------------
Gpu = Annotated[
    str | None,
    typer.Option(
        "--gpu",
        help="hardware the predictions assume: a preset (a100-80g, "
        "h100-80g, ...), 'cpu', or a JSON file [default: this machine's GPU, or cpu]",
    ),
]
PlanGpu = Annotated[
    str | None,
    typer.Option(
        "--gpu",
        help="hardware the predictions assume: a preset (a100-80g, h100-80g, ...), 'cpu', or a JSON file "
        f"[default: {PLANNING_DEFAULT_GPU}]",
    ),
]
Gpus = Annotated[int | None, typer.Option("--gpus", help="GPUs (processes) per node [default: 1]")]
Nodes = Annotated[int | None, typer.Option("--nodes", help="number of nodes [default: 1]")]
Hostfile = Annotated[
    str | None, typer.Option("--hostfile", help="DeepSpeed host file: start every node from here over ssh")
]
SeqLen = Annotated[
    int | None, typer.Option("--seq-len", help="tokens per sequence [default: 2048 on a GPU, 64 on cpu]")
]
MicroBatch = Annotated[
    int | None, typer.Option("--micro-batch", help="sequences per GPU per forward pass [default: 1 on a GPU, 8 on cpu]")
]
Packing = Annotated[
    bool | None,
    typer.Option(
        "--packing/--no-packing",
        help="pack documents into rows of --seq-len, padding-free (TRL's layout) [default: off]",
    ),
]
BatchingOpt = Annotated[
    str | None,
    typer.Option(
        "--batching",
        help="how rows are batched: packed (as --packing) | padded (one document per row, padded to the "
        "micro-batch's longest) | padded-max (padded to --seq-len) | full (every row is --seq-len tokens, no "
        "padding) [default: padded]",
    ),
]
GradAccum = Annotated[int | None, typer.Option("--grad-accum", help="micro-batches per optimizer step [default: 1]")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="fp32 | bf16-mixed | fp16-mixed | bf16-true [default: the best the hardware runs: bf16-mixed, fp16-mixed on T4/V100, fp32 on cpu]",
    ),
]
DatasetTokens = Annotated[
    int | None,
    typer.Option("--dataset-tokens", help="tokens in one epoch [default: none: times are per step and per 1k samples]"),
]
Headroom = Annotated[
    float | None,
    typer.Option(
        "--headroom",
        help="share of GPU memory kept free beyond the predicted device total; a combination that needs it is "
        "'tight' and never recommended; 0 = none [default: 0.1]",
    ),
]
Epochs = Annotated[float | None, typer.Option("--epochs", help="epochs [default: 1]")]
Gc = Annotated[bool | None, typer.Option("--gc/--no-gc", help="gradient checkpointing [default: off]")]
LoraR = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank; 0 = full fine-tuning [default: 0]")]
LoraTargets = Annotated[
    str | None,
    typer.Option(
        "--lora-targets",
        help="comma list of module names, or all-linear (every decoder linear, not the LM head: PEFT's special "
        "value, the QLoRA paper's choice) [default: the attention projections]",
    ),
]
Dora = Annotated[
    bool | None,
    typer.Option(
        "--dora/--no-dora",
        help="DoRA (PEFT use_dora): LoRA plus a trained magnitude per output; needs LoRA [default: off]",
    ),
]
Rslora = Annotated[
    bool | None,
    typer.Option(
        "--rslora/--no-rslora",
        help="rank-stabilized LoRA (PEFT use_rslora): scaling alpha/sqrt(r); needs LoRA [default: off]",
    ),
]
# Combination's default, shown in the help of every command that takes --lora-dropout
LORA_DROPOUT_DEFAULT = f"[default: {Combination.model_fields['lora_dropout'].default:g}]"
LORA_DROPOUT_HELP = (
    "adapter dropout (PEFT lora_dropout): the share P of each wrapped linear's input zeroed before its adapter "
    "(backward keeps each dropout's mask, 1 byte per input element)"
)
LoraDropout = Annotated[
    float | None,
    typer.Option(
        "--lora-dropout", metavar="P", help=f"LoRA {LORA_DROPOUT_HELP}, 0 <= P < 1; needs LoRA {LORA_DROPOUT_DEFAULT}"
    ),
]
QLORA_RECIPE_HELP = (
    "how a quantized base keeps its other parameters: peft (fp32 after prepare_model_for_kbit_training, LM head "
    "unquantized) | torchtune (bf16, LM head unquantized) | litgpt (bf16, LM head quantized); torchtune and litgpt "
    "need --precision bf16-true"
)
QloraRecipeOpt = Annotated[str | None, typer.Option("--qlora-recipe", help=QLORA_RECIPE_HELP + " [default: peft]")]
AdapterDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter-dtype",
        help="LoRA adapters' dtype: fp32 (PEFT's default: fp32 adapters, each wrapped layer's input cast up) | "
        "base (the base model's dtype; PEFT's autocast_adapter_dtype=False) [default: fp32]",
    ),
]
Zero = Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3 [default: 0]")]
FsdpOpt = Annotated[
    str | None,
    typer.Option("--fsdp", help="PyTorch FSDP2 sharding instead of ZeRO: none | full | grad-op [default: none]"),
]
OffloadOpt = Annotated[
    str | None,
    typer.Option("--offload", help="none | optimizer | all (with --fsdp: all = CPUOffloadPolicy) [default: none]"),
]
Attn = Annotated[str | None, typer.Option("--attn", help="eager | sdpa | flash [default: sdpa]")]
QuantOpt = Annotated[
    str | None,
    typer.Option(
        "--quant", help="base quantization (bitsandbytes; needs LoRA): none | nf4 | fp4 | int8 [default: none]"
    ),
]
OptimOpt = Annotated[
    str | None, typer.Option("--optim", help="adamw | adamw-8bit | paged-adamw-8bit | paged-adamw [default: adamw]")
]
TrainOnOpt = Annotated[
    str | None,
    typer.Option(
        "--train-on",
        help="chat data: tokens trained: all | assistant (every assistant turn) | last-assistant [default: assistant]",
    ),
]
# DataSpec's default, which train and preview both leave in place when --eval-fraction is not given
EVAL_FRACTION_DEFAULT = DataSpec.model_fields["eval_fraction"].default
EvalFraction = Annotated[
    float | None,
    typer.Option(
        "--eval-fraction",
        help=f"share of --data held out for evaluation; 0 = none [default: {EVAL_FRACTION_DEFAULT:g}]",
    ),
]
# how --model is read (ftopt.spec.hub.is_local_path / parse_hub_id), stated in every --model help
MODEL_REF_RULE = (
    "org/name[@revision] is a Hub id unless a local folder of that name exists; a path starting with "
    "./, ../, / or ~ is always local"
)
PlannedModel = Annotated[
    str, typer.Option("--model", "-m", help=f"preset, config.json, model folder or Hub id ({MODEL_REF_RULE})")
]
RandomInit = Annotated[
    str | None,
    typer.Option(
        "--random-init",
        help=f"preset or config.json, random weights [default without --model: {DEFAULT_MODEL}, the built-in model]",
    ),
]
WeightsModel = Annotated[
    str | None, typer.Option("--model", "-m", help=f"pretrained weights: a model folder or Hub id ({MODEL_REF_RULE})")
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="run the model repo's own Python code "
        "(its config's auto_map, custom tokenizers) [default: off: train and "
        "bench refuse such a model]",
    ),
]
AllowMetricModule = Annotated[
    bool,
    typer.Option(
        "--allow-metric-module",
        help="import the metric modules (data.metrics) a --plan file names [default: off: such a file is refused]",
    ),
]
MethodOpt = Annotated[str, typer.Option("--method", help="analytic (instant) | traced (FakeTensor trace)")]
Json = Annotated[bool, typer.Option("--json", help="print JSON (documented schema) instead of tables")]

# report, demo and planning options
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="time-model calibration file to apply (default: the stored one matching this hardware and "
        "the installed torch/transformers/deepspeed, else none)",
    ),
]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option("--metric", help="extra quality metric module:function, (prediction, reference) -> float; repeatable"),
]
QualityTargetOpt = Annotated[
    str | None,
    typer.Option("--quality-target", help="the quality bar, METRIC>=VALUE or METRIC<=VALUE (e.g. exact_match>=0.5)"),
]
# the production flags' defaults are ProductionOptions' (shown in the help, never restated)
_PROD = {k: f.default for k, f in ProductionOptions.model_fields.items()}
TargetGpu = Annotated[str | None, typer.Option("--target-gpu", help="production GPU preset or JSON file")]
TargetGpus = Annotated[
    int | None, typer.Option("--target-gpus", help=f"production GPUs per node [default: {_PROD['target_gpus']}]")
]
TargetNodes = Annotated[
    int | None, typer.Option("--target-nodes", help=f"production nodes [default: {_PROD['target_nodes']}]")
]
TargetModel = Annotated[
    str | None, typer.Option("--target-model", help="model trained in production [default: the PoC's]")
]
TargetSeqLen = Annotated[
    int | None,
    typer.Option("--target-seq-len", help="production sequence length [default: the plan's for the target GPU]"),
]
TargetMicroBatch = Annotated[
    int | None,
    typer.Option("--target-micro-batch", help="production micro-batch [default: the plan's for the target GPU]"),
]
ProdTokens = Annotated[int | None, typer.Option("--dataset-tokens", help="tokens in one epoch of the production data")]
ProdEpochs = Annotated[
    float | None, typer.Option("--epochs", help=f"epochs of a production run [default: {_PROD['epochs']:g}]")
]
Retrains = Annotated[
    float | None,
    typer.Option(
        "--retrains-per-year",
        help=f"production runs per year [default: {_PROD['retrains_per_year']:g}]",
    ),
]
CostPerGpuHour = Annotated[float | None, typer.Option("--cost-per-gpu-hour", help="price of one GPU for one hour")]
Currency = Annotated[
    str | None, typer.Option("--currency", help=f"currency of --cost-per-gpu-hour [default: {_PROD['currency']}]")
]
MaxHours = Annotated[float | None, typer.Option("--max-hours", help="time budget of one production run, hours")]
HostRam = Annotated[
    str | None,
    typer.Option(
        "--host-ram",
        help="host RAM per node for offloaded states, e.g. 1.5TiB or 768 (a number is GiB) "
        "[default: the preset's, 1 TiB]",
    ),
]


def path_flag(value: str | None, flag: str) -> Path | None:
    """A path flag's value (declared as str: typer turns '' into Path(''), the current folder); '' is refused."""
    if value is None:
        return None
    if not value.strip():
        raise FtoptError(f"{flag} is empty; give a path.")
    return Path(value)


def run_body(fn: Callable[[], None]) -> None:
    """Run a command body; user errors become one line and exit 2, Ctrl-C exits 130 without a traceback."""
    from ftopt.spec import quiet

    quiet.install()  # third-party notices that are not the user's concern (see ftopt.spec.quiet)
    try:
        fn()
    except FtoptError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as e:
        typer.echo(f"error: {validation_message(e, flags=True)}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as e:
        # a run that stopped says where it stopped (Interrupted); anything else just says it was interrupted
        typer.echo(str(e) if isinstance(e, Interrupted) and str(e) else "interrupted", err=True)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool):
    """With --json, stdout carries the JSON alone: whatever libraries print meanwhile (DeepSpeed's accelerator
    notice, transformers' warnings) goes to stderr, at the file-descriptor level so C extensions are covered."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
