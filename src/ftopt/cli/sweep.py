"""`ftopt bench`, `ftopt report` and `ftopt demo`: the PoC sweep, the decision report and the offline loop.
Registered on the app in ftopt.cli.app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftopt.cli.common import (
    LORA_DROPOUT_HELP,
    BatchingOpt,
    CostPerGpuHour,
    Currency,
    Gpu,
    Headroom,
    Hostfile,
    MaxHours,
    MetricOpt,
    MicroBatch,
    Nodes,
    Packing,
    PrecisionOpt,
    ProdEpochs,
    ProdTokens,
    QualityTargetOpt,
    RandomInit,
    Retrains,
    SeqLen,
    TargetGpu,
    TargetGpus,
    TargetMicroBatch,
    TargetModel,
    TargetNodes,
    TargetSeqLen,
    TrustRemoteCode,
    WeightsModel,
    path_flag,
    run_body,
)
from ftopt.spec.errors import FtoptError
from ftopt.spec.io import check_out_folder
from ftopt.sweep.bench import REFERENCE_LORA_R
from ftopt.sweep.demo_options import DEMO_QUALITY_TARGET, DEMO_STEPS, DemoOptions
from ftopt.sweep.prepare import BenchRequest


def bench(
    grid: Annotated[
        str | None,
        typer.Option(
            "--grid", metavar="<path>", help="YAML grid of combinations [default: the study's reference points]"
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            metavar="<path>",
            help="sweep folder: results.jsonl and runs/; one sweep per folder (a rerun with the same settings "
            "resumes it, skipping finished runs; other settings are refused)",
        ),
    ] = "ftopt-runs/bench",
    model: WeightsModel = None,
    random_init: RandomInit = None,
    data: Annotated[str | None, typer.Option("--data", help="training data [default: the built-in task]")] = None,
    seq_len: SeqLen = None,
    micro_batch: MicroBatch = None,
    precision: PrecisionOpt = None,
    packing: Packing = None,
    batching: BatchingOpt = None,
    headroom: Headroom = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="optimizer steps per run; -1 = run the epochs")] = 100,
    lr: Annotated[float | None, typer.Option("--lr", help="peak learning rate [default: 1e-3]")] = None,
    gpu: Gpu = None,
    lora_r: Annotated[
        int | None,
        typer.Option(
            "--lora-r", help=f"LoRA rank of the reference points (not with --grid) [default: {REFERENCE_LORA_R}]"
        ),
    ] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="runs per combination (noisy machines)")] = 1,
    zero_gpus: Annotated[
        int | None,
        typer.Option("--zero-gpus", help="processes for ZeRO runs [default: 2 on cpu, else the GPUs of this machine]"),
    ] = None,
    run_timeout: Annotated[
        float | None,
        typer.Option(
            "--run-timeout", help="stop a run after this many seconds and record it as 'timeout' [default: no limit]"
        ),
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="held-out data [default: split from --data]")
    ] = None,
    metric: MetricOpt = None,
    quality_target: QualityTargetOpt = None,
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="comma list of bases (none,nf4,fp4,int8): each LoRA point also runs with each"),
    ] = None,
    optim: Annotated[
        str | None,
        typer.Option(
            "--optim",
            help="comma list of optimizers: each ZeRO-free point also runs with each (with --quant: every pair)",
        ),
    ] = None,
    dora: Annotated[
        bool, typer.Option("--dora", help="each LoRA point also runs as DoRA (PEFT use_dora; ZeRO 0-2, no FSDP)")
    ] = False,
    lora_dropout: Annotated[
        float | None,
        typer.Option(
            "--lora-dropout",
            metavar="P",
            help=f"each LoRA point also runs with {LORA_DROPOUT_HELP}, 0 < P < 1 (the points themselves run without)",
        ),
    ] = None,
    nodes: Nodes = None,
    hostfile: Hostfile = None,
    trust_remote_code: TrustRemoteCode = False,
):
    """Run the proof-of-concept sweep: each combination as its own `ftopt train`, results appended atomically."""

    def body():
        _bench(
            BenchRequest(
                grid=path_flag(grid, "--grid"),
                out=path_flag(out, "--out"),
                model=model,
                random_init=random_init,
                data=data,
                eval_data=eval_data,
                seq_len=seq_len,
                micro_batch=micro_batch,
                precision=precision,
                packing=packing,
                batching=batching,
                headroom=headroom,
                max_steps=max_steps,
                lr=lr,
                gpu=gpu,
                lora_r=lora_r,
                repeat=repeat,
                zero_gpus=zero_gpus,
                run_timeout=run_timeout,
                metric=tuple(metric) if metric else None,
                quality_target=quality_target,
                quant=quant,
                optim=optim,
                dora=dora,
                lora_dropout=lora_dropout,
                nodes=nodes,
                hostfile=hostfile,
                trust_remote_code=trust_remote_code,
            )
        )

    run_body(body)


def _bench(request: BenchRequest) -> None:
    from ftopt.cli.display import console, print_calibration, print_sweep_event, print_sweep_summary
    from ftopt.sweep import prepare

    sweep = prepare.prepare(request)
    rows = prepare.run(sweep, on_event=print_sweep_event)
    print_sweep_summary(rows, sweep.results_path, sweep.target)
    failed = prepare.none_succeeded(rows)
    if failed:
        # not exit 2 (the flags were fine, each run was tried): 1, so a script or CI job sees that nothing was measured
        typer.echo(f"error: {failed}", err=True)
        raise typer.Exit(1)
    fitted = prepare.calibrate(sweep, rows)
    if fitted is not None:
        from ftopt.planner.calibration_store import unfit_reasons

        fit, cal, path = fitted
        print_calibration(fit)
        why = unfit_reasons(cal.provenance)
        use = (
            f"later plan/estimate on it do NOT apply it, since {'; '.join(why)} (--calibration {path} applies it anyway)"
            if why
            else "later plan/estimate on it use it"
        )
        console.print(
            f"time model for '{sweep.hardware.name}' (merged with earlier fits under these library versions) "
            f"stored in {path}; {use}: {cal.constants.figures()}",
            markup=False,
        )


def report(
    results: Annotated[str, typer.Argument(help="results.jsonl written by ftopt bench (or its folder)")],
    out: Annotated[
        str, typer.Option("--out", metavar="<path>", help="folder for report.<lang>.html/.md and charts")
    ] = "ftopt-report",
    lang: Annotated[str, typer.Option("--lang", help="en | ja")] = "en",
    title: Annotated[str | None, typer.Option("--title", help="report title")] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            help="hardware the runs used (memory line, calibration) [default: the hardware recorded in the results]",
        ),
    ] = None,
    quality_target: QualityTargetOpt = None,
    target_gpu: TargetGpu = None,
    target_gpus: TargetGpus = None,
    target_nodes: TargetNodes = None,
    target_model: TargetModel = None,
    target_seq_len: TargetSeqLen = None,
    target_micro_batch: TargetMicroBatch = None,
    dataset_tokens: ProdTokens = None,
    epochs: ProdEpochs = None,
    retrains_per_year: Retrains = None,
    cost_per_gpu_hour: CostPerGpuHour = None,
    currency: Currency = None,
    max_hours: MaxHours = None,
    headroom: Headroom = None,
):
    """Write the decision report (HTML, Markdown, PNG charts) from a results file."""

    def body():
        from ftopt.report.cli_support import write_report

        results_given, out_dir = path_flag(results, "The results path"), path_flag(out, "--out")
        path = _results_path(results_given)
        check_out_folder(out_dir)
        from ftopt.spec import ProductionOptions

        production = ProductionOptions.given(
            target_gpu=target_gpu,
            target_gpus=target_gpus,
            target_nodes=target_nodes,
            target_model=target_model,
            target_seq_len=target_seq_len,
            target_micro_batch=target_micro_batch,
            dataset_tokens=dataset_tokens,
            epochs=epochs,
            retrains_per_year=retrains_per_year,
            cost_per_gpu_hour=cost_per_gpu_hour,
            currency=currency,
            max_hours=max_hours,
        )
        warn = lambda m: typer.echo(f"warning: {m}", err=True)  # noqa: E731
        options = dict(gpu=gpu, title=title, quality_target=quality_target, production=production, headroom=headroom)
        paths = write_report(path, out_dir, lang=lang, warn=warn, **options)
        typer.echo(f"report: {paths['html']} and {paths['markdown']}")

    run_body(body)


def _results_path(results: Path) -> Path:
    """results.jsonl, given itself or its folder (bench writes the folder); checked before any work, so a wrong
    path is one line naming it."""
    path = results / "results.jsonl" if results.is_dir() else results
    if not path.exists():
        raise FtoptError(f"The results file {path} does not exist; run 'ftopt bench' first.")
    return path


# demo's own defaults where they differ from report's (DemoOptions holds them; its help shows them)
_DEMO = {k: f.default for k, f in DemoOptions.model_fields.items()}
DemoQualityTarget = Annotated[
    str | None,
    typer.Option(
        "--quality-target",
        help=f"the quality bar, METRIC>=VALUE or METRIC<=VALUE [default: {DEMO_QUALITY_TARGET}]",
    ),
]
DemoTargetGpu = Annotated[
    str | None,
    typer.Option("--target-gpu", help=f"production GPU preset or JSON file [default: {_DEMO['target_gpu']}]"),
]
DemoTargetModel = Annotated[
    str | None,
    typer.Option("--target-model", help=f"model trained in production [default: {_DEMO['target_model']}]"),
]
DemoTokens = Annotated[
    int | None,
    typer.Option(
        "--dataset-tokens",
        help=f"tokens in one epoch of the production data [default: {_DEMO['dataset_tokens']:,}]",
    ),
]
DemoRetrains = Annotated[
    float | None,
    typer.Option("--retrains-per-year", help=f"production runs per year [default: {_DEMO['retrains_per_year']:g}]"),
]


def demo(
    out: Annotated[
        str, typer.Option("--out", metavar="<path>", help="where runs, results and the report go")
    ] = "ftopt-runs/demo",
    steps: Annotated[int, typer.Option("--steps", help="training steps per combination")] = DEMO_STEPS,
    quality_target: DemoQualityTarget = None,
    target_gpu: DemoTargetGpu = None,
    target_gpus: TargetGpus = None,
    target_nodes: TargetNodes = None,
    target_model: DemoTargetModel = None,
    target_seq_len: TargetSeqLen = None,
    target_micro_batch: TargetMicroBatch = None,
    dataset_tokens: DemoTokens = None,
    epochs: ProdEpochs = None,
    retrains_per_year: DemoRetrains = None,
    cost_per_gpu_hour: CostPerGpuHour = None,
    currency: Currency = None,
    max_hours: MaxHours = None,
):
    """The whole loop on the built-in base model and task, offline, on this CPU (under 5 minutes on 2 cores).

    Stated assumptions unless given: quality target exact_match>=0.5; production: llama-3.1-8b on one a100-80g
    with 100M tokens, 12 runs a year, at the plan's sequence length and micro-batch for it."""

    def body():
        from ftopt.cli.display import ConsoleDemoView
        from ftopt.sweep.demo import run_demo

        if steps < 1:
            raise FtoptError(f"--steps must be at least 1, got {steps}.")
        out_dir = path_flag(out, "--out")
        check_out_folder(out_dir)
        given = dict(
            quality_target=quality_target,
            target_gpu=target_gpu,
            target_gpus=target_gpus,
            target_nodes=target_nodes,
            target_model=target_model,
            target_seq_len=target_seq_len,
            target_micro_batch=target_micro_batch,
            dataset_tokens=dataset_tokens,
            epochs=epochs,
            retrains_per_year=retrains_per_year,
            cost_per_gpu_hour=cost_per_gpu_hour,
            currency=currency,
            max_hours=max_hours,
        )
        options = DemoOptions.given(**given)
        options.check()  # now, not after the sweep: a typo must not cost the demo's minutes
        run_demo(out_dir, steps=steps, options=options, view=ConsoleDemoView())

    run_body(body)
