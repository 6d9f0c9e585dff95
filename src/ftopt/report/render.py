"""`ftopt report`: one self-contained HTML file (charts embedded), a Markdown version and the PNG charts, from a
bench results file. It opens with the decision in three points that follow the method: the quality bar and time
budget, the memory techniques, and the way from the PoC to production with its cost; then the measured table, the
production projection and the staged roadmap. Every user-supplied string is escaped."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ftopt.report import sections as S
from ftopt.report.charts import charts
from ftopt.report.decision import Decision, decide
from ftopt.report.projection import (
    ProductionPlan,
    ProductionTarget,
    Projection,
    candidate_costs,
    plan_choice,
    plan_production,
    poc_differences,
    projections,
    target_tie,
)
from ftopt.report.text import LANGS, TEXT
from ftopt.report.verdict import point_verified
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import ResultRow, parse_rows
from ftopt.spec import DEFAULT_CURRENCY, CurrencyCode
from ftopt.spec.errors import FtoptError
from ftopt.spec.io import atomic_write_text

__all__ = ["ReportSettings", "build_report", "decide"]
CSS = (
    "body{font-family:system-ui,'Noto Sans CJK JP','IPAexGothic',sans-serif;max-width:1100px;margin:2em auto;"
    "padding:0 1em;color:#222}table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
    "td:first-child,th:first-child{text-align:left}.roadmap td:nth-child(n+5){white-space:normal;text-align:left}"
    ".points li{margin:.6em 0}img{max-width:100%;border:1px solid #eee}"
)


class ReportSettings(BaseModel):
    """What the report assumes beyond the results: hardware, money, the quality bar and the production target."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    title: str | None = None
    hardware: str = "cpu"
    capacity_bytes: int | None = None
    cost_per_gpu_hour: float | None = Field(None, ge=0)
    currency: CurrencyCode = DEFAULT_CURRENCY
    max_hours: float | None = Field(None, gt=0)
    quality_target: QualityTarget | None = None
    quality_source: str = Field("src_given", description="text key saying where the target came from")
    production: ProductionTarget | None = None
    calibration: dict | None = None


def _decide(rows: list[ResultRow], s: ReportSettings) -> tuple[Decision, dict[str, Projection]]:
    """The decision, by projected cost on the target when the PoC ran another GPU, model or GPU count
    (ftopt.report.decision), with the target's time-model error as the tie band."""
    if s.production is None:
        return decide(rows, s.quality_target), {}
    projs = projections(rows, s.production)
    differs = poc_differences(rows, s.production, s.hardware)
    costs = candidate_costs(projs, s.production) if differs else None
    d = decide(rows, s.quality_target, costs, plan_choice(projs, s.production), target_tie(s.production))
    d.projected_because = differs
    return d, projs


def _production(d: Decision, s: ReportSettings, projs: dict[str, Projection]) -> ProductionPlan | None:
    if s.production is None or d.best is None:
        return None
    poc_gpu_hours = sum((r.measured.train_seconds or 0) * r.gpus for r in d.ok) / 3600
    same_hw = s.hardware == s.production.gpu
    price = s.production.cost_per_gpu_hour
    return plan_production(
        s.production,
        projs[d.best.key],
        [projs[r.key] for r in d.met if r is not d.best],
        poc_gpu_hours,
        poc_cost=poc_gpu_hours * price if (same_hw and price is not None) else None,
    )


def _points(d: Decision, s: ReportSettings, plan, T: dict, lang: str) -> list[str]:
    if not d.ok:
        return [T["no_runs"].format(failed=html.escape(", ".join(d.failed) or "-"))]
    pts = [
        S.point_quality(d, T, lang, s.quality_source, plan, s.max_hours),
        S.point_memory(d, T, s.hardware, plan),
        S.point_scale(d, T, lang, plan),
        point_verified(d, T, lang, s.hardware, s.production.gpu if s.production else None),
    ]
    cal = s.calibration
    if cal and cal.get("holdout_runs"):
        pts.append(_calibration_point(cal, T))
    return [p for p in pts if p]


def _calibration_point(cal: dict, T: dict) -> str:
    """The held-out check of the time model's fit. The rank correlation and the ordered pairs are left out when
    there is nothing to rank (two runs, or no two combinations more than 10% apart), as the bench console does,
    rather than read 'n/a' and '0/0 pairs ... are ordered right'."""
    pct = lambda v: f"{v:.1%}" if v is not None else "n/a"
    rho, compared = cal.get("spearman_rho"), cal.get("pairs_compared", 0)
    return T["calibration"].format(
        fit=cal["fit_runs"],
        med=pct(cal["holdout_median_abs_error"]),
        worst=pct(cal["holdout_worst_abs_error"]),
        rho=T["calibration_rho"].format(rho=f"{rho:.2f}") if rho is not None else "",
        pairs=T["calibration_pairs"].format(ordered=cal.get("pairs_ordered", 0), compared=compared) if compared else "",
    )


def _html_table(cols: list[str], rows: list[list[str]], css_class: str = "") -> str:
    e = html.escape
    return (
        f"<table class='{css_class}'><tr>"
        + "".join(f"<th>{e(c)}</th>" for c in cols)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        + "</table>"
    )


def md_text(text: str) -> str:
    """Markdown from the report's HTML-escaped sentences: <b> as **, entities back to characters, and the
    characters Markdown would read as HTML or an entity backslash-escaped (CommonMark escapes any ASCII
    punctuation), so a user's '<script>' shows as text and no '&lt;' reaches the reader."""
    text = html.unescape(re.sub(r"</?b>", "**", text))
    return re.sub(r"([<>&])", r"\\\1", text)


def _md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda c: md_text(html.escape(str(c))).replace("|", "\\|")
    return ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(cell(c) for c in row) + " |" for row in rows
    ]


def build_report(
    rows: list[ResultRow] | list[dict], out_dir: str | Path, *, lang: str = "en", **settings
) -> dict[str, Path]:
    """Write report.<lang>.html and .md and the PNG charts (<chart>.<lang>.png) into out_dir; returns the two
    document paths."""
    if lang not in LANGS:
        raise FtoptError(f"--lang must be one of {', '.join(LANGS)}, got '{lang}'.")
    rows = parse_rows(rows)
    s = ReportSettings(**settings)
    T, e = TEXT[lang], html.escape
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d, projs = _decide(rows, s)
    plan = _production(d, s, projs)
    pngs = charts(rows, d, s.capacity_bytes, lang)
    for name, data in pngs.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / name)
    points = _points(d, s, plan, T, lang)
    price = (
        s.cost_per_gpu_hour
        if s.cost_per_gpu_hour is not None
        else (s.production.cost_per_gpu_hour if s.production else None)
    )
    tables = [("", T["results"], S.padded_rows_note(rows, T), *S.results_table(rows, d, T, lang, price, s.currency))]
    if plan is not None:
        intro, cols, prow = S.production_table(plan, T, lang)
        tables.append(("", T["production_h"], intro, cols, prow))
        tables.append(("roadmap", T["roadmap_h"], None, *S.roadmap_table(plan, T, lang)))
    heading = s.title or T["title"]
    captions = {f"{k}.{lang}.png": T[f"chart_{k}"] for k in ("memory", "pareto", "quality", "parity")}
    h = [
        f"<!DOCTYPE html><html lang='{lang}'><head><meta charset='utf-8'><title>{e(heading)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(heading)}</h1><h2>{e(T['summary'])}</h2><ol class='points'>",
    ]
    h += [f"<li>{p}</li>" for p in points] + ["</ol>"]
    md = [f"# {heading}", "", f"## {T['summary']}", ""]
    md += [f"{i}. {md_text(p)}" for i, p in enumerate(points, 1)]
    for css_class, name, intro, cols, trows in tables:
        h += [f"<h2>{e(name)}</h2>"] + ([f"<p>{intro}</p>"] if intro else []) + [_html_table(cols, trows, css_class)]
        md += ["", f"## {name}", ""] + ([md_text(intro), ""] if intro else []) + _md_table(cols, trows)
    h.append(f"<h2>{e(T['charts'])}</h2>")
    for name, data in pngs.items():
        h.append(
            f"<figure><img alt='{e(captions[name])}' src='data:image/png;base64,"
            f"{base64.b64encode(data).decode()}'><figcaption>{e(captions[name])}</figcaption></figure>"
        )
    h.append(f"<p><small>{e(T['footer'])}</small></p></body></html>")
    md += ["", f"## {T['charts']}", ""] + [f"![{captions[n]}]({n})" for n in pngs] + ["", T["footer"], ""]
    md[0] = f"# {md_text(e(heading))}"
    paths = {"html": out / f"report.{lang}.html", "markdown": out / f"report.{lang}.md"}
    atomic_write_text(paths["html"], "\n".join(h))
    atomic_write_text(paths["markdown"], "\n".join(md))
    return paths
