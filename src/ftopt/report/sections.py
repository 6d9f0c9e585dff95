"""The report's content, language-filled but not yet laid out: the three decision points, the results table,
the production projection and the roadmap. Every value placed into a sentence is escaped here (user strings:
labels, hardware names, currency); the sentences' own markup is <b> only."""

from __future__ import annotations

import html
from pathlib import Path

from ftopt.report.decision import Decision, epoch_seconds, gpu_seconds, memory_techniques
from ftopt.report.projection import PILOT_DATA_FRACTION, PILOT_TIME_OVERRUN_STOP, ProductionPlan, ProductionTarget
from ftopt.report.text import metric_name
from ftopt.units import fmt_bytes, fmt_seconds

e = html.escape


def money(v: float | None, currency: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f} {currency}" if v >= 1 else f"{v:.3g} {currency}"


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


def fmt_metric(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
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
            label=e(c["label"]) if c else "-",
            value=fmt_metric(d.target.value_of(c["measured"]), d.target.metric) if c else "-",
        )
    if max_hours is None:
        budget = T["budget_none"]
    elif plan is None:
        budget = T["budget_given"].format(budget=hours(max_hours, T))
    else:
        key = "budget_fits" if plan.chosen.fits_budget else "budget_over"
        budget = T[key].format(hours=hours(plan.chosen.hours_per_run, T), budget=hours(max_hours, T))
    return T["p_quality"].format(target=e(tname), source=source, met=met, budget=budget)


def point_memory(d: Decision, T: dict, hardware: str, plan: ProductionPlan | None) -> str | None:
    if d.best is None:
        return None
    c, label = d.best["combination"], e(d.best["label"])
    if plan is not None:
        t = plan.target
        gpu = e(f"{t.gpus} × {t.gpu}")
        key = "fit_target" if plan.chosen.fits_memory else "fit_target_no"
        from ftopt.spec import load_hardware

        fit = T[key].format(
            gpu=gpu, need=fmt_bytes(plan.chosen.device_bytes_per_gpu), cap=fmt_bytes(load_hardware(t.gpu).memory_bytes)
        )
    else:
        fit = T["fit_poc"].format(hardware=e(hardware), need=fmt_bytes(d.best["measured"]["peak_bytes_per_gpu"]))
    tech = memory_techniques(c, T)
    what = (
        T["mem_needed"].format(techniques=e(T["tech_sep"].join(tech)), label=label, fit=fit)
        if tech
        else T["mem_none_needed"].format(label=label, fit=fit)
    )
    return T["p_memory"].format(what=what)


def point_scale(d: Decision, T: dict, lang: str, plan: ProductionPlan | None) -> str:
    if d.best is None:
        return T["p_scale"].format(what=T["scale_none"])
    b = d.best
    if plan is None:
        production = T["production_missing"]
    else:
        t, p = plan.target, plan.chosen
        fields = dict(
            gpus=t.gpus,
            gpu=e(t.gpu),
            tokens=f"{t.dataset_tokens:,}",
            epochs=f"{t.epochs:g}",
            hours=hours(p.hours_per_run, T),
            gpuh=gpu_hours(p.gpu_hours_per_run),
            retrains=f"{t.retrains_per_year:g}",
            cost=e(money(p.cost_per_run, t.currency)),
            cost_year=e(money(p.cost_per_year, t.currency)),
            gpuh_year=gpu_hours(p.gpu_hours_per_year),
        )
        production = T["production" if p.cost_per_run is not None else "production_nocost"].format(**fields)
        a = plan.alternative
        alt_cost = f" ({e(money(a.cost_per_run, t.currency))})" if a and a.cost_per_run is not None else ""
        alt = (
            T["alternative"].format(label=e(a.label), gpuh=gpu_hours(a.gpu_hours_per_run), cost=alt_cost)
            if a
            else T["alternative_none"]
        )
        production += ("" if lang == "ja" else " ") + alt
    trade = [
        T["tradeoff_quality"].format(delta=v, metric=e(metric_name(d.target.metric, lang)))
        if k == "quality"
        else T["tradeoff_time"].format(
            pct=v, label=e(d.fastest["label"]), met=T["met"] if d.target.met(d.fastest["measured"]) else T["not_met"]
        )
        for k, v in d.tradeoff
    ]
    sep = "、" if lang == "ja" else "; "
    trade_s = T["tradeoff"].format(tradeoff=sep.join(trade)) if trade else T["tradeoff_none"]
    what = T["scale_best"].format(
        label=e(b["label"]),
        time=dur(epoch_seconds(b), T),
        gpus=b.get("gpus", 1),
        gpuh=gpu_hours(gpu_seconds(b) / 3600),
        production=production,
    )
    return T["p_scale"].format(what=what + (" " if lang == "en" else "") + trade_s)


def results_table(
    rows: list[dict], d: Decision, T: dict, lang: str, price: float | None, currency: str
) -> tuple[list[str], list[list[str]]]:
    """Every run with its GPU count and GPU-hours; the target metric and whether it met the bar."""
    metric = d.target.metric
    show_metric = metric not in ("eval_loss", "perplexity")
    cols = [
        T["col_combination"],
        T["col_gpus"],
        T["col_status"],
        T["col_peak"],
        T["col_pred"],
        T["col_epoch"],
        T["col_gpuh"],
        T["col_loss"],
        T["col_ppl"],
    ]
    cols += [metric_name(metric, lang)] if show_metric else []
    # token F1 beside exact match: it shows partial learning (some letters right) that exact match hides
    extra = [
        k for k in ("token_f1",) if k != metric and any(k in (r.get("measured") or {}).get("quality", {}) for r in rows)
    ]
    cols += [metric_name(k, lang) for k in extra]
    cols += [T["col_met"]] + ([f"{T['col_cost']} ({currency})"] if price is not None else [])
    out = []
    for r in rows:
        m = r.get("measured", {})
        pred = (r.get("predicted") or {}).get("traced") or (r.get("predicted") or {}).get("analytic") or {}
        label = r["label"] + (f" ({T['recommended']})" if d.best is r else "")
        cells = [
            label,
            str(r.get("gpus", 1)),
            T.get(f"status_{r['status']}", r["status"]),
            fmt_bytes(m["peak_bytes_per_gpu"]) if m else "-",
            fmt_bytes(pred["peak_bytes_per_gpu"]) if "peak_bytes_per_gpu" in pred else "-",
            dur(epoch_seconds(r), T) if m else "-",
            gpu_hours(gpu_seconds(r) / 3600) if m else "-",
            f"{m['eval_loss']:.3f}" if m.get("eval_loss") is not None else "-",
            f"{m['perplexity']:.2f}" if m.get("perplexity") is not None else "-",
        ]
        if show_metric:
            cells.append(fmt_metric(d.target.value_of(m), metric) if m else "-")
        cells += [fmt_metric((m.get("quality") or {}).get(k), k) for k in extra]
        cells.append((T["met"] if d.target.met(m) else T["not_met"]) if m else "-")
        if price is not None:
            cells.append(f"{gpu_seconds(r) / 3600 * price:.3g}" if m else "-")
        out.append(cells)
    return cols, out


def padded_rows_note(rows: list[dict], T: dict) -> str | None:
    """Why an unpacked run's measured peak can sit below its prediction, when the results hold one (rows written
    before packing moved to the setup keep it under `data`)."""

    def unpacked(run: dict) -> bool:  # False where the row does not say
        packing = (run.get("setup") or {}).get("packing", (run.get("data") or {}).get("packing"))
        return packing is False

    return T["padded_rows"] if any(r.get("run") and unpacked(r["run"]) for r in rows) else None


def production_table(plan: ProductionPlan, T: dict) -> tuple[str, list[str], list[list[str]]]:
    t = plan.target
    intro = T["production_assume"].format(
        model=e(Path(t.model).name),
        gpus=t.gpus,
        gpu=e(t.gpu),
        precision=plan.precision.value,
        seq_len=t.seq_len,
        micro_batch=t.micro_batch,
        tokens=f"{t.dataset_tokens:,}",
        epochs=f"{t.epochs:g}",
        retrains=f"{t.retrains_per_year:g}",
    )
    if not plan.calibrated:
        intro += ("" if intro.endswith("。") else " ") + T["uncalibrated"].format(gpu=e(t.gpu))
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
                money(p.cost_per_run, "").strip(),
                money(p.cost_per_year, "").strip(),
                yn(p.fits_budget),
            ]
        )
    return intro, cols, rows


def roadmap_table(plan: ProductionPlan, T: dict) -> tuple[list[str], list[list[str]]]:
    t = plan.target
    cols = [
        T["col_stage"],
        T["col_basis"],
        T["col_gpuh_stage"],
        f"{T['col_cost_stage']} ({t.currency})",
        T["col_decides"],
        T["col_stop"],
    ]
    fill = dict(pct=f"{PILOT_DATA_FRACTION:.0%}", x=f"{PILOT_TIME_OVERRUN_STOP:g}", retrains=f"{t.retrains_per_year:g}")
    rows = []
    for s in plan.stages:
        rows.append(
            [
                T[f"stage_{s.name}"],
                T["measured" if s.measured else "predicted"],
                gpu_hours(s.gpu_hours),
                money(s.cost, "").strip(),
                T[f"decides_{s.name}"].format(**fill),
                T[f"stop_{s.name}"].format(**fill),
            ]
        )
    return cols, rows


def production_target_for(rows: list[dict], **given) -> ProductionTarget:
    """The target with the PoC's model and sequence shape unless given (from the results' run specification)."""
    run = next((r["run"] for r in rows if r.get("run")), None)
    if run is not None:
        poc = {
            "model": run["model"]["ref"],
            "seq_len": run["setup"]["seq_len"],
            "micro_batch": run["setup"]["micro_batch"],
        }
    else:  # results written before the run specification: the sweep's flags
        sweep = next((r.get("sweep") for r in rows if r.get("sweep")), {}) or {}
        args = sweep.get("model_args", [])
        poc = {
            "model": next(
                (args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--model", "--random-init")), "tiny-llama"
            ),
            "seq_len": sweep.get("seq_len", 2048),
            "micro_batch": sweep.get("micro_batch", 1),
        }
    return ProductionTarget(**{**poc, **{k: v for k, v in given.items() if v is not None}})
