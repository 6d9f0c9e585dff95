"""The report's content, language-filled but not yet laid out: the three decision points, the results table,
the production projection and the roadmap. Every value placed into a sentence is escaped here (user strings:
labels, hardware names, currency); the sentences' own markup is <b> only."""

from __future__ import annotations

import html
from pathlib import Path

from ftopt.report.decision import (
    Basis,
    Decision,
    epoch_seconds,
    gpu_seconds,
    memory_techniques,
    standing,
    unmeasured,
)
from ftopt.report.projection import PILOT_DATA_FRACTION, PILOT_TIME_OVERRUN_STOP, ProductionPlan
from ftopt.report.text import metric_name, plural
from ftopt.report.verdict import nothing_to_learn
from ftopt.results.rows import ResultRow
from ftopt.spec.training import Batching
from ftopt.spec.units import fmt_bytes, fmt_seconds

e = html.escape
# ISO 4217 currencies whose minor unit is 0 digits: an amount in them has no decimals (12,345 JPY, not 12,345.67)
ZERO_DECIMAL_CURRENCIES = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "PYG", "UGX", "円", "¥"})


def money(v: float | None, currency: str) -> str:
    if v is None:
        return "-"
    if currency.strip().upper() in ZERO_DECIMAL_CURRENCIES:
        return f"{v:,.0f} {currency}".strip()
    return f"{v:,.2f} {currency}" if v >= 1 else f"{v:.3g} {currency}"


def amount(v: float | None, currency: str) -> str:
    """money() without the currency (a table's column header names it)."""
    return money(v, currency).removesuffix(currency).strip()


def gpu_hours(v: float) -> str:
    if v >= 10:
        return f"{v:,.1f}"
    return f"{v:.3g}" if v >= 0.001 or v == 0 else "< 0.001"


def dur(seconds: float, T: dict) -> str:
    """fmt_seconds with the reader's unit words (秒, 分, 時間 in Japanese)."""
    text = fmt_seconds(seconds)
    if " " not in text:
        return text
    num, unit = text.rsplit(" ", 1)
    return num + T[f"unit_{unit}"]


def hours(v: float, T: dict) -> str:
    return dur(v * 3600, T)


def fmt_metric(v: float | None, metric: str, missing: str = "-") -> str:
    if v is None:
        return missing
    return f"{v:.1%}" if metric in ("exact_match", "label_accuracy") else f"{v:.3f}"


def point_quality(
    d: Decision, T: dict, lang: str, source_key: str, plan: ProductionPlan | None, max_hours: float | None
) -> str:
    tname = f"{metric_name(d.target.metric, lang)} {'≥' if d.target.higher_is_better else '≤'} {d.target.value:g}"
    source = T["src_derived"] if not d.target_given else T[source_key]
    if not d.learned:
        met = T["nothing_learned"].format(metric=e(metric_name(d.target.metric, lang)))
    elif d.met:
        met = T["met_some"].format(n=len(d.met), total=len(d.ok))
    else:
        c = d.closest
        met = T["met_none"].format(
            label=e(c.label) if c else "-",
            value=fmt_metric(c.measured.value(d.target.metric), d.target.metric) if c else "-",
        )
    if max_hours is None:
        budget = T["budget_none"]
    elif plan is None:
        budget = T["budget_given"].format(budget=hours(max_hours, T))
    else:
        key = "budget_fits" if plan.chosen.fits_budget else "budget_over"
        budget = T[key].format(hours=hours(plan.chosen.hours_per_run, T), budget=hours(max_hours, T))
    missing = unmeasured(d)
    if missing and d.learned:
        sep = "、" if lang == "ja" else ", "
        met += T["unmeasured_note"].format(labels=e(sep.join(r.label for r in missing)))
    nothing = nothing_to_learn(d, T, lang)
    return T["p_quality"].format(target=e(tname), source=source, met=met + nothing, budget=budget)


def point_memory(d: Decision, T: dict, hardware: str, plan: ProductionPlan | None) -> str | None:
    if d.best is None:
        return None
    label = e(d.best.label)
    if plan is not None:
        t = plan.target
        gpu = e(f"{t.gpus} × {t.gpu}")
        key = "fit_target" if plan.chosen.fits_memory else "fit_target_no"
        from ftopt.spec import load_hardware

        fit = T[key].format(
            gpu=gpu, need=fmt_bytes(plan.chosen.device_bytes_per_gpu), cap=fmt_bytes(load_hardware(t.gpu).memory_bytes)
        )
    else:
        fit = T["fit_poc"].format(hardware=e(hardware), need=fmt_bytes(d.best.measured.peak_bytes_per_gpu))
    tech = memory_techniques(d.best, T)
    what = (
        T["mem_needed"].format(techniques=e(T["tech_sep"].join(tech)), label=label, fit=fit)
        if tech
        else T["mem_none_needed"].format(label=label, fit=fit)
    )
    return T["p_memory"].format(what=what)


def _alternative(d: Decision, plan: ProductionPlan, T: dict, lang: str) -> str:
    """The next-cheapest other run that met the bar, never cheaper than the pick; one that is projected cheaper
    is named as such, with the reason it was not chosen."""
    t, a, chosen = plan.target, plan.alternative, plan.chosen
    if a is None:
        return T["alternative_none"]
    paren = "({})" if lang == "ja" else " ({})"  # a Japanese sentence takes full-width brackets
    cost = paren.format(e(money(a.cost_per_run, t.currency))) if a.cost_per_run is not None else ""
    fields = dict(label=e(a.label), gpuh=gpu_hours(a.gpu_hours_per_run), cost=cost)
    if a.gpu_hours_per_run >= chosen.gpu_hours_per_run:
        return T["alternative"].format(**fields)
    tied = any(r.combination == a.combination for r in d.tied)
    reason = T["cheaper_tied"].format(by=T[f"by_{d.tie_break or 'plan'}"]) if tied else T["cheaper_measured"]
    return T["alternative_cheaper"].format(**fields, reason=reason)


def point_scale(d: Decision, T: dict, lang: str, plan: ProductionPlan | None) -> str:
    if d.best is None:  # no run met the bar, or (projected) none of those that did fits the production GPUs
        labels = "、".join if lang == "ja" else ", ".join
        unfit = T["scale_unfit"].format(labels=e(labels(r.label for r in d.met))) if d.met else None
        return T["p_scale"].format(what=unfit or T["scale_none"])
    b = d.best
    if plan is None:
        production = T["production_missing"]
    else:
        t, p = plan.target, plan.chosen
        fields = dict(
            model=e(Path(t.model).name),
            gpus=t.gpus,
            gpu=e(t.gpu),
            tokens=f"{t.dataset_tokens:,}",
            epochs=plural(t.epochs, "epoch", lang),
            hours=hours(p.hours_per_run, T),
            gpuh=gpu_hours(p.gpu_hours_per_run),
            retrains=plural(t.retrains_per_year, "run", lang),
            cost=e(money(p.cost_per_run, t.currency)),
            cost_year=e(money(p.cost_per_year, t.currency)),
            gpuh_year=gpu_hours(p.gpu_hours_per_year),
        )
        production = T["production" if p.cost_per_run is not None else "production_nocost"].format(**fields)
        production += _sp(lang) + _alternative(d, plan, T, lang)
        production += _sp(lang) + T["quality_poc_only"].format(poc=e(Path(t.poc_model or t.model).name))
    what = T["scale_best"].format(
        label=e(b.label),
        time=dur(epoch_seconds(b), T),
        gpus=plural(b.gpus, "GPU", lang),
        gpuh=gpu_hours(gpu_seconds(b) / 3600),
        production=production,
    )
    return T["p_scale"].format(what=what + _sp(lang) + _tradeoff(d, T, lang))


def _sp(lang: str) -> str:
    return "" if lang == "ja" else " "


def _tradeoff(d: Decision, T: dict, lang: str) -> str:
    """Quality against the best-scoring run, named; time against the fastest run on the same GPU count, when the
    recommendation is slower beyond the noise of both."""
    b, out = d.best, []
    metric = e(metric_name(d.target.metric, lang))
    if d.top is not None:
        delta = abs(d.top.measured.value(d.target.metric) - b.measured.value(d.target.metric))
        out.append(T["tradeoff_quality"].format(delta=f"{delta:.3g}", metric=metric, label=e(d.top.label)))
    f = d.fastest if d.basis is Basis.MEASURED else None  # PoC seconds are not the basis on other hardware
    fb, bb = (d.band(f), d.band(b)) if f is not None else (None, None)
    if f is not None and f is not b and fb and bb and fb[2] < bb[0]:
        out.append(
            T["tradeoff_time"].format(
                pct=f"{bb[1] / fb[1] - 1:.0%}",
                label=e(f.label),
                met=T[standing(d.target, f)],
            )
        )
    sep = "、" if lang == "ja" else "; "
    return T["tradeoff"].format(tradeoff=sep.join(out)) if out else T["tradeoff_none"]


def spread(r: ResultRow) -> str:
    """The step time's interquartile range as +-% of its median ('-' without per-step times)."""
    s = r.measured.stats() if r.measured else None
    if s is None or not s.steps:
        return "-"
    return f"±{(s.high - s.low) / 2 / s.median:.0%}"


def results_table(
    rows: list[ResultRow], d: Decision, T: dict, lang: str, price: float | None, currency: str
) -> tuple[list[str], list[list[str]]]:
    """Every run with its GPU count and GPU-hours, the step-time spread; the target metric and whether it met it."""
    metric = d.target.metric
    show_metric = metric not in ("eval_loss", "perplexity")
    cols = [T[f"col_{k}"] for k in ("combination", "gpus", "status", "peak", "pred", "epoch", "spread", "gpuh")]
    cols += [T["col_loss"], T["col_ppl"]] + ([metric_name(metric, lang)] if show_metric else [])
    # token F1 beside exact match: it shows partial learning (some letters right) that exact match hides
    extra = [k for k in ("token_f1",) if k != metric and any(r.measured and k in r.measured.quality for r in rows)]
    cols += [metric_name(k, lang) for k in extra]
    cols += [T["col_met"]] + ([f"{T['col_cost']} ({currency})"] if price is not None else [])
    out = []
    for r in rows:
        m, pred = r.measured, r.predicted.best()
        num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        cells = [
            r.label + (f" ({T['recommended']})" if d.best is r else ""),
            str(r.gpus),
            T.get(f"status_{r.status.value}", r.status.value),
            fmt_bytes(m.peak_bytes_per_gpu) if m else "-",
            fmt_bytes(pred.peak_bytes_per_gpu) if pred else "-",
            dur(epoch_seconds(r), T) if m else "-",
            spread(r),
            gpu_hours(gpu_seconds(r) / 3600) if m else "-",
            num(m.eval_loss if m else None, ".3f"),
            num(m.perplexity if m else None, ".2f"),
        ]
        # a successful run without a figure reads "not measured", never a 0 or a miss
        unscored = T["not_measured"] if r.ok and m else "-"
        if show_metric:
            cells.append(fmt_metric(m.value(metric) if m else None, metric, unscored))
        cells += [fmt_metric(m.quality.get(k) if m else None, k, unscored) for k in extra]
        mark = standing(d.target, r)
        cells.append(T[mark] if mark != "-" else "-")
        if price is not None:
            cells.append(amount(gpu_seconds(r) / 3600 * price, currency) if m else "-")
        out.append(cells)
    return cols, out


def padded_rows_note(rows: list[ResultRow], T: dict) -> str | None:
    """Why a run padded to its longest row can peak below its prediction, when the results hold one."""
    return (
        T["padded_rows"] if any(r.run is not None and r.run.setup.batching is Batching.PADDED for r in rows) else None
    )


def production_table(plan: ProductionPlan, T: dict, lang: str) -> tuple[str, list[str], list[list[str]]]:
    t = plan.target
    intro = T["production_assume"].format(
        model=e(Path(t.model).name),
        gpus=t.gpus,
        gpu=e(t.gpu),
        precision=plan.precision.value,
        seq_len=t.seq_len,
        micro_batch=t.micro_batch,
        tokens=f"{t.dataset_tokens:,}",
        epochs=plural(t.epochs, "epoch", lang),
        retrains=plural(t.retrains_per_year, "run", lang),
    )
    if not t.shape_given:
        intro += _sp(lang) + T["shape_default"].format(gpu=e(t.gpu))
    intro += _sp(lang) + time_constants_sentence(plan.time_constants, t.gpu, T, lang)
    cols = [
        T["col_combination"],
        T["col_gpus"],
        T["col_fits"],
        T["col_hours"],
        T["col_gpuh_run"],
        T["col_gpuh_year"],
        f"{T['col_cost_run']} ({t.currency})",
        f"{T['col_cost_year']} ({t.currency})",
        T["col_budget"],
    ]
    rows = []
    for p, tag in ((plan.chosen, T["recommended"]), (plan.alternative, None)):
        if p is None:
            continue
        yn = lambda v: "-" if v is None else (T["yes"] if v else T["no"])
        rows.append(
            [
                p.label + (f" ({tag})" if tag else ""),
                str(p.gpus),
                yn(p.fits_memory),
                hours(p.hours_per_run, T),
                gpu_hours(p.gpu_hours_per_run),
                gpu_hours(p.gpu_hours_per_year),
                amount(p.cost_per_run, t.currency),
                amount(p.cost_per_year, t.currency),
                yn(p.fits_budget),
            ]
        )
    return intro, cols, rows


def roadmap_table(plan: ProductionPlan, T: dict, lang: str) -> tuple[list[str], list[list[str]]]:
    t = plan.target
    cols = [
        T["col_stage"],
        T["col_basis"],
        T["col_gpuh_stage"],
        f"{T['col_cost_stage']} ({t.currency})",
        T["col_decides"],
        T["col_stop"],
    ]
    fill = dict(
        pct=f"{PILOT_DATA_FRACTION:.0%}",
        x=f"{PILOT_TIME_OVERRUN_STOP:g}",
        retrains=plural(t.retrains_per_year, "run", lang),
    )
    rows = []
    for s in plan.stages:
        rows.append(
            [
                T[f"stage_{s.name}"],
                T["measured" if s.measured else "predicted"],
                gpu_hours(s.gpu_hours),
                amount(s.cost, t.currency),
                T[f"decides_{s.name}"].format(**fill),
                T[f"stop_{s.name}"].format(**fill),
            ]
        )
    return cols, rows


def time_constants_sentence(tc, gpu: str, T: dict, lang: str) -> str:
    """Where the projection's time constants (ftopt.spec.time_constants) came from: the default, which counts no
    per-step overhead, or the calibration with its runs, results files and date."""
    cal = tc.calibration
    sep = "、" if lang == "ja" else ", "
    figures = T["tc_figures"].format(
        mfu=f"{tc.mfu:.1%}",
        kernel=f"{tc.seconds_per_kernel * 1e6:.3g}",
        fixed=f"{tc.fixed_step_seconds * 1e3:.3g}",
        zero="".join(f"{sep}ZeRO-{z} +{v * 1e3:.3g} ms" for z, v in sorted(tc.zero_step_seconds.items())),
    )
    if cal is None:
        return T["uncalibrated"].format(gpu=e(gpu), figures=figures)
    bound = T["tc_at_bound"].format(n=len(cal.at_bound)) if cal.at_bound else ""
    return (
        T["calibrated_with"].format(
            gpu=e(gpu),
            figures=figures,
            runs=plural(cal.runs, "run", lang),
            sources=sep.join(e(s) for s in cal.sources),
            date=e(cal.date),
        )
        + bound
    )
