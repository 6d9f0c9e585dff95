"""Rich terminal rendering of estimates and plans (the CLI prints; the library computes)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftopt.estimate import Estimate, Method
from ftopt.planner.plan import LimitKind, Plan
from ftopt.spec import DEFAULT_HEADROOM
from ftopt.spec.calibration import MFU_AT_BOUND, CalibrationProvenance
from ftopt.spec.hardware import device_words
from ftopt.spec.time_constants import TimeConstants
from ftopt.spec.units import fmt_bytes, fmt_seconds

# Wide tables when piped (CI logs, files); the terminal width when interactive.
console = Console(width=None if sys.stdout.isatty() else 160)


def _breakdown_table(e: Estimate) -> Table:
    t = Table(title=f"{e.model} on {e.hardware}: {e.combination.label()} ({e.method.value})", show_edge=False)
    t.add_column("per GPU")
    t.add_column("memory", justify="right")
    for k, v in e.breakdown.model_dump().items():
        if v:
            t.add_row(k.replace("_", " "), fmt_bytes(v))
    t.add_row("[bold]allocated peak[/]", f"[bold]{fmt_bytes(e.peak_bytes_per_gpu)}[/]")
    if e.reserved_bytes_per_gpu != e.peak_bytes_per_gpu:  # off CUDA nothing is cached: one figure
        t.add_row("reserved peak (caching allocator)", fmt_bytes(e.reserved_bytes_per_gpu))
    t.add_row("device total (reserved + CUDA context)", fmt_bytes(e.device_bytes_per_gpu))
    t.add_row("capacity", fmt_bytes(e.capacity_bytes))
    return t


def print_estimate(e: Estimate) -> None:
    console.print(_breakdown_table(e))
    verdict = _fit_word(e, "[green]fits[/]", "[yellow]tight[/]", "[red]does not fit[/]")
    console.print(
        f"{verdict}: headroom {fmt_bytes(e.headroom_bytes)} ({fmt_bytes(e.usable_bytes)} usable with "
        f"{e.headroom_fraction:.0%} kept free); peak during {e.peak_phase}; "
        f"trainable {e.trainable_params:,} of {e.total_params:,} parameters"
    )
    if e.cpu_bytes_per_node:
        console.print(f"host RAM for offloaded states: {fmt_bytes(e.cpu_bytes_per_node)} per node")
    length = (
        f"{e.steps_per_epoch} steps per epoch, epoch {fmt_seconds(e.epoch_seconds)}, "
        f"total {fmt_seconds(e.total_seconds)}"
        if e.per_dataset
        else f"{fmt_seconds(e.seconds_per_1k_samples)} per 1k samples (give --dataset-tokens for epoch and total time)"
    )
    console.print(
        f"step {fmt_seconds(e.step_seconds)} (communication/offload {fmt_seconds(e.comm_seconds)}, "
        f"overhead of {e.kernels_per_step:,} operators etc. {fmt_seconds(e.overhead_seconds)}), {length}"
    )
    console.print(calibration_line(e.calibration, e.hardware, e.time_constants))
    if e.trace_fallback is not None:
        console.print(f"[yellow]warning:[/] {escape(e.trace_fallback.message)}")
    for n in e.notes:
        console.print(f"[yellow]note:[/] {n}")


def _fit_word(e: Estimate, fits: str, tight: str, no: str) -> str:
    return fits if e.fits else tight if e.tight else no


def calibration_line(cal: CalibrationProvenance | None, hardware: str, tc: TimeConstants | None = None) -> str:
    """Which time constants an estimate or plan used: their figures and where they came from (the default's
    source, or the calibration's runs, files and date)."""
    from ftopt.planner.calibration_store import unfit_reasons

    figures = f"; constants {escape(tc.figures())}" if tc is not None else ""
    if cal is None:
        source = f"; source: {escape(tc.provenance.source)}" if tc is not None else ""
        refused = getattr(tc.provenance, "not_applied", None) if tc is not None else None
        return (
            f"time model: uncalibrated for {hardware} (default constants; 'ftopt bench' on it calibrates)"
            f"{figures}{source}" + (f" [yellow]({escape(refused)})[/]" if refused else "")
        )
    why = unfit_reasons(cal)  # only a file named with --calibration is applied with reasons against it
    warn = f" [yellow](applied as named, though {escape('; '.join(why))}: treat the times with care)[/]" if why else ""
    return f"time model: calibrated, {escape(cal.summary())}{figures}{warn}"


def print_plan(p: Plan, limit: int = 20) -> None:
    s = p.setup
    t = Table(
        title=f"{p.model} on {s.world_size} x {p.hardware}, seq {s.seq_len}, micro-batch {s.micro_batch}, "
        f"{s.precision.value} ({p.method.value})"
    )
    times = ("epoch", "total") if p.per_dataset else ("step", "per 1k samples")
    for col, j in (
        ("#", "right"),
        ("combination", "left"),
        (f"per-{device_words(p.on_cpu)[0]} memory", "right"),
        ("headroom", "right"),
        ("fits", "center"),
        ("estimate", "left"),  # which estimator gave the row's memory: a traced pick replaces its analytic row
        *((c, "right") for c in times),
    ):
        t.add_column(col, justify=j)
    if p.cost_per_gpu_hour is not None:
        t.add_column(f"cost ({p.currency}{'' if p.per_dataset else ' per 1k samples'})", justify="right")
    shown = [e for e in p.candidates if e.fits or e.tight][:limit] or p.candidates[:limit]
    for i, e in enumerate(shown, 1):
        rec = e is p.recommended
        spans = (e.epoch_seconds, e.total_seconds) if p.per_dataset else (e.step_seconds, e.seconds_per_1k_samples)
        row = [
            str(i),
            ("[bold green]* " if rec else "") + e.combination.label() + ("[/]" if rec else ""),
            fmt_bytes(e.device_bytes_per_gpu),
            fmt_bytes(e.headroom_bytes),
            _fit_word(e, "yes", "[yellow]tight[/]", "[red]no[/]"),
            e.method.value,
            *(fmt_seconds(x) for x in spans),
        ]
        if p.cost_per_gpu_hour is not None:
            row.append(f"{p.cost(e):,.2f} {p.currency}")
        t.add_row(*row)
    console.print(t)
    if not p.per_dataset:
        console.print(
            "No --dataset-tokens: times are per optimizer step and per 1,000 samples of "
            f"{s.seq_len} tokens, not per epoch."
        )
    n_fit, n_tight = sum(e.fits for e in p.candidates), sum(e.tight for e in p.candidates)
    tight = f", {n_tight} more only without the {s.headroom:.0%} margin (tight)" if n_tight else ""
    console.print(f"{n_fit} of {len(p.candidates)} combinations fit{tight}; showing {len(shown)}.")
    if p.recommended:
        console.print(
            f"[bold]Recommended:[/] {p.recommended.combination.label()} — {p.reason}. "
            f"Memory: {_answered(p.recommended.method, p.method)}."
        )
    else:
        console.print(f"[bold red]No recommendation:[/] {p.reason}.")
    _print_what_ifs(p)
    for answer, f in p.fallbacks.items():
        console.print(f"[yellow]warning:[/] {answer.value.replace('_', ' ')} is not confirmed: {escape(f.message)}.")
    if p.shortfall:
        console.print(f"[yellow]Falls short:[/] {p.shortfall}.")
    console.print(calibration_line(p.calibration, p.hardware, p.time_constants))


def _print_what_ifs(p: Plan) -> None:
    """The longest context and the fewest GPUs, each with the method that answered."""
    if p.longest_context and p.longest_context_bound is LimitKind.REQUESTED:
        console.print(
            f"What if: the recommendation fits at the requested {p.longest_context:,} tokens, beyond the model's "
            "position limit; memory is not what bounds the context."
        )
    elif p.longest_context and p.longest_context_bound is LimitKind.POSITIONS:
        console.print(
            f"What if: the recommendation fits up to the model's position limit, {p.longest_context:,} "
            "tokens; memory is not what bounds the context."
        )
    elif p.longest_context:
        console.print(
            f"What if: the longest context that fits in memory with the recommendation is {p.longest_context:,} tokens"
            f" ({_answered(p.longest_context_method, p.method)})."
        )
    devices = device_words(p.on_cpu)[1]
    if p.fewest_gpus:
        console.print(
            f"What if: the fewest {p.hardware} {devices} that fit the model: {p.fewest_gpus} "
            f"({p.fewest_gpus_combination.label()}; {_answered(p.fewest_gpus_method, p.method)})."
        )
    elif p.fewest_gpus is None and p.recommended is None:
        console.print(f"What if: no number of these {devices} up to 64 fits the model.")


def _answered(method, asked) -> str:
    """Which estimator gave an answer: the trace confirmed it, or the formulas alone (and why)."""
    if method is Method.TRACED:
        return "confirmed by the traced estimator"
    if asked is Method.TRACED:
        return "analytic estimate; the traced estimator did not confirm it (see the warning)"
    return "analytic estimate; --method traced confirms it"


def print_train_metrics(m: dict, output_dir: str) -> None:
    """Measured next to predicted, for the run that just ended."""
    meas, pred = m["measured"], m.get("predicted", {})
    t = Table(title=f"{m['model']}: {m['label']} on {m['world_size']} process(es)", show_edge=False)
    for col in ("", "measured", "predicted (analytic)", "predicted (traced)"):
        t.add_column(col, justify="right")

    def p(method, key, fmt):
        v = pred.get(method, {}).get(key)
        return fmt(v) if v is not None else "-"

    t.add_row(
        "peak memory per GPU",
        fmt_bytes(meas["peak_bytes_per_gpu"]),
        p("analytic", "peak_bytes_per_gpu", fmt_bytes),
        p("traced", "peak_bytes_per_gpu", fmt_bytes),
    )
    t.add_row(
        "step time",
        fmt_seconds(meas["step_seconds"] or 0),
        p("analytic", "step_seconds", fmt_seconds),
        p("traced", "step_seconds", fmt_seconds),
    )
    console.print(t)
    em, em0 = meas.get("exact_match"), meas.get("base_quality", {}).get("exact_match")
    num = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731 - e.g. no eval loss without a split
    console.print(
        f"tokens/s {num(meas['tokens_per_s'], '.0f')}; epoch {fmt_seconds(meas['epoch_seconds'] or 0)}; "
        f"train loss {num(meas['train_loss'], '.3f')}; eval loss {num(meas['eval_loss'], '.3f')}"
        + (f"; exact match {em:.0%}" if em is not None else "")
        + (f" (before training {em0:.0%})" if em0 is not None else "")
        + (f"; MFU {m['mfu']:.1%}" if m.get("mfu") else "")
    )
    from ftopt.train.gap import padding_gap_note

    gap = padding_gap_note(m)
    if gap:
        console.print(f"[yellow]note:[/] {gap}")
    if pred.get("analytic", {}).get("tight"):
        margin = (m.get("run") or {}).get("setup", {}).get("headroom", DEFAULT_HEADROOM)
        console.print(
            f"[yellow]note:[/] the predicted device total fits this GPU but not the {margin:.0%} kept free "
            "(--headroom): a longer batch, fragmentation or another process can run it out of memory."
        )
    console.print(f"saved model, tokenizer and metrics.json in {output_dir}")


def print_sweep_event(kind: str, info: dict) -> None:
    """One line per run of `ftopt bench` (ftopt.sweep.bench.run_sweep's on_event); a retried run says what its last
    attempt ended in."""
    running = f"running again (last attempt: {info['retry']})" if info.get("retry") else "running"
    console.print(
        f"[{info['index']}/{info['total']}] {info['label']}: "
        f"{ {'start': running, 'skip': 'done before'}.get(kind, info.get('status')) }"
        + (f" ({info['error']})" if info.get("error") else ""),
        markup=False,
        highlight=False,
    )


def print_sweep_summary(rows: list, results_path, target) -> None:
    """How many runs of the sweep (ftopt.results.rows.ResultRow) succeeded, and which met the quality target (or None)."""
    console.print(f"{sum(r.ok for r in rows)} of {len(rows)} runs ok; results in {results_path}")
    for r in rows:
        s = r.measured.stats() if r.ok else None
        if s is not None and s.steps:
            console.print(
                f"  {r.label}: step {s.median * 1e3:.1f} ms median, {s.low * 1e3:.1f}-{s.high * 1e3:.1f} ms "
                f"interquartile over {s.steps} steps (first {s.warmup} left out as warm-up)"
            )
    if target is not None:
        met = [r.label for r in rows if r.ok and target.met(r.measured)]
        unscored = [r.label for r in rows if r.ok and r.measured.value(target.metric) is None]
        console.print(
            (f"quality target {target}: met by {', '.join(met)}" if met else f"quality target {target}: no run met it")
            + (f"; not measured (neither met nor missed) by {', '.join(unscored)}" if unscored else "")
        )


def print_calibration(fit) -> None:
    """The fitted time model and how well it predicts combinations it did not see (a CalibrationFit)."""
    from ftopt.planner.calibration import RANK_TIE_FRACTION

    t = Table(title=f"time model check: each combination predicted by a fit on the others ({fit.fit_runs} runs)")
    for col in ("combination", "predicted step", "measured step", "error"):
        t.add_column(col, justify="left" if col == "combination" else "right")
    for h in fit.holdout:
        err = (h.predicted_seconds - h.measured_seconds) / h.measured_seconds
        t.add_row(h.label, f"{h.predicted_seconds * 1e3:.1f} ms", f"{h.measured_seconds * 1e3:.1f} ms", f"{err:+.1%}")
    if fit.holdout:
        console.print(t)
    zero = ", ".join(
        [f"ZeRO-{z} +{fmt_seconds(s)}" for z, s in sorted(fit.zero_step_seconds.items())]
        + [f"FSDP2-{f} +{fmt_seconds(s)}" for f, s in sorted(fit.fsdp_step_seconds.items())]
    )
    console.print(
        f"fitted: mfu {fit.mfu:.1%}, {fit.seconds_per_kernel * 1e6:.1f} µs per operator, fixed "
        f"{fmt_seconds(fit.fixed_step_seconds)} per step{'; ' + zero if zero else ''}"
    )
    if fit.at_bound:
        console.print(
            f"[yellow]at a bound:[/] {', '.join(fit.at_bound)}"
            + (
                " (the runs cannot separate the FLOP rate from the overheads: more varied runs calibrate it)"
                if MFU_AT_BOUND in fit.at_bound
                else ""
            )
        )
    if fit.left_out:
        console.print(f"left out of the fit (kept in the results): {escape('; '.join(fit.left_out))}")
    if fit.holdout_median_abs_error is not None:
        rho = f", Spearman rho {fit.spearman_rho:.2f}" if fit.spearman_rho is not None else ""
        if fit.pairs_compared:
            rho += (
                f"; {fit.pairs_ordered} of {fit.pairs_compared} pairs more than "
                f"{RANK_TIE_FRACTION:.0%} apart ranked right"
            )
        console.print(
            f"held-out step-time error: median {fit.holdout_median_abs_error:.1%}, "
            f"worst {fit.holdout_worst_abs_error:.1%}{rho}"
        )


class ConsoleDemoView:
    """The demo's progress on the terminal (ftopt.sweep.demo.DemoView)."""

    def section(self, title: str) -> None:
        console.rule(title)

    def line(self, text: str) -> None:
        console.print(text)

    def plan(self, p: Plan) -> None:
        print_plan(p, limit=8)

    def sweep_summary(self, rows: list, results_path, target) -> None:
        print_sweep_summary(rows, results_path, target)

    def calibration(self, fit) -> None:
        print_calibration(fit)
