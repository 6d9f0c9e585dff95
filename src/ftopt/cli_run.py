"""`ftopt train` and `ftopt preview`: the real fine-tune and the look at its data before GPU hours are spent.
Registered on the app in ftopt.cli."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ftopt.cli_common import (
    MODEL_REF_RULE,
    AdapterDtypeOpt,
    AllowMetricModule,
    Attn,
    Epochs,
    FsdpOpt,
    Gc,
    Gpu,
    Gpus,
    GradAccum,
    Headroom,
    Hostfile,
    Json,
    LoraR,
    LoraTargets,
    MetricOpt,
    MicroBatch,
    Nodes,
    OffloadOpt,
    OptimOpt,
    Packing,
    PrecisionOpt,
    QuantOpt,
    SeqLen,
    TrainOnOpt,
    TrustRemoteCode,
    WeightsModel,
    Zero,
    check_out_folder,
    hardware,
    run_body,
    stdout_to_stderr,
)
from ftopt.errors import FtoptError


def train(
    model: WeightsModel = None,
    random_init: Annotated[
        str | None, typer.Option("--random-init", help="preset or config.json, random weights")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="tokenizer folder or Hub id [default: the model's]")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder [default: the built-in task]")
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="held-out data [default: split from --data]")
    ] = None,
    eval_fraction: Annotated[
        float | None, typer.Option("--eval-fraction", help="share of --data held out; 0 = none [default: 0.1]")
    ] = None,
    eval_max_examples: Annotated[
        int | None,
        typer.Option("--eval-max-examples", help="held-out examples scored by generation; 0 = none [default: 64]"),
    ] = None,
    packing: Packing = None,
    train_on: TrainOnOpt = None,
    headroom: Headroom = None,
    seq_len: SeqLen = None,
    micro_batch: MicroBatch = None,
    grad_accum: GradAccum = None,
    precision: PrecisionOpt = None,
    gc: Gc = None,
    lora_r: LoraR = None,
    lora_targets: LoraTargets = None,
    adapter_dtype: AdapterDtypeOpt = None,
    zero: Zero = None,
    fsdp: FsdpOpt = None,
    offload: OffloadOpt = None,
    attn: Attn = None,
    quant: QuantOpt = None,
    optim: OptimOpt = None,
    epochs: Epochs = None,
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan", help="run exactly the run of a plan JSON ('ftopt plan --out') or a run specification file"
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

    def body():
        from ftopt import resolve
        from ftopt.display import print_train_metrics
        from ftopt.train.allocator import allocator_note
        from ftopt.train.engine import launch

        if model and random_init:
            raise FtoptError("give either --model (weights) or --random-init (a config), not both.")
        ref = (
            resolve.model_ref(model, weights=True, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
            if model
            else resolve.model_ref(random_init, weights=False, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
            if random_init
            else None
        )
        given_setup = dict(
            seq_len=seq_len,
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            precision=precision,
            gpus_per_node=gpus,
            nodes=nodes,
            epochs=epochs,
            packing=packing,
        )
        given_combo = dict(
            gc=gc,
            lora_r=lora_r,
            lora_targets=lora_targets,
            adapter_dtype=adapter_dtype,
            zero=zero,
            fsdp=fsdp,
            offload=offload,
            attn=attn,
            quant=quant,
            optim=optim,
        )
        if plan_file is not None:
            if gpu is not None:
                raise FtoptError("--gpu would change the hardware the plan predicted for; plan again instead.")
            spec = resolve.run_from_file(
                plan_file,
                model=ref,
                given_setup=given_setup,
                given_combination=given_combo,
                note=lambda m: typer.echo(m, err=True),
            )
            from ftopt.trust import trusted_file_run

            spec = trusted_file_run(
                spec,
                plan_file,
                trust_remote_code=trust_remote_code,
                allow_metric_module=allow_metric_module or bool(metric),
            )
            spec = resolve.with_headroom(spec, headroom)  # the margin changes no prediction, only the verdict
        else:
            from ftopt.calibration_store import calibrated_hardware

            hw = calibrated_hardware(hardware(gpu))  # the stored calibration for this hardware, if it matches
            spec = resolve.new_run(
                hw,
                ref or resolve.model_ref("tiny-llama", weights=False, tokenizer=tokenizer),
                resolve.setup(hw, **given_setup, headroom=headroom),
                resolve.combination(**given_combo),
            )
        spec = resolve.finish_run(
            spec,
            data=dict(
                train=data,
                eval=eval_data,
                eval_fraction=eval_fraction,
                eval_max_examples=eval_max_examples,
                metrics=tuple(metric) if metric else None,
                train_on=train_on,
            ),
            schedule=dict(
                max_steps=max_steps,
                learning_rate=lr,
                lr_schedule=lr_schedule,
                seed=seed,
                save_steps=save_steps,
                max_hours=max_hours,
            ),
            output=dict(dir=out, resume=resume or None, overwrite=overwrite or None, report_to=report_to),
            hostfile=hostfile,
        )
        resolve.check(spec)  # an unknown model or LoRA target is one line now, not after the data is tokenized
        rdzv = rendezvous(spec, node_rank, master_addr, master_port)
        from ftopt.quality import load_user_metric

        for ref in spec.data.metrics:
            load_user_metric(ref)  # a typo or a missing module fails now, not after training and saving
        check_out_folder(spec.output_dir)
        if spec.model.weights:
            from ftopt.spec.hub import resolve_weights

            # a folder, or the Hub download (after the cheap checks), before any training process starts
            resolve_weights(spec.model.ref, spec.model.trust_remote_code)
        note = allocator_note(os.environ, on_cuda=not spec.hardware.is_cpu)
        if note:
            typer.echo(note, err=True)
        with stdout_to_stderr(json_out):
            metrics = launch(spec, rdzv)
        if metrics is None:  # a per-node run's other node, with its own output folder
            typer.echo(
                f"node {node_rank}: its ranks finished; node 0's output folder holds the run's metrics", err=True
            )
        elif json_out:
            typer.echo(json.dumps(metrics, indent=2))
        else:
            print_train_metrics(metrics, str(spec.output_dir))

    run_body(body)


def rendezvous(spec, node_rank: int | None, master_addr: str | None, master_port: int | None):
    """Per-node mode (`--node-rank K --master-addr HOST`): how this node's ranks meet the others; None otherwise."""
    from ftopt.train.ranks import Rendezvous

    if node_rank is None:
        if master_addr is not None or master_port is not None:
            raise FtoptError("--master-addr and --master-port go with --node-rank (run once on each node).")
        return None
    if master_addr is None:
        raise FtoptError(f"--node-rank {node_rank} needs --master-addr, the address of the node with --node-rank 0.")
    given = {"master_port": master_port} if master_port is not None else {}
    rdzv = Rendezvous(
        nodes=spec.setup.nodes,
        node_rank=node_rank,
        procs_per_node=spec.setup.gpus_per_node,
        master_addr=master_addr,
        **given,
    )
    import socket

    try:  # a typo would otherwise wait for a master that cannot exist until the 30-minute collective timeout
        socket.getaddrinfo(master_addr, None)
    except (socket.gaierror, UnicodeError) as e:
        raise FtoptError(f"--master-addr {master_addr} cannot be resolved: {e}.") from None
    return rdzv


def preview(
    data: Annotated[str, typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help=f"model folder or Hub id (its tokenizer); {MODEL_REF_RULE}")
    ] = None,
    random_init: Annotated[str | None, typer.Option("--random-init", help="preset or config.json")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="tokenizer folder or Hub id")] = None,
    seq_len: SeqLen = 64,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", help="share held out, as train would (the summary counts it)")
    ] = 0.0,
    packing: Annotated[bool, typer.Option("--packing/--no-packing", help="pack rows; documents are separated")] = False,
    train_on: TrainOnOpt = None,
    n: Annotated[int, typer.Option("-n", help="examples to show")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    trust_remote_code: TrustRemoteCode = False,
    json_out: Json = False,
):
    """Show the first examples as the trainer will see them (trained tokens marked) and the data summary."""

    def body():
        from ftopt.resolve import data_spec
        from ftopt.spec import load_model
        from ftopt.spec.run import ModelRef
        from ftopt.train.preview import build_preview, render

        if n < 1:
            raise FtoptError(f"-n is the number of examples to show, at least 1; got {n}.")
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
            seq_len,
            n,
            seed=seed,
            packing=packing,
        )
        if json_out:
            typer.echo(result.model_dump_json(indent=2))
        else:
            from ftopt.display import console

            render(result, tok, console)

    run_body(body)
