"""`ftopt` command line: a thin Typer layer. Parses flags, builds the typed specs (ftopt.resolve), calls the
library, prints. Every user mistake surfaces as one line on stderr and exit code 2 (see `_run`).

Flags that set the training setup or the combination default to None ("not given"): their defaults live in the
spec classes, and on a CPU some differ (TrainingSetup.for_hardware); the help texts say both.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftopt.cli_common import (
    MODEL_REF_RULE, Attn, CalibrationOpt, CostPerGpuHour, Currency, DatasetTokens, Epochs, GradAccum, Gc, Gpu, Gpus,
    HostRam, Json, LoraR, LoraTargets, MaxHours, MethodOpt, MetricOpt, MicroBatch, Nodes, OffloadOpt, OptimOpt, Packing,
    PlannedModel, PrecisionOpt, ProdEpochs, ProdTokens, QualityTargetOpt, QuantOpt, Retrains, SeqLen, TargetGpu,
    TargetGpus, TargetModel, TargetNodes, TrustRemoteCode, WeightsModel, Zero, check_out_folder, hardware, method_of,
    planning_hardware, run_body, stdout_to_stderr,
)
from ftopt.errors import FtoptError

# rich_markup_mode=None: help texts state defaults as "[default: ...]", which rich markup would swallow as a tag.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Plan, run and report LLM fine-tuning under GPU memory and time budgets.")

def _version(value: bool) -> None:
    if value:
        from ftopt import __version__

        typer.echo(f"ftopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Plan, run and report LLM fine-tuning under GPU memory and time budgets."""


@app.command()
def estimate(model: PlannedModel = "llama-2-7b",
             gpu: Gpu = None, gpus: Gpus = None, nodes: Nodes = None, seq_len: SeqLen = None,
             micro_batch: MicroBatch = None, grad_accum: GradAccum = None, precision: PrecisionOpt = None,
             dataset_tokens: DatasetTokens = None, epochs: Epochs = None, packing: Packing = None, gc: Gc = None,
             lora_r: LoraR = None,
             lora_targets: LoraTargets = None, zero: Zero = None, offload: OffloadOpt = None, attn: Attn = None,
             quant: QuantOpt = None, optim: OptimOpt = None, method: MethodOpt = "analytic", json_out: Json = False,
             calibration: CalibrationOpt = None, host_ram: HostRam = None):
    """Per-GPU memory and time of ONE combination, before anything runs."""
    def body():
        from ftopt import estimate as est
        from ftopt import resolve
        from ftopt.display import print_estimate
        from ftopt.spec import load_model

        m, hw = load_model(model), planning_hardware(gpu, calibration, host_ram)
        setup = resolve.setup(hw, seq_len=seq_len, micro_batch=micro_batch, grad_accum=grad_accum, precision=precision,
                              gpus_per_node=gpus, nodes=nodes, dataset_tokens=dataset_tokens, epochs=epochs,
                              packing=packing)
        combo = resolve.combination(gc=gc, lora_r=lora_r, lora_targets=lora_targets, zero=zero, offload=offload,
                                    attn=attn, quant=quant, optim=optim)
        e = est(m, hw, setup, combo, method_of(method))
        if json_out:
            typer.echo(json.dumps(e.to_json(), indent=2))
        else:
            print_estimate(e)
    run_body(body)


@app.command()
def plan(model: PlannedModel = "llama-2-7b",
         gpu: Gpu = None, gpus: Gpus = None, nodes: Nodes = None, seq_len: SeqLen = None,
         micro_batch: MicroBatch = None, grad_accum: GradAccum = None, precision: PrecisionOpt = None,
         dataset_tokens: DatasetTokens = None, epochs: Epochs = None, packing: Packing = None,
         lora_r: Annotated[int, typer.Option("--lora-r", help="rank of the LoRA candidates")] = 16,
         lora_targets: LoraTargets = None,
         max_hours: Annotated[Optional[float], typer.Option("--max-hours", help="training-time budget in hours [default: no budget]")] = None,
         full_only: Annotated[bool, typer.Option("--full-only", help="quality requires full fine-tuning")] = False,
         cost_per_gpu_hour: Annotated[Optional[float], typer.Option(
             "--cost-per-gpu-hour", help="price of one GPU for one hour, in --currency [default: none, no costs shown]")] = None,
         currency: Annotated[str, typer.Option("--currency", help="currency of --cost-per-gpu-hour and every cost shown")] = "USD",
         method: MethodOpt = "analytic", json_out: Json = False,
         quant: Annotated[Optional[str], typer.Option("--quant", help="comma list of bases to try: none,nf4,fp4,int8 "
                                                      "[default: none,nf4,int8]")] = None,
         optim: Annotated[Optional[str], typer.Option("--optim", help="comma list of optimizers to try [default: all]")] = None,
         out: Annotated[Optional[Path], typer.Option("--out", help="write the plan JSON (with the recommended run "
                                                     "for 'ftopt train --plan') to this file")] = None,
         calibration: CalibrationOpt = None, host_ram: HostRam = None,
         export: Annotated[Optional[Path], typer.Option("--export", help="write the recommended run for DeepSpeed, "
                                                        "TRL and accelerate (ds_config.json, sft_config.yaml, "
                                                        "launch.sh) into this folder")] = None):
    """Predict every valid combination and recommend one."""
    def body():
        from ftopt import plan as make_plan
        from ftopt import resolve
        from ftopt.display import print_plan
        from ftopt.io import atomic_write_text
        from ftopt.spec import load_model

        if out is not None:
            check_out_folder(out.parent)
        if export is not None:
            check_out_folder(export, "--export")
        m, hw = load_model(model), planning_hardware(gpu, calibration, host_ram)
        setup = resolve.setup(hw, seq_len=seq_len, micro_batch=micro_batch, grad_accum=grad_accum, precision=precision,
                              gpus_per_node=gpus, nodes=nodes, dataset_tokens=dataset_tokens, epochs=epochs,
                              packing=packing)
        p = make_plan(m, hw, setup, method=method_of(method), max_hours=max_hours, full_only=full_only, lora_r=lora_r,
                      lora_targets=resolve.lora_target_list(lora_targets), cost_per_gpu_hour=cost_per_gpu_hour,
                      currency=currency, quants=resolve.enum_list("quant", quant),
                      optims=resolve.enum_list("optim", optim))
        doc = p.to_json()
        ref = resolve.model_ref(model, weights=resolve.has_weights(model))
        run = resolve.new_run(hw, ref, setup, p.recommended.combination) if p.recommended else None
        doc["run"] = run.to_json() if run else None
        if export is not None:
            from ftopt.export import export_run

            if run is None:
                raise FtoptError("Nothing fits, so there is no run to export; relax the plan's constraints.")
            written = export_run(run, m, export)
            typer.echo(f"exported: {', '.join(str(w) for w in written)}", err=json_out)
        if out:
            try:
                atomic_write_text(out, json.dumps(doc, indent=2))
            except OSError as e:
                raise FtoptError(f"Cannot write the plan to {out}: {e.strerror}.") from None
        if json_out:
            typer.echo(json.dumps(doc, indent=2))
        else:
            print_plan(p)
    run_body(body)



@app.command()
def train(
    model: WeightsModel = None,
    random_init: Annotated[Optional[str], typer.Option("--random-init", help="preset or config.json, random weights")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer folder or Hub id [default: the model's]")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder "
                                                "[default: the built-in task]")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="held-out data [default: split from --data]")] = None,
    eval_fraction: Annotated[Optional[float], typer.Option("--eval-fraction", help="share of --data held out; 0 = "
                                                           "none [default: 0.1]")] = None,
    eval_max_examples: Annotated[Optional[int], typer.Option("--eval-max-examples", help="held-out examples scored by "
                                                             "generation; 0 = none [default: 64]")] = None,
    packing: Packing = None,
    seq_len: SeqLen = None, micro_batch: MicroBatch = None, grad_accum: GradAccum = None, precision: PrecisionOpt = None,
    gc: Gc = None, lora_r: LoraR = None, lora_targets: LoraTargets = None, zero: Zero = None, offload: OffloadOpt = None,
    attn: Attn = None, quant: QuantOpt = None, optim: OptimOpt = None, epochs: Epochs = None,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="run exactly the run of a plan JSON "
                                                      "('ftopt plan --out') or a run specification file")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="optimizer steps; -1 = run the epochs "
                                                     "[default: -1]")] = None,
    max_hours: Annotated[Optional[float], typer.Option("--max-hours", help="stop at a checkpoint after this many "
                                                       "hours [default: no limit]")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="peak learning rate [default: 1e-3]")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="cosine | linear | constant | "
                                                       "constant_with_warmup [default: cosine]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed [default: 0]")] = None,
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help="checkpoint every N steps [default: 200]")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="run folder [default: ftopt-runs/default]")] = None,
    gpus: Gpus = None, nodes: Nodes = None,
    hostfile: Annotated[Optional[str], typer.Option("--hostfile", help="DeepSpeed host file (several nodes)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the run in --out")] = False,
    gpu: Gpu = None,
    trust_remote_code: TrustRemoteCode = False,
    report_to: Annotated[Optional[str], typer.Option("--report-to", help="none | tensorboard | mlflow | wandb "
                                                     "[default: none]")] = None,
    metric: MetricOpt = None,
    json_out: Json = False,
):
    """Fine-tune for real (Trainer + PEFT + DeepSpeed) with one run specification, and measure it."""
    def body():
        from ftopt import resolve
        from ftopt.display import print_train_metrics
        from ftopt.train.engine import launch

        if model and random_init:
            raise FtoptError("give either --model (weights) or --random-init (a config), not both.")
        ref = (resolve.model_ref(model, weights=True, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
               if model else resolve.model_ref(random_init, weights=False, tokenizer=tokenizer,
                                               trust_remote_code=trust_remote_code) if random_init else None)
        given_setup = dict(seq_len=seq_len, micro_batch=micro_batch, grad_accum=grad_accum, precision=precision,
                           gpus_per_node=gpus, nodes=nodes, epochs=epochs, packing=packing)
        given_combo = dict(gc=gc, lora_r=lora_r, lora_targets=lora_targets, zero=zero, offload=offload, attn=attn,
                           quant=quant, optim=optim)
        if plan_file is not None:
            if gpu is not None:
                raise FtoptError("--gpu would change the hardware the plan predicted for; plan again instead.")
            spec = resolve.run_from_file(plan_file, model=ref, given_setup=given_setup, given_combination=given_combo,
                                         note=lambda m: typer.echo(m, err=True))
        else:
            from ftopt.calibration_store import calibrated_hardware

            hw = calibrated_hardware(hardware(gpu))  # the stored calibration for this hardware, if it matches
            spec = resolve.new_run(hw, ref or resolve.model_ref("tiny-llama", weights=False, tokenizer=tokenizer),
                                   resolve.setup(hw, **given_setup), resolve.combination(**given_combo))
        spec = resolve.finish_run(
            spec, data=dict(train=data, eval=eval_data, eval_fraction=eval_fraction,
                            eval_max_examples=eval_max_examples, metrics=tuple(metric) if metric else None),
            schedule=dict(max_steps=max_steps, learning_rate=lr, lr_schedule=lr_schedule, seed=seed,
                          save_steps=save_steps, max_hours=max_hours),
            output=dict(dir=out, resume=resume or None, overwrite=overwrite or None, report_to=report_to),
            hostfile=hostfile)
        resolve.check(spec)  # an unknown model or LoRA target is one line now, not after the data is tokenized
        check_out_folder(spec.output_dir)
        if spec.model.weights:
            from ftopt.spec.hub import resolve_weights

            # a folder, or the Hub download (after the cheap checks), before any training process starts
            resolve_weights(spec.model.ref, spec.model.trust_remote_code)
        with stdout_to_stderr(json_out):
            metrics = launch(spec)
        if json_out:
            typer.echo(json.dumps(metrics, indent=2))
        else:
            print_train_metrics(metrics, str(spec.output_dir))
    run_body(body)


@app.command()
def bench(
    grid: Annotated[Optional[Path], typer.Option("--grid", help="YAML grid of combinations [default: the study's "
                                                 "reference points]")] = None,
    out: Annotated[Path, typer.Option("--out", help="sweep folder: results.jsonl (appended; finished runs skipped) "
                                      "and runs/")] = Path("ftopt-runs/bench"),
    model: WeightsModel = None,
    random_init: Annotated[Optional[str], typer.Option("--random-init", help="preset or config.json, random weights")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="training data [default: the built-in task]")] = None,
    seq_len: SeqLen = None, micro_batch: MicroBatch = None, precision: PrecisionOpt = None,
    packing: Annotated[bool, typer.Option("--packing/--no-packing", help="pack sequences to exactly --seq-len")] = False,
    max_steps: Annotated[int, typer.Option("--max-steps", help="optimizer steps per run")] = 100,
    lr: Annotated[Optional[float], typer.Option("--lr", help="peak learning rate [default: 1e-3]")] = None,
    gpu: Gpu = None,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank of the reference points")] = 8,
    repeat: Annotated[int, typer.Option("--repeat", help="runs per combination (noisy machines)")] = 1,
    zero_gpus: Annotated[Optional[int], typer.Option("--zero-gpus", help="processes for ZeRO runs [default: 2 on "
                                                     "cpu, else the GPUs of this machine]")] = None,
    run_timeout: Annotated[Optional[float], typer.Option("--run-timeout", help="stop a run after this many seconds "
                                                         "and record it as 'timeout' [default: no limit]")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="held-out data [default: split from --data]")] = None,
    metric: MetricOpt = None, quality_target: QualityTargetOpt = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="comma list of bases (none,nf4,fp4,int8): each LoRA "
                                                 "point also runs with each")] = None,
    optim: Annotated[Optional[str], typer.Option("--optim", help="comma list of optimizers: each ZeRO-free point also "
                                                 "runs with each (with --quant: every pair)")] = None,
    trust_remote_code: TrustRemoteCode = False,
):
    """Run the proof-of-concept sweep: each combination as its own `ftopt train`, results appended atomically."""
    def body():
        from ftopt import resolve
        from ftopt.bench import (
            default_zero_processes, load_grid, quant_optim_variants, reference_combinations, run_sweep, sweep_rows,
            sweep_runs,
        )
        from ftopt.display import console, print_sweep_event, print_sweep_summary

        if repeat < 1:
            raise FtoptError(f"--repeat must be at least 1, got {repeat}.")
        if run_timeout is not None and run_timeout <= 0:
            raise FtoptError(f"--run-timeout must be positive, got {run_timeout}.")
        from ftopt.quality import QualityTarget, load_user_metric

        target = QualityTarget.parse(quality_target) if quality_target else None
        for ref in metric or []:
            load_user_metric(ref)  # a typo fails now, not after the first run
        check_out_folder(out)
        hw = hardware(gpu)
        combos = load_grid(grid) if grid else reference_combinations(hw, lora_r)
        q, o = resolve.enum_list("quant", quant), resolve.enum_list("optim", optim)
        combos += quant_optim_variants(combos, q, o)
        ref = resolve.model_ref(model or random_init or "tiny-llama", weights=model is not None,
                                trust_remote_code=trust_remote_code)
        base = resolve.finish_run(
            resolve.new_run(hw, ref, resolve.setup(hw, seq_len=seq_len, micro_batch=micro_batch, precision=precision,
                                          packing=packing),
                            resolve.combination()),
            data=dict(train=data, eval=eval_data, metrics=tuple(metric) if metric else None), schedule=dict(max_steps=max_steps, learning_rate=lr), output={})
        for c in combos:
            resolve.check(base.model_copy(update={"combination": c}))
        runs = sweep_runs(base, combos, out / "runs", repeat=repeat, zero_gpus=zero_gpus or default_zero_processes(hw))
        rows = sweep_rows(run_sweep(runs, out / "results.jsonl", run_timeout_seconds=run_timeout,
                                    on_event=print_sweep_event), runs)
        print_sweep_summary(rows, out / "results.jsonl", target)
        if any(r["status"] == "ok" for r in rows):
            from ftopt.calibration_store import calibrate_and_store
            from ftopt.display import print_calibration

            fit, path = calibrate_and_store(rows, hw, str((out / "results.jsonl").resolve()), ref.ref)
            print_calibration(fit)
            console.print(f"time model for '{hw.name}' (merged with earlier fits under these library versions) "
                          f"stored in {path}; later plan/estimate on it use it")
    run_body(body)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results.jsonl written by ftopt bench (or its folder)")],
    out: Annotated[Path, typer.Option("--out", help="folder for report.<lang>.html/.md and charts")] = Path("ftopt-report"),
    lang: Annotated[str, typer.Option("--lang", help="en | ja")] = "en",
    title: Annotated[Optional[str], typer.Option("--title", help="report title")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="hardware the runs used (memory line, calibration) "
                                               "[default: the hardware recorded in the results]")] = None,
    quality_target: QualityTargetOpt = None, target_gpu: TargetGpu = None, target_gpus: TargetGpus = 1,
    target_nodes: TargetNodes = 1, target_model: TargetModel = None, dataset_tokens: ProdTokens = None,
    epochs: ProdEpochs = 1.0, retrains_per_year: Retrains = 1.0, cost_per_gpu_hour: CostPerGpuHour = None,
    currency: Currency = "USD", max_hours: MaxHours = None,
):
    """Write the decision report (HTML, Markdown, PNG charts) from a results file."""
    def body():
        from ftopt.report.cli_support import write_report

        path = results / "results.jsonl" if results.is_dir() else results
        if not path.exists():
            raise FtoptError(f"The results file {path} does not exist; run 'ftopt bench' first.")
        check_out_folder(out)
        paths = write_report(path, out, lang=lang, warn=lambda m: typer.echo(f"warning: {m}", err=True), gpu=gpu,
                             title=title, quality_target=quality_target, target_gpu=target_gpu,
                             target_gpus=target_gpus, target_nodes=target_nodes, target_model=target_model,
                             dataset_tokens=dataset_tokens, epochs=epochs, retrains_per_year=retrains_per_year,
                             cost_per_gpu_hour=cost_per_gpu_hour, currency=currency, max_hours=max_hours)
        typer.echo(f"report: {paths['html']} and {paths['markdown']}")
    run_body(body)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where runs, results and the report go")] = Path("ftopt-runs/demo"),
    steps: Annotated[int, typer.Option("--steps", help="training steps per combination")] = 120,
    quality_target: QualityTargetOpt = None, target_gpu: TargetGpu = None, target_gpus: TargetGpus = 1,
    target_nodes: TargetNodes = 1, dataset_tokens: ProdTokens = None, epochs: ProdEpochs = 1.0,
    retrains_per_year: Retrains = 12.0, cost_per_gpu_hour: CostPerGpuHour = None, currency: Currency = "USD",
    max_hours: MaxHours = None,
):
    """The whole loop on the built-in base model and task, offline, on this CPU (under 5 minutes on 2 cores).

    Stated assumptions unless given: quality target exact_match>=0.5; production on one a100-80g with 100M tokens,
    12 runs a year."""
    def body():
        from ftopt.demo import DemoOptions, run_demo

        if steps < 1:
            raise FtoptError(f"--steps must be at least 1, got {steps}.")
        check_out_folder(out)
        given = dict(quality_target=quality_target, target_gpu=target_gpu, target_gpus=target_gpus,
                     target_nodes=target_nodes, dataset_tokens=dataset_tokens, epochs=epochs,
                     retrains_per_year=retrains_per_year, cost_per_gpu_hour=cost_per_gpu_hour, currency=currency,
                     max_hours=max_hours)
        options = DemoOptions(**{k: v for k, v in given.items() if v is not None})
        options.check()  # now, not after the sweep: a typo must not cost the demo's minutes
        run_demo(out, steps=steps, options=options)
    run_body(body)


@app.command()
def preview(
    data: Annotated[str, typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="model folder or Hub id (its tokenizer)"
                                                 f"; {MODEL_REF_RULE}")] = None,
    random_init: Annotated[Optional[str], typer.Option("--random-init", help="preset or config.json")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer folder or Hub id")] = None,
    seq_len: SeqLen = 64,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="held out, as in train")] = 0.1,
    packing: Annotated[bool, typer.Option("--packing/--no-packing")] = False,
    n: Annotated[int, typer.Option("-n", help="examples to show")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    trust_remote_code: TrustRemoteCode = False,
    json_out: Json = False,
):
    """Show the first examples as the trainer will see them (trained tokens marked) and the data summary."""
    def body():
        from ftopt.spec import load_model
        from ftopt.spec.run import DataSpec, ModelRef
        from ftopt.train.preview import build_preview, render

        if model and random_init:
            raise FtoptError("give either --model (weights and tokenizer) or --random-init (config), not both.")
        ref = ModelRef(ref=model or random_init or ModelRef().ref, weights=model is not None, tokenizer=tokenizer,
                       trust_remote_code=trust_remote_code)
        spec = load_model(ref.ref)
        result, tok = build_preview(ref, DataSpec(train=data, eval_fraction=eval_fraction),
                                    spec.vocab_size, seq_len, n, seed=seed, packing=packing)
        if json_out:
            typer.echo(result.model_dump_json(indent=2))
        else:
            from ftopt.display import console

            render(result, tok, console)
    run_body(body)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
