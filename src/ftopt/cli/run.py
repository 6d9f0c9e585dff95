"""`ftopt train` and `ftopt preview`: the real fine-tune and the look at its data before GPU hours are spent.
Registered on the app in ftopt.cli.app."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from ftopt.cli.common import (
    EVAL_FRACTION_DEFAULT,
    MODEL_REF_RULE,
    AdapterDtypeOpt,
    AllowMetricModule,
    Attn,
    BatchingOpt,
    Dora,
    Epochs,
    EvalFraction,
    FsdpOpt,
    Gc,
    Gpu,
    Gpus,
    GradAccum,
    Headroom,
    Hostfile,
    Json,
    LoraDropout,
    LoraR,
    LoraTargets,
    MetricOpt,
    MicroBatch,
    Nodes,
    OffloadOpt,
    OptimOpt,
    Packing,
    PrecisionOpt,
    QloraRecipeOpt,
    QuantOpt,
    RandomInit,
    Rslora,
    SeqLen,
    TrainOnOpt,
    TrustRemoteCode,
    WeightsModel,
    Zero,
    run_body,
    stdout_to_stderr,
)
from ftopt.spec.errors import FtoptError


def train(
    model: WeightsModel = None,
    random_init: RandomInit = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="tokenizer folder or Hub id [default: the model's]")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder [default: the built-in task]")
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="held-out data [default: split from --data]")
    ] = None,
    eval_fraction: EvalFraction = None,
    eval_max_examples: Annotated[
        int | None,
        typer.Option("--eval-max-examples", help="held-out examples scored by generation; 0 = none [default: 64]"),
    ] = None,
    packing: Packing = None,
    batching: BatchingOpt = None,
    train_on: TrainOnOpt = None,
    headroom: Headroom = None,
    seq_len: SeqLen = None,
    micro_batch: MicroBatch = None,
    grad_accum: GradAccum = None,
    precision: PrecisionOpt = None,
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
    epochs: Epochs = None,
    plan_file: Annotated[
        str | None,  # a str, not a Path: Path("") is the current folder, and '' is refused by name
        typer.Option(
            "--plan",
            metavar="<path>",
            help="run exactly the run of a plan JSON ('ftopt plan --out') or a run specification file",
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="optimizer steps; -1 = run the epochs [default: -1]")
    ] = None,
    max_hours: Annotated[
        float | None, typer.Option("--max-hours", help="stop at a checkpoint after this many hours [default: no limit]")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="peak learning rate [default: 1e-3]")] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option("--lr-schedule", help="cosine | linear | constant | constant_with_warmup [default: cosine]"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed [default: 0]")] = None,
    save_steps: Annotated[
        int | None, typer.Option("--save-steps", help="checkpoint every N steps [default: 200]")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="run folder [default: ftopt-runs/default]")] = None,
    gpus: Gpus = None,
    nodes: Nodes = None,
    hostfile: Hostfile = None,
    node_rank: Annotated[
        int | None, typer.Option("--node-rank", help="this node's rank (0..nodes-1): run once on each node")
    ] = None,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help="address of the node with --node-rank 0")
    ] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="its free port [default: 29500]")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the run in --out")] = False,
    gpu: Gpu = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_metric_module: AllowMetricModule = False,
    report_to: Annotated[
        str | None, typer.Option("--report-to", help="none | tensorboard | mlflow | wandb [default: none]")
    ] = None,
    metric: MetricOpt = None,
    json_out: Json = False,
):
    """Fine-tune for real (Trainer + PEFT + DeepSpeed) with one run specification, and measure it."""
    from ftopt.train.start import TrainRequest

    def body():
        request = TrainRequest(
            model=model,
            random_init=random_init,
            tokenizer=tokenizer,
            plan_file=plan_file,
            gpu=gpu,
            setup=dict(
                seq_len=seq_len,
                micro_batch=micro_batch,
                grad_accum=grad_accum,
                precision=precision,
                gpus_per_node=gpus,
                nodes=nodes,
                epochs=epochs,
                packing=packing,
                batching=batching,
            ),
            combination=dict(
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
            ),
            data=data,
            eval_data=eval_data,
            eval_fraction=eval_fraction,
            eval_max_examples=eval_max_examples,
            train_on=train_on,
            metric=tuple(metric) if metric else None,
            headroom=headroom,
            max_steps=max_steps,
            lr=lr,
            lr_schedule=lr_schedule,
            seed=seed,
            save_steps=save_steps,
            max_hours=max_hours,
            out=out,
            resume=resume,
            overwrite=overwrite,
            report_to=report_to,
            hostfile=hostfile,
            node_rank=node_rank,
            master_addr=master_addr,
            master_port=master_port,
            trust_remote_code=trust_remote_code,
            allow_metric_module=allow_metric_module,
        )
        _train(request, json_out)

    run_body(body)


def _train(request, json_out: bool) -> None:
    from ftopt.cli.display import print_train_metrics
    from ftopt.train import start
    from ftopt.train.allocator import allocator_note
    from ftopt.train.engine import launch

    spec, rdzv = start.prepare(request, note=lambda m: typer.echo(m, err=True))
    note = allocator_note(os.environ, on_cuda=not spec.hardware.is_cpu)
    if note:
        typer.echo(note, err=True)
    with stdout_to_stderr(json_out):
        metrics = launch(spec, request.trust(), rdzv, request.plan_file)
    if metrics is None:  # a per-node run's other node, with its own output folder
        typer.echo(
            f"node {request.node_rank}: its ranks finished; node 0's output folder holds the run's metrics", err=True
        )
    elif json_out:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        print_train_metrics(metrics, str(spec.output_dir))


def preview(
    data: Annotated[str, typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help=f"model folder or Hub id (its tokenizer); {MODEL_REF_RULE}")
    ] = None,
    random_init: Annotated[str | None, typer.Option("--random-init", help="preset or config.json")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="tokenizer folder or Hub id")] = None,
    seq_len: SeqLen = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option(
            "--eval-fraction",
            help=f"share of --data held out, as train holds it out (the summary counts it; the examples are "
            f"training rows); 0 = none [default: {EVAL_FRACTION_DEFAULT:g}, train's]",
        ),
    ] = None,
    packing: Annotated[bool, typer.Option("--packing/--no-packing", help="pack rows; documents are separated")] = False,
    train_on: TrainOnOpt = None,
    n: Annotated[int, typer.Option("-n", help="examples to show")] = 3,
    seed: Annotated[
        int,
        typer.Option("--seed", help="seed of the held-out split, as train's --seed [default: 0]", show_default=False),
    ] = 0,
    trust_remote_code: TrustRemoteCode = False,
    json_out: Json = False,
):
    """Show the first examples as the trainer will see them (trained tokens marked) and the data summary."""

    def body():
        from ftopt.planner.resolve import data_spec
        from ftopt.spec import load_model
        from ftopt.spec.run import ModelRef
        from ftopt.train.preview import build_preview, render

        if n < 1:
            raise FtoptError(f"-n is the number of examples to show, at least 1; got {n}.")
        import torch

        from ftopt.spec import TrainingSetup

        # the length `train` would use on this machine; a bad one is refused here, before the data is read
        rows = TrainingSetup.for_hardware(not torch.cuda.is_available(), seq_len=seq_len).seq_len
        if model and random_init:
            raise FtoptError("give either --model (weights and tokenizer) or --random-init (config), not both.")
        ref = ModelRef(
            ref=model or random_init or ModelRef().ref,
            weights=model is not None,
            tokenizer=tokenizer,
            trust_remote_code=trust_remote_code,
        )
        spec = load_model(ref.ref)
        result, tok = build_preview(
            ref,
            data_spec(train=data, eval_fraction=eval_fraction, train_on=train_on),
            spec.vocab_size,
            rows,
            n,
            seed=seed,
            packing=packing,
        )
        if json_out:
            typer.echo(result.model_dump_json(indent=2))
        else:
            from ftopt.cli.display import console

            render(result, tok, console)

    run_body(body)
