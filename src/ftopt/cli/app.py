"""`ftopt` command line: a thin Typer layer. Parses flags, builds the typed specs (ftopt.planner.resolve), calls the
library, prints. Every user mistake surfaces as one line on stderr and exit code 2 (see `_run`).

Flags that set the training setup or the combination default to None ("not given"): their defaults live in the
spec classes, and on a CPU some differ (TrainingSetup.for_hardware); the help texts say both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ftopt.cli.common import (
    LORA_DROPOUT_DEFAULT,
    LORA_DROPOUT_HELP,
    AdapterDtypeOpt,
    Attn,
    BatchingOpt,
    CalibrationOpt,
    Currency,
    DatasetTokens,
    Dora,
    Epochs,
    FsdpOpt,
    Gc,
    Gpus,
    GradAccum,
    Headroom,
    HostRam,
    Json,
    LoraDropout,
    LoraR,
    LoraTargets,
    MethodOpt,
    MicroBatch,
    Nodes,
    OffloadOpt,
    OptimOpt,
    Packing,
    PlanGpu,
    PlannedModel,
    PrecisionOpt,
    QloraRecipeOpt,
    QuantOpt,
    Rslora,
    SeqLen,
    Zero,
    path_flag,
    run_body,
    stdout_to_stderr,
)
from ftopt.planner.request import PlanLevers
from ftopt.spec.errors import FtoptError
from ftopt.spec.io import check_out_folder

PLAN_DEFAULTS = PlanLevers()  # `plan`'s defaults, shared with the planner page

# rich_markup_mode=None: help texts state defaults as "[default: ...]", which rich markup would swallow as a tag.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Plan, run and report LLM fine-tuning under GPU memory and time budgets.",
)


def _version(value: bool) -> None:
    if value:
        from ftopt import __version__

        typer.echo(f"ftopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Plan, run and report LLM fine-tuning under GPU memory and time budgets."""


@app.command()
def estimate(
    model: PlannedModel = "llama-2-7b",
    gpu: PlanGpu = None,
    gpus: Gpus = None,
    nodes: Nodes = None,
    seq_len: SeqLen = None,
    micro_batch: MicroBatch = None,
    grad_accum: GradAccum = None,
    precision: PrecisionOpt = None,
    dataset_tokens: DatasetTokens = None,
    epochs: Epochs = None,
    packing: Packing = None,
    batching: BatchingOpt = None,
    headroom: Headroom = None,
    gc: Gc = None,
    lora_r: LoraR = None,
    lora_targets: LoraTargets = None,
    dora: Dora = None,
    rslora: Rslora = None,
    lora_dropout: LoraDropout = None,
    adapter_dtype: AdapterDtypeOpt = None,
    zero: Zero = None,
    fsdp: FsdpOpt = None,
    offload: OffloadOpt = None,
    attn: Attn = None,
    quant: QuantOpt = None,
    qlora_recipe: QloraRecipeOpt = None,
    optim: OptimOpt = None,
    method: MethodOpt = "analytic",
    json_out: Json = False,
    calibration: CalibrationOpt = None,
    host_ram: HostRam = None,
):
    """Per-GPU memory and time of ONE combination, before anything runs."""

    from ftopt.planner.request import EstimateRequest

    def body():
        from ftopt.cli.display import print_estimate
        from ftopt.planner.request import estimate_for

        request = EstimateRequest(
            model=model,
            gpu=gpu,
            gpus=gpus,
            nodes=nodes,
            seq_len=seq_len,
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            precision=precision,
            dataset_tokens=dataset_tokens,
            epochs=epochs,
            packing=packing,
            batching=batching,
            headroom=headroom,
            gc=gc,
            lora_r=lora_r,
            lora_targets=lora_targets,
            dora=dora,
            rslora=rslora,
            lora_dropout=lora_dropout,
            adapter_dtype=adapter_dtype,
            zero=zero,
            fsdp=fsdp,
            offload=offload,
            attn=attn,
            quant=quant,
            qlora_recipe=qlora_recipe,
            optim=optim,
            method=method,
            calibration=calibration,
            host_ram=host_ram,
        )
        e = estimate_for(request)
        if json_out:
            typer.echo(json.dumps(e.to_json(), indent=2))
        else:
            print_estimate(e)

    run_body(body)


@app.command()
def plan(
    model: PlannedModel = "llama-2-7b",
    gpu: PlanGpu = None,
    gpus: Gpus = None,
    nodes: Nodes = None,
    seq_len: SeqLen = None,
    micro_batch: MicroBatch = None,
    grad_accum: GradAccum = None,
    precision: PrecisionOpt = None,
    dataset_tokens: DatasetTokens = None,
    epochs: Epochs = None,
    packing: Packing = None,
    batching: BatchingOpt = None,
    headroom: Headroom = None,
    lora_r: Annotated[int, typer.Option("--lora-r", help="rank of the LoRA candidates")] = PLAN_DEFAULTS.lora_r,
    lora_targets: LoraTargets = None,
    dora: Annotated[bool, typer.Option("--dora", help="the LoRA candidates are DoRA (PEFT use_dora)")] = False,
    rslora: Annotated[
        bool, typer.Option("--rslora", help="the LoRA candidates use rsLoRA scaling alpha/sqrt(r)")
    ] = False,
    lora_dropout: Annotated[
        float | None,
        typer.Option(
            "--lora-dropout",
            metavar="P",
            help=f"the LoRA candidates' {LORA_DROPOUT_HELP}, 0 <= P < 1 {LORA_DROPOUT_DEFAULT}",
        ),
    ] = PLAN_DEFAULTS.lora_dropout,
    adapter_dtype: AdapterDtypeOpt = None,
    max_hours: Annotated[
        float | None, typer.Option("--max-hours", help="training-time budget in hours [default: no budget]")
    ] = None,
    full_only: Annotated[bool, typer.Option("--full-only", help="quality requires full fine-tuning")] = False,
    cost_per_gpu_hour: Annotated[
        float | None,
        typer.Option(
            "--cost-per-gpu-hour", help="price of one GPU for one hour, in --currency [default: none, no costs shown]"
        ),
    ] = None,
    currency: Currency = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="traced: the formulas search, the traced estimator confirms the recommendation and what-ifs "
            "(seconds); analytic: the formulas alone (instant)",
        ),
    ] = PLAN_DEFAULTS.method,
    json_out: Json = False,
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="comma list of bases to try: none,nf4,fp4,int8 [default: none,nf4,int8]"),
    ] = None,
    optim: Annotated[str | None, typer.Option("--optim", help="comma list of optimizers to try [default: all]")] = None,
    qlora_recipe: Annotated[
        str | None,
        typer.Option(
            "--qlora-recipe",
            help="comma list of QLoRA recipes for the quantized candidates: peft,torchtune,litgpt "
            "[default: every one the precision runs: peft; all three under bf16-true]",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="comma list of engines to try: ddp,zero,fsdp [default: all]"),
    ] = None,
    out: Annotated[
        str | None,  # a str, not a Path: Path("") is the current folder, and '' is refused by name
        typer.Option(
            "--out",
            metavar="<path>",
            help="write the plan JSON (with the recommended run for 'ftopt train --plan') to this file",
        ),
    ] = None,
    calibration: CalibrationOpt = None,
    host_ram: HostRam = None,
    export: Annotated[
        str | None,  # a str, as --out
        typer.Option(
            "--export",
            metavar="<path>",
            help="write the recommended run's launch files into this folder: sft_config.yaml and launch.sh "
            "(TRL through accelerate), run.json, hostfile and slurm.sbatch (ftopt train, one node or several), "
            "and ds_config.json for ZeRO or accelerate_fsdp2.yaml and torchrun.sh for FSDP2; an edited file other "
            "than run.json is kept, the new one written beside it as NAME.new",
        ),
    ] = None,
):
    """Predict every valid combination and recommend one."""
    from ftopt.planner.request import PlanRequest

    def body():
        request = PlanRequest(
            model=model,
            gpu=gpu,
            gpus=gpus,
            nodes=nodes,
            seq_len=seq_len,
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            precision=precision,
            dataset_tokens=dataset_tokens,
            epochs=epochs,
            packing=packing,
            batching=batching,
            headroom=headroom,
            lora_r=lora_r,
            lora_targets=lora_targets,
            adapter_dtype=adapter_dtype,
            max_hours=max_hours,
            full_only=full_only,
            cost_per_gpu_hour=cost_per_gpu_hour,
            currency=currency,
            method=method,
            quant=quant,
            optim=optim,
            engine=engine,
            calibration=calibration,
            host_ram=host_ram,
            qlora_recipe=qlora_recipe,
            dora=dora,
            rslora=rslora,
            lora_dropout=lora_dropout,
        )
        _plan(request, out, export, json_out)

    run_body(body)


def _output_paths(out: str | None, export: str | None) -> tuple[Path | None, Path | None]:
    """--out and --export as paths, checked before the plan is made (a traced plan takes seconds)."""
    out_path = path_flag(out, "--out")
    if out_path is not None:
        if out_path.is_dir():
            raise FtoptError(f"--out {out} is a folder; give the plan's file name, e.g. {out_path / 'plan.json'}.")
        check_out_folder(out_path.parent)
    export_path = path_flag(export, "--export")
    if export_path is not None:
        check_out_folder(export_path, "--export")
    return out_path, export_path


def _plan(request, out_flag: str | None, export_flag: str | None, json_out: bool) -> None:
    from ftopt.cli.display import print_plan
    from ftopt.planner.request import make
    from ftopt.spec.io import atomic_write_text

    out, export = _output_paths(out_flag, export_flag)
    with stdout_to_stderr(json_out):  # a trace's library notices go to stderr; stdout carries the JSON
        planned = make(request)
    doc = planned.to_json()
    if export is not None:
        from ftopt.export.configs import export_run

        if planned.run is None:
            raise FtoptError("Nothing fits, so there is no run to export; relax the plan's constraints.")
        written = export_run(planned.run, planned.model, export)
        typer.echo(f"exported: {', '.join(str(w) for w in written)}", err=json_out)
    if out:
        try:
            atomic_write_text(out, json.dumps(doc, indent=2))
        except OSError as e:
            raise FtoptError(f"Cannot write the plan to {out}: {e.strerror}.") from None
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_plan(planned.plan)


from ftopt.cli.run import preview, train  # noqa: E402  (after `app`: the commands register in help order)
from ftopt.cli.serve import serve  # noqa: E402
from ftopt.cli.sweep import bench, demo, report  # noqa: E402

for _command in (train, bench, report, demo, preview, serve):
    app.command()(_command)
