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
QuantOpt = Annotated[str, typer.Option("--quant", help="base quantization: none | nf4 | fp4 | int8 (bitsandbytes; needs LoRA)")]
OptimOpt = Annotated[str, typer.Option("--optim", help="adamw | adamw-8bit | paged-adamw-8bit | paged-adamw")]
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


def build_combination(gc, lora_r, lora_targets, zero, offload, attn, quant="none", optim="adamw"):
    from ftopt.spec import Attention, Combination, Offload, Optim, Quant

    return Combination(gc=gc, lora_r=lora_r, lora_targets=_targets(lora_targets), zero=zero,
                       offload=_enum(Offload, offload, "--offload"), attn=_enum(Attention, attn, "--attn"),
                       quant=_enum(Quant, quant, "--quant"), optim=_enum(Optim, optim, "--optim"))


def _enum_list(enum_cls, value: Optional[str], flag: str):
    """A comma list of enum values (None = not given)."""
    if value is None:
        return None
    return tuple(_enum(enum_cls, v.strip(), flag) for v in value.split(",") if v.strip()) or None


def _method(m: str):
    from ftopt.estimate import Method

    return _enum(Method, m, "--method")


@app.command()
def estimate(model: Model = "llama-2-7b", gpu: Gpu = "a100-80g", gpus: Gpus = 1, nodes: Nodes = 1,
             seq_len: SeqLen = 2048, micro_batch: MicroBatch = 1, grad_accum: GradAccum = 1,
             precision: PrecisionOpt = "bf16-mixed", dataset_tokens: DatasetTokens = None, epochs: Epochs = 1.0,
             gc: Gc = False, lora_r: LoraR = 0, lora_targets: LoraTargets = None, zero: Zero = 0,
             offload: OffloadOpt = "none", attn: Attn = "sdpa", quant: QuantOpt = "none", optim: OptimOpt = "adamw",
             method: MethodOpt = "analytic", json_out: Json = False):
    """Per-GPU memory and time of ONE combination, before anything runs."""
    def body():
        from ftopt import estimate as est
        from ftopt.display import print_estimate
        from ftopt.spec import load_hardware, load_model

        m, hw = load_model(model), load_hardware(gpu)
        setup = build_setup(seq_len, micro_batch, grad_accum, precision, gpus, nodes, dataset_tokens, epochs)
        e = est(m, hw, setup, build_combination(gc, lora_r, lora_targets, zero, offload, attn, quant, optim),
                _method(method))
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
         quant: Annotated[Optional[str], typer.Option("--quant", help="comma list of bases to try: none,nf4,fp4,int8 (default none,nf4,int8)")] = None,
         optim: Annotated[Optional[str], typer.Option("--optim", help="comma list of optimizers to try (default: all)")] = None,
         out: Annotated[Optional[Path], typer.Option("--out", help="also write the plan JSON here")] = None):
    """Predict every valid combination and recommend one."""
    def body():
        from ftopt import plan as make_plan
        from ftopt.display import print_plan
        from ftopt.io import atomic_write_text
        from ftopt.spec import Optim, Quant, load_hardware, load_model

        m, hw = load_model(model), load_hardware(gpu)
        setup = build_setup(seq_len, micro_batch, grad_accum, precision, gpus, nodes, dataset_tokens, epochs)
        p = make_plan(m, hw, setup, method=_method(method), max_hours=max_hours, full_only=full_only, lora_r=lora_r,
                      lora_targets=_targets(lora_targets), cost_per_gpu_hour=cost_per_gpu_hour,
                      quants=_enum_list(Quant, quant, "--quant"), optims=_enum_list(Optim, optim, "--optim"))
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


def _combination_from_plan(path: Path):
    from ftopt.spec import Combination

    try:
        doc = json.loads(path.read_text())
        rec = doc["recommended"]
    except OSError as e:
        raise FtoptError(f"Cannot read the plan {path}: {e.strerror}.") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise FtoptError(f"{path} is not a plan written by 'ftopt plan --out' (no 'recommended' key).") from None
    if rec is None:
        raise FtoptError(f"The plan {path} has no recommended combination (nothing fit).")
    return Combination(**rec)


@app.command()
def train(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="local model folder or hub id (weights)")] = None,
    random_init: Annotated[Optional[str], typer.Option("--random-init", help="preset or config.json, random weights")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="JSONL, CSV, Parquet or datasets folder")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data")] = None,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction")] = 0.1,
    seq_len: SeqLen = 64, packing: Annotated[bool, typer.Option("--packing/--no-packing")] = False,
    gc: Gc = False, lora_r: LoraR = 0, lora_targets: LoraTargets = None, zero: Zero = 0,
    offload: OffloadOpt = "none", attn: Attn = "sdpa", precision: PrecisionOpt = "fp32",
    quant: QuantOpt = "none", optim: OptimOpt = "adamw",
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="use the recommended combination of a plan JSON")] = None,
    epochs: Epochs = 1.0, max_steps: Annotated[int, typer.Option("--max-steps", help="-1 = run the epochs")] = -1,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    lr_schedule: Annotated[str, typer.Option("--lr-schedule", help="cosine | linear | constant")] = "cosine",
    micro_batch: MicroBatch = 8, grad_accum: GradAccum = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    output_dir: Annotated[str, typer.Option("--output-dir", "-o")] = "ftopt-runs/default",
    gpus: Annotated[int, typer.Option("--gpus", help="processes (GPUs) per node; >1 uses the DeepSpeed launcher")] = 1,
    nodes: Nodes = 1, hostfile: Annotated[Optional[str], typer.Option("--hostfile")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last complete checkpoint")] = False,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="hardware preset for predicted-vs-measured")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    json_out: Json = False,
):
    """Fine-tune for real (Trainer + PEFT + DeepSpeed) with one combination, and measure it."""
    def body():
        from ftopt.display import print_train_metrics
        from ftopt.spec import Precision
        from ftopt.train.engine import TrainConfig, launch

        if lr_schedule not in ("cosine", "linear", "constant", "constant_with_warmup"):
            raise FtoptError(f"--lr-schedule must be cosine, linear or constant, got '{lr_schedule}'.")
        combo = (_combination_from_plan(plan_file) if plan_file
                 else build_combination(gc, lora_r, lora_targets, zero, offload, attn, quant, optim))
        if model and not Path(model).expanduser().is_dir():
            raise FtoptError(f"--model {model} is not a local folder and the hub is not reachable offline; "
                             "download it first or use --random-init for benchmarking without weights.")
        cfg = TrainConfig(model=model, random_init=random_init, data=data, eval_data=eval_data,
                          eval_fraction=eval_fraction, seq_len=seq_len, packing=packing, combination=combo,
                          precision=_enum(Precision, precision, "--precision"), epochs=epochs, max_steps=max_steps,
                          learning_rate=lr, lr_schedule=lr_schedule, micro_batch=micro_batch, grad_accum=grad_accum,
                          seed=seed, output_dir=output_dir, gpus=gpus, nodes=nodes, hostfile=hostfile,
                          resume=resume, hardware=gpu, trust_remote_code=trust_remote_code)
        metrics = launch(cfg)
        if json_out:
            typer.echo(json.dumps(metrics, indent=2))
        else:
            print_train_metrics(metrics, output_dir)
    _run(body)


@app.command()
def bench(
    grid: Annotated[Optional[Path], typer.Option("--grid", help="YAML grid of combinations (default: reference points)")] = None,
    results: Annotated[Path, typer.Option("--results", help="results JSONL (appended; finished runs skipped)")] = Path("ftopt-runs/bench/results.jsonl"),
    model: Annotated[Optional[str], typer.Option("--model", "-m")] = None,
    random_init: Annotated[Optional[str], typer.Option("--random-init")] = None,
    data: Annotated[Optional[str], typer.Option("--data")] = None,
    seq_len: SeqLen = 64, micro_batch: MicroBatch = 8,
    packing: Annotated[bool, typer.Option("--packing/--no-packing", help="pack sequences to exactly --seq-len")] = False,
    max_steps: Annotated[int, typer.Option("--max-steps", help="steps per run")] = 100,
    precision: PrecisionOpt = "fp32", gpu: Gpu = "cpu",
    lora_r: Annotated[int, typer.Option("--lora-r")] = 8,
    repeat: Annotated[int, typer.Option("--repeat", help="runs per combination (noisy machines)")] = 1,
    quant: Annotated[Optional[str], typer.Option("--quant", help="also run each LoRA combination with this base (nf4, fp4, int8)")] = None,
    optim: Annotated[Optional[str], typer.Option("--optim", help="also run each ZeRO-free combination with this optimizer")] = None,
):
    """Run the proof-of-concept sweep: each combination as its own `ftopt train`, results appended atomically."""
    def body():
        from ftopt.bench import Sweep, load_grid, reference_combinations, run_sweep
        from ftopt.display import console
        from ftopt.spec import load_model

        if repeat < 1:
            raise FtoptError(f"--repeat must be at least 1, got {repeat}.")
        combos = load_grid(grid) if grid else reference_combinations(lora_r, cpu=gpu == "cpu")
        combos += _variants(combos, quant, optim)
        passthrough = [a for flag, v in (("--model", model), ("--random-init", random_init), ("--data", data))
                       if v for a in (flag, v)]
        spec = load_model(random_init or (model if model else "tiny-llama"))
        sweep = Sweep(model_args=passthrough, seq_len=seq_len, micro_batch=micro_batch, max_steps=max_steps,
                      precision=precision, hardware=gpu, packing=packing)
        rows = run_sweep(sweep, combos, results, results.parent / "runs", repeat=repeat, spec=spec,
                         on_event=lambda k, i: console.print(f"[{i['index']}/{i['total']}] {i['label']}: "
                                                             f"{ {'start': 'running', 'skip': 'done before'}.get(k, i.get('status'))}"))
        console.print(f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} runs ok; results in {results}")
        if any(r["status"] == "ok" for r in rows):
            from ftopt.calibration import calibrate_and_store
            from ftopt.display import print_calibration
            from ftopt.spec import load_hardware

            fit, path = calibrate_and_store(rows, load_hardware(gpu), f"ftopt bench ({results})")
            print_calibration(fit)
            console.print(f"time model for '{gpu}' stored in {path}; later plan/estimate use it")
    _run(body)


def _variants(combos, quant: Optional[str], optim: Optional[str]) -> list:
    """Copies of the combinations that can take `quant` (LoRA, ZeRO 0-2) / `optim` (no ZeRO), with it set."""
    from ftopt.spec import Combination, Optim, Quant

    q = _enum(Quant, quant, "--quant") if quant else None
    o = _enum(Optim, optim, "--optim") if optim else None
    out = []
    for c in combos:
        upd = {k: v for k, v in (("quant", q if c.lora and c.zero < 3 else None), ("optim", o if not c.zero else None))
               if v is not None}
        if upd:
            out.append(Combination(**{**c.model_dump(), **upd}))
    return out


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results JSONL written by ftopt bench")],
    out: Annotated[Path, typer.Option("--out", help="folder for report.<lang>.html/.md and charts")] = Path("ftopt-report"),
    lang: Annotated[str, typer.Option("--lang", help="en | ja")] = "en",
    title: Annotated[Optional[str], typer.Option("--title")] = None,
    gpu: Annotated[str, typer.Option("--gpu", help="hardware the runs used (memory line, calibration)")] = "cpu",
    cost_per_gpu_hour: Annotated[Optional[float], typer.Option("--cost-per-gpu-hour")] = None,
    max_hours: Annotated[Optional[float], typer.Option("--max-hours", help="time budget shown as assumption")] = None,
    quality_target_loss: Annotated[Optional[float], typer.Option("--quality-target-loss")] = None,
):
    """Write the decision report (HTML, Markdown, PNG charts) from a results file."""
    def body():
        from ftopt.bench import read_results
        from ftopt.calibration import calibrate
        from ftopt.report.render import build_report
        from ftopt.spec import load_hardware

        if not results.exists():
            raise FtoptError(f"The results file {results} does not exist; run 'ftopt bench' first.")
        rows = read_results(results, warn=lambda m: typer.echo(f"warning: {m}", err=True))
        if not rows:
            raise FtoptError(f"The results file {results} has no valid result line.")
        hw = load_hardware(gpu)
        try:
            fit = calibrate(rows, hw)
        except FtoptError:
            fit = None  # no successful run with predictions: the report says so without a calibration line
        paths = build_report(rows, out, lang=lang, title=title, hardware=hw.name,
                             capacity_bytes=None if hw.is_cpu else hw.memory_bytes,
                             cost_per_gpu_hour=cost_per_gpu_hour, max_hours=max_hours,
                             quality_target_loss=quality_target_loss, calibration=fit.model_dump() if fit else None)
        typer.echo(f"report: {paths['html']} and {paths['markdown']}")
    _run(body)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where runs, results and the report go")] = Path("ftopt-runs/demo"),
    steps: Annotated[int, typer.Option("--steps", help="training steps per combination")] = 120,
):
    """The whole loop on the built-in tiny model and data, offline, on this CPU (about 5 minutes on 2 cores)."""
    def body():
        from ftopt.demo import run_demo

        run_demo(out, steps=steps)
    _run(body)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
