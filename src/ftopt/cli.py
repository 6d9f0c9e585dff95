"""`ftopt` command line: a thin Typer layer. Parses flags, builds the typed specs, calls the library, prints.

Every user mistake surfaces as one line on stderr and exit code 2 (see `_run`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from pydantic import ValidationError

from ftopt.errors import FtoptError, validation_message

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plan, run and report LLM fine-tuning under GPU memory and time budgets.")

# ---- shared options (declared once; estimate, plan and train reuse them) ---------------------------------------
Model = Annotated[str, typer.Option("--model", "-m", help="preset name, config.json path or local model folder")]
Gpu = Annotated[str, typer.Option("--gpu", help="hardware preset (a100-80g, h100-80g, ...), 'cpu', or a JSON file")]
Gpus = Annotated[int, typer.Option("--gpus", help="GPUs per node")]
Nodes = Annotated[int, typer.Option("--nodes", help="number of nodes")]
SeqLen = Annotated[int, typer.Option("--seq-len", help="tokens per sequence")]
MicroBatch = Annotated[int, typer.Option("--micro-batch", help="sequences per GPU per forward pass")]
GradAccum = Annotated[int, typer.Option("--grad-accum", help="micro-batches per optimizer step")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32 | bf16-mixed | fp16-mixed | bf16-true")]
DatasetTokens = Annotated[Optional[int], typer.Option("--dataset-tokens", help="tokens in one epoch")]
Epochs = Annotated[float, typer.Option("--epochs", help="epochs")]
Gc = Annotated[bool, typer.Option("--gc/--no-gc", help="gradient checkpointing")]
LoraR = Annotated[int, typer.Option("--lora-r", help="LoRA rank; 0 = full fine-tuning")]
LoraTargets = Annotated[Optional[str], typer.Option("--lora-targets", help="comma list; default: attention projections")]
Zero = Annotated[int, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="none | optimizer | all")]
Attn = Annotated[str, typer.Option("--attn", help="eager | sdpa | flash")]
MethodOpt = Annotated[str, typer.Option("--method", help="analytic (instant) | traced (FakeTensor trace)")]
Json = Annotated[bool, typer.Option("--json", help="print the documented JSON schema instead of tables")]


def _run(fn: Callable[[], None]) -> None:
    """Run a command body; user errors become one line and exit 2, Ctrl-C exits 130 without a traceback."""
    try:
        fn()
    except FtoptError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except ValidationError as e:
        typer.echo(f"error: {validation_message(e)}", err=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def _enum(enum_cls, value: str, flag: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise FtoptError(f"{flag} must be one of {', '.join(m.value for m in enum_cls)}, got '{value}'.") from None


def _targets(s: Optional[str]) -> tuple[str, ...] | None:
    if s is None:
        return None
    t = tuple(x.strip() for x in s.split(",") if x.strip())
    if not t:
        raise FtoptError("--lora-targets is empty; give a comma list of module names.")
    return t


def build_setup(seq_len, micro_batch, grad_accum, precision, gpus, nodes, dataset_tokens, epochs):
    from ftopt.spec import Precision, TrainingSetup

    return TrainingSetup(seq_len=seq_len, micro_batch=micro_batch, grad_accum=grad_accum,
                         precision=_enum(Precision, precision, "--precision"), gpus_per_node=gpus, nodes=nodes,
                         dataset_tokens=dataset_tokens, epochs=epochs)


def build_combination(gc, lora_r, lora_targets, zero, offload, attn):
    from ftopt.spec import Attention, Combination, Offload

    return Combination(gc=gc, lora_r=lora_r, lora_targets=_targets(lora_targets), zero=zero,
                       offload=_enum(Offload, offload, "--offload"), attn=_enum(Attention, attn, "--attn"))


def _method(m: str):
    from ftopt.estimate import Method

    return _enum(Method, m, "--method")


@app.command()
def estimate(model: Model = "llama-2-7b", gpu: Gpu = "a100-80g", gpus: Gpus = 1, nodes: Nodes = 1,
             seq_len: SeqLen = 2048, micro_batch: MicroBatch = 1, grad_accum: GradAccum = 1,
             precision: PrecisionOpt = "bf16-mixed", dataset_tokens: DatasetTokens = None, epochs: Epochs = 1.0,
             gc: Gc = False, lora_r: LoraR = 0, lora_targets: LoraTargets = None, zero: Zero = 0,
             offload: OffloadOpt = "none", attn: Attn = "sdpa", method: MethodOpt = "analytic", json_out: Json = False):
    """Per-GPU memory and time of ONE combination, before anything runs."""
    def body():
        from ftopt import estimate as est
        from ftopt.display import print_estimate
        from ftopt.spec import load_hardware, load_model

        m, hw = load_model(model), load_hardware(gpu)
        setup = build_setup(seq_len, micro_batch, grad_accum, precision, gpus, nodes, dataset_tokens, epochs)
        e = est(m, hw, setup, build_combination(gc, lora_r, lora_targets, zero, offload, attn), _method(method))
        if json_out:
            typer.echo(json.dumps(e.to_json(), indent=2))
        else:
            print_estimate(e)
    _run(body)


@app.command()
def plan(model: Model = "llama-2-7b", gpu: Gpu = "a100-80g", gpus: Gpus = 1, nodes: Nodes = 1,
         seq_len: SeqLen = 2048, micro_batch: MicroBatch = 1, grad_accum: GradAccum = 1,
         precision: PrecisionOpt = "bf16-mixed", dataset_tokens: DatasetTokens = None, epochs: Epochs = 1.0,
         lora_r: Annotated[int, typer.Option("--lora-r", help="rank of the LoRA candidates")] = 16,
         lora_targets: LoraTargets = None,
         max_hours: Annotated[Optional[float], typer.Option("--max-hours", help="training-time budget")] = None,
         full_only: Annotated[bool, typer.Option("--full-only", help="quality requires full fine-tuning")] = False,
         cost_per_gpu_hour: Annotated[Optional[float], typer.Option("--cost-per-gpu-hour")] = None,
         method: MethodOpt = "analytic", json_out: Json = False,
         out: Annotated[Optional[Path], typer.Option("--out", help="also write the plan JSON here")] = None):
    """Predict every valid combination and recommend one."""
    def body():
        from ftopt import plan as make_plan
        from ftopt.display import print_plan
        from ftopt.io import atomic_write_text
        from ftopt.spec import load_hardware, load_model

        m, hw = load_model(model), load_hardware(gpu)
        setup = build_setup(seq_len, micro_batch, grad_accum, precision, gpus, nodes, dataset_tokens, epochs)
        p = make_plan(m, hw, setup, method=_method(method), max_hours=max_hours, full_only=full_only, lora_r=lora_r,
                      lora_targets=_targets(lora_targets), cost_per_gpu_hour=cost_per_gpu_hour)
        doc = p.to_json()
        if out:
            try:
                atomic_write_text(out, json.dumps(doc, indent=2))
            except OSError as e:
                raise FtoptError(f"Cannot write the plan to {out}: {e.strerror}.") from None
        if json_out:
            typer.echo(json.dumps(doc, indent=2))
        else:
            print_plan(p)
    _run(body)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
