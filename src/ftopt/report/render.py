"""`ftopt report`: one self-contained HTML file (charts embedded), a Markdown version and the PNG charts, from a
bench results file. It opens with the three points a decision-maker needs (assumptions, techniques, the measured
most cost-efficient combination and what it trades away). Every user-supplied string is escaped."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from ftopt.errors import FtoptError
from ftopt.io import atomic_write_text
from ftopt.report.text import LANGS, TEXT
from ftopt.units import fmt_bytes, fmt_seconds

CATEGORIES = ("weights", "master_weights", "optimizer_states", "gradients", "activations", "logits_loss",
              "engine_buffers", "temporaries")
QUALITY_TOLERANCE = 0.05  # default quality target: eval loss within 5% of the best run


@dataclass
class Decision:
    best: dict | None
    quality_target: float | None
    tradeoff: list[str]
    failed: list[str]


def _epoch_seconds(r: dict) -> float:
    return r["measured"].get("epoch_seconds") or float("inf")


def _gpu_seconds(r: dict) -> float:
    return _epoch_seconds(r) * r.get("gpus", 1)


def decide(rows: list[dict], quality_target_loss: float | None = None) -> Decision:
    """Among successful runs within the quality target, the cheapest per epoch (GPU-seconds x price)."""
    ok = [r for r in rows if r["status"] == "ok" and r["measured"].get("eval_loss") is not None]
    failed = [f"{r['label']} ({r['status']})" for r in rows if r["status"] != "ok"]
    if not ok:
        return Decision(None, quality_target_loss, [], failed)
    best_loss = min(r["measured"]["eval_loss"] for r in ok)
    target = quality_target_loss if quality_target_loss is not None else best_loss * (1 + QUALITY_TOLERANCE)
    eligible = [r for r in ok if r["measured"]["eval_loss"] <= target] or ok
    best = min(eligible, key=_gpu_seconds)
    trade = []
    dq = best["measured"]["eval_loss"] - best_loss
    if dq > 1e-9:
        trade.append(("quality", f"{dq:.3f}"))
    fastest = min(_epoch_seconds(r) for r in ok)
    if _epoch_seconds(best) > fastest * 1.02:
        trade.append(("time", f"{_epoch_seconds(best) / fastest - 1:.0%}"))
    return Decision(best, target, trade, failed)


# ---- charts (ASCII labels: the HTML captions carry the language) ------------------------------------------------------
def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pred(r: dict) -> dict | None:
    p = r.get("predicted", {})
    for m in ("traced", "analytic"):
        if m in p and "breakdown" in p[m]:
            return p[m]
    return None


def charts(rows: list[dict], capacity_bytes: int | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    MiB = 2**20
    out: dict[str, bytes] = {}
    labels = [r["label"] for r in rows]
    # 1. predicted breakdown, measured peak marked
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for cat in CATEGORIES:
        vals = [(_pred(r) or {}).get("breakdown", {}).get(cat, 0) / MiB for r in rows]
        if any(vals):
            ax.barh(labels, vals, left=left, label=cat.replace("_", " "))
            left = [a + b for a, b in zip(left, vals)]
    for i, r in enumerate(rows):
        if r["status"] == "ok":
            ax.plot(r["measured"]["peak_bytes_per_gpu"] / MiB, i, "k|", markersize=18, markeredgewidth=3)
        else:
            ax.text(left[i], i, f"  {r['status']}", va="center", color="red")
    ax.set_xlabel("MiB per GPU")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never covers a bar
    out["memory.png"] = _fig_png(fig)
    ok = [r for r in rows if r["status"] == "ok"]
    # 2. time per epoch vs peak memory, Pareto front, GPU memory line
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if ok:
        xs = [r["measured"]["peak_bytes_per_gpu"] / MiB for r in ok]
        ys = [_epoch_seconds(r) for r in ok]
        ax.scatter(xs, ys)
        for x, y, r in zip(xs, ys, ok):
            ax.annotate(r["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best_y = [], float("inf")
        for x, y in sorted(zip(xs, ys)):
            if y < best_y:
                front.append((x, y))
                best_y = y
        ax.plot([p[0] for p in front], [p[1] for p in front], "g--", label="Pareto front")
        if capacity_bytes and capacity_bytes / MiB < 3 * max(xs):
            ax.axvline(capacity_bytes / MiB, color="red", label="GPU memory")
        ax.legend(fontsize=8)
    ax.set_xlabel("measured peak MiB per GPU")
    ax.set_ylabel("seconds per epoch")
    out["pareto.png"] = _fig_png(fig)
    # 3. quality
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.45 * max(1, len(ok)) + 1.5))
    if ok:
        a1.barh([r["label"] for r in ok], [r["measured"]["eval_loss"] for r in ok])
        a1.set_xlabel("eval loss (lower is better)")
        a2.barh([r["label"] for r in ok], [r["measured"].get("exact_match") or 0 for r in ok], color="tab:green")
        a2.set_xlabel("exact match (higher is better)")
        a2.set_xlim(0, 1)
        a2.set_yticklabels([])
    out["quality.png"] = _fig_png(fig)
    # 4. parity
    fig, ax = plt.subplots(figsize=(5, 5))
    hi = 1.0
    for method, mark in (("analytic", "o"), ("traced", "s")):
        pts = [(r["measured"]["peak_bytes_per_gpu"] / MiB, r["predicted"][method]["peak_bytes_per_gpu"] / MiB)
               for r in ok if "peak_bytes_per_gpu" in r.get("predicted", {}).get(method, {})]
        if pts:
            ax.scatter(*zip(*pts), marker=mark, label=method)
            hi = max(hi, *(max(p) for p in pts))
    ax.plot([0, hi * 1.05], [0, hi * 1.05], "k:", label="exact")
    ax.set_xlabel("measured peak MiB")
    ax.set_ylabel("predicted peak MiB")
    ax.legend(fontsize=8)
    out["parity.png"] = _fig_png(fig)
    return out


# ---- documents ---------------------------------------------------------------------------------------------------------
def _techniques(c: dict) -> list[str]:
    t = []
    if c["lora_r"]:
        t.append(f"LoRA (rank {c['lora_r']})")
    if c["gc"]:
        t.append("gradient checkpointing")
    if c["zero"]:
        t.append(f"DeepSpeed ZeRO-{c['zero']}")
    if c["offload"] != "none":
        t.append(f"CPU offload ({c['offload']})")
    t.append({"flash": "FlashAttention", "sdpa": "PyTorch SDPA attention", "eager": "eager attention"}[c["attn"]])
    return t


def build_report(rows: list[dict], out_dir: str | Path, *, lang: str = "en", title: str | None = None,
                 hardware: str = "cpu", capacity_bytes: int | None = None, cost_per_gpu_hour: float | None = None,
                 max_hours: float | None = None, quality_target_loss: float | None = None,
                 calibration: dict | None = None) -> dict[str, Path]:
    if lang not in LANGS:
        raise FtoptError(f"--lang must be one of {', '.join(LANGS)}, got '{lang}'.")
    T = TEXT[lang]
    e = html.escape
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = decide(rows, quality_target_loss)
    pngs = charts(rows, capacity_bytes)
    for name, data in pngs.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / name)

    budget = f"{max_hours:g} h" if max_hours else T["no_budget"]
    quality = (f"eval loss ≤ {d.quality_target:.3f}" if d.quality_target is not None else T["quality_default"])
    points: list[str] = [T["assumed"].format(budget=e(budget), quality=e(quality))]
    if d.best:
        c = d.best["combination"]
        points.append(T["techniques"].format(hardware=e(hardware), techniques=e(", ".join(_techniques(c)))) + " " +
                      T["techniques_why"].format(why=T["why_fits"]))
        m = d.best["measured"]
        cost = (f"{_gpu_seconds(d.best) / 3600 * cost_per_gpu_hour:,.4f}" if cost_per_gpu_hour is not None else None)
        key = "best" if cost else "best_nocost"
        points.append(T[key].format(label=e(d.best["label"]), time=e(fmt_seconds(_epoch_seconds(d.best))),
                                    memory=e(fmt_bytes(m["peak_bytes_per_gpu"])), cost=e(cost or "")))
        trade = [T["tradeoff_quality"].format(delta=v) if k == "quality" else T["tradeoff_time"].format(pct=v)
                 for k, v in d.tradeoff] or [T["tradeoff_none"]]
        points.append(T["tradeoff"].format(tradeoff=e("; ".join(trade))))
    else:
        points.append(T["no_runs"].format(failed=e(", ".join(d.failed) or "-")))
    if calibration and calibration.get("holdout_runs"):
        pct = lambda v: f"{v:.1%}" if v is not None else "n/a"
        points.append(T["calibration"].format(fit=calibration["fit_runs"], med=pct(calibration["holdout_median_abs_error"]),
                                              worst=pct(calibration["holdout_worst_abs_error"]),
                                              rho=f"{calibration['spearman_rho']:.2f}" if calibration.get("spearman_rho") is not None else "n/a",
                                              pairs=f"{calibration.get('pairs_ordered', 0)}/{calibration.get('pairs_compared', 0)}"))

    cols = [T["col_combination"], T["col_status"], T["col_peak"], T["col_pred"], T["col_epoch"], T["col_loss"], T["col_em"]]
    if cost_per_gpu_hour is not None:
        cols.append(T["col_cost"])
    table = []
    for r in rows:
        m = r.get("measured", {})
        pred = _pred(r)
        cells = [r["label"], T.get(f"status_{r['status']}", r["status"]),
                 fmt_bytes(m["peak_bytes_per_gpu"]) if m else "-",
                 fmt_bytes(pred["peak_bytes_per_gpu"]) if pred else "-",
                 fmt_seconds(_epoch_seconds(r)) if m else "-",
                 f"{m['eval_loss']:.3f}" if m.get("eval_loss") is not None else "-",
                 f"{m['exact_match']:.0%}" if m.get("exact_match") is not None else "-"]
        if cost_per_gpu_hour is not None:
            cells.append(f"{_gpu_seconds(r) / 3600 * cost_per_gpu_hour:,.4f}" if m else "-")
        table.append(cells)

    heading = title or T["title"]
    captions = {"memory.png": T["chart_memory"], "pareto.png": T["chart_pareto"], "quality.png": T["chart_quality"],
                "parity.png": T["chart_parity"]}
    # HTML: self-contained
    h = [f"<!DOCTYPE html><html lang='{lang}'><head><meta charset='utf-8'><title>{e(heading)}</title>",
         "<style>body{font-family:system-ui,'Noto Sans CJK JP',sans-serif;max-width:1000px;margin:2em auto;"
         "padding:0 1em;color:#222}table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;"
         "padding:4px 8px;text-align:right}td:first-child{text-align:left}.points li{margin:.4em 0}"
         "img{max-width:100%;border:1px solid #eee}</style></head><body>",
         f"<h1>{e(heading)}</h1><h2>{e(T['summary'])}</h2><ol class='points'>"]
    h += [f"<li>{p}</li>" for p in points]
    h += [f"</ol><h2>{e(T['results'])}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"]
    h += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in table]
    h += [f"</table><h2>{e(T['charts'])}</h2>"]
    for name, data in pngs.items():
        h.append(f"<figure><img alt='{e(captions[name])}' src='data:image/png;base64,"
                 f"{base64.b64encode(data).decode()}'><figcaption>{e(captions[name])}</figcaption></figure>")
    h.append(f"<p><small>{e(T['footer'])}</small></p></body></html>")
    # Markdown
    import re

    strip = lambda s: re.sub(r"</?b>", "**", s)
    md = [f"# {heading}", "", f"## {T['summary']}", ""] + [f"{i}. {strip(p)}" for i, p in enumerate(points, 1)]
    md += ["", f"## {T['results']}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(e(str(c)).replace("|", "\\|") for c in row) + " |" for row in table]
    md += ["", f"## {T['charts']}", ""] + [f"![{captions[n]}]({n})" for n in pngs] + ["", T["footer"], ""]
    paths = {"html": out / f"report.{lang}.html", "markdown": out / f"report.{lang}.md"}
    atomic_write_text(paths["html"], "\n".join(h))
    atomic_write_text(paths["markdown"], "\n".join(md))
    return paths
