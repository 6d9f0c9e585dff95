"""The report's charts, drawn in the report's language (Japanese with the IPAex Gothic font that
matplotlib-fontja ships). Colours are fixed per set of memory techniques (quantized base and optimizer included)
and markers per attention kind, so the same combination looks the same in every report; the recommended run is
starred on the Pareto chart and point labels are placed where they overlap nothing."""

from __future__ import annotations

import io

from ftopt.report.decision import Decision, gpu_seconds
from ftopt.report.text import TEXT, metric_name
from ftopt.results.rows import ResultRow
from ftopt.spec import Combination, Fsdp, Offload, Optim, Quant

CATEGORIES = (
    "weights",
    "master_weights",
    "optimizer_states",
    "gradients",
    "activations",
    "logits_loss",
    "engine_buffers",
    "temporaries",
)
MiB = 2**20
FONTS = {"en": ["DejaVu Sans"], "ja": ["IPAexGothic", "DejaVu Sans"]}  # IPAexGothic: matplotlib-fontja's font
MARKERS = {"sdpa": "o", "flash": "s", "eager": "^"}
# label offsets tried in turn (points from the marker): right, above, below, left, further out
OFFSETS = [(6, 4), (6, -12), (-6, 6), (-6, -12), (6, 14), (6, -22), (-6, 16), (-6, -24), (10, 26), (10, -34)]


def register_fonts() -> None:
    """Make the bundled Japanese font known to matplotlib without changing the global default family."""
    from matplotlib import font_manager
    from matplotlib_fontja import get_font_ttf_path  # importing it also registers the font (it sets rc too)

    font_manager.fontManager.addfont(get_font_ttf_path())


def colour(c: Combination) -> tuple:
    """A fixed colour per technique family, the light shade for gradient checkpointing.

    16-bit base and 32-bit AdamW (the study's families): tab20 pairs, the hue from (LoRA?, ZeRO stage), hues 0-7.
    A quantized base with AdamW: tab20 hue 8 for 4-bit QLoRA (NF4/FP4), 9 for an int8 base (either under ZeRO 1-2).
    A bitsandbytes optimizer (8-bit or paged; Trainer alone, so no ZeRO): a tab20b quartet per base (full, LoRA,
    QLoRA, int8), shade +2 when paged, +1 with GC.
    FSDP2 (16-bit base and AdamW only, Combination's rules): a tab20c quartet per (LoRA?, full or grad-op), shade
    +2 with parameter offload, +1 with GC.
    """
    import matplotlib

    quant, optim = c.quant, c.optim
    base = 2 if quant.four_bit else 3 if quant is Quant.INT8 else 1 if c.lora_r else 0
    gc = 1 if c.gc else 0
    if c.uses_fsdp:
        quartet = 2 * base + (c.fsdp is Fsdp.GRAD_OP)
        return matplotlib.colormaps["tab20c"](4 * quartet + 2 * (c.offload is Offload.ALL) + gc)
    if optim is not Optim.ADAMW:
        return matplotlib.colormaps["tab20b"](4 * base + 2 * optim.paged + gc)
    hue = {2: 8, 3: 9}.get(base, 4 * base + c.zero)
    return matplotlib.colormaps["tab20"](2 * hue + gc)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def place_labels(ax, points: list[tuple[float, float, str]]) -> list:
    """Annotate each point at the first offset whose box overlaps no earlier label and no marker."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    taken, texts = [], []
    for x, y, label in points:
        for dx, dy in OFFSETS:
            t = ax.annotate(
                label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha="left" if dx > 0 else "right"
            )
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            clash = any(box.overlaps(b) for b in taken) or any(box.contains(*m) for m in marks)
            if not clash or (dx, dy) == OFFSETS[-1]:
                taken.append(box)
                texts.append(t)
                break
            t.remove()
    return texts


def memory_chart(rows: list[ResultRow], T: dict) -> bytes:
    import matplotlib.pyplot as plt

    labels = [r.label for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for cat in CATEGORIES:
        vals = [(p.breakdown.get(cat, 0) if (p := r.predicted.best()) else 0) / MiB for r in rows]
        if any(vals):
            ax.barh(labels, vals, left=left, label=T[f"cat_{cat}"])
            left = [a + b for a, b in zip(left, vals)]
    for i, r in enumerate(rows):
        if r.ok:
            ax.plot(r.measured.peak_bytes_per_gpu / MiB, i, "k|", markersize=18, markeredgewidth=3)
        else:
            ax.text(left[i], i, "  " + T.get(f"status_{r.status.value}", r.status.value), va="center", color="red")
    ax.set_xlabel(T["ax_mib_per_gpu"])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never covers a bar
    return _png(fig)


def pareto_chart(d: Decision, capacity_bytes: int | None, T: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ok = d.ok
    if ok:
        xs = [r.measured.peak_bytes_per_gpu / MiB for r in ok]
        ys = [gpu_seconds(r) for r in ok]
        met = [any(r is m for m in d.met) for r in ok] if d.met else [True] * len(ok)
        for x, y, r, good in zip(xs, ys, ok, met):
            ax.scatter(
                [x],
                [y],
                color=colour(r.combination),
                marker=MARKERS.get(r.combination.attn.value, "o"),
                s=45,
                edgecolors="k",
                linewidths=0.5,
                zorder=3,
                alpha=1.0 if good else 0.35,
            )
        front, best_y = [], float("inf")
        # the front among runs that met the quality bar (all runs when none did): a faster run that missed the
        # bar is not an option
        for x, y in sorted((x, y) for x, y, good in zip(xs, ys, met) if good):
            if y < best_y:
                front.append((x, y))
                best_y = y
        ax.plot([p[0] for p in front], [p[1] for p in front], "g--", label=T["lg_pareto"], zorder=2)
        if d.best is not None:
            b = d.best
            ax.scatter(
                [b.measured.peak_bytes_per_gpu / MiB],
                [gpu_seconds(b)],
                marker="*",
                s=320,
                facecolors="none",
                edgecolors="crimson",
                linewidths=1.6,
                label=T["lg_recommended"],
                zorder=4,
            )
        if capacity_bytes and capacity_bytes / MiB < 3 * max(xs):
            ax.axvline(capacity_bytes / MiB, color="red", label=T["lg_capacity"])
        ax.margins(x=0.25, y=0.2)
        place_labels(ax, [(x, y, r.label) for x, y, r in sorted(zip(xs, ys, ok), key=lambda t: (t[0], t[1]))])
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel(T["ax_peak"])
    ax.set_ylabel(T["ax_gpu_seconds"])
    return _png(fig)


def quality_chart(d: Decision, lang: str, T: dict) -> bytes:
    import matplotlib.pyplot as plt

    ok, target = d.ok, d.target
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.45 * max(1, len(ok)) + 1.6))
    if ok:
        labels = [r.label for r in ok]
        cols = [colour(r.combination) for r in ok]
        a1.barh(labels, [r.measured.eval_loss for r in ok], color=cols)
        a1.set_xlabel(T["ax_loss"])
        metric = target.metric if target.metric != "eval_loss" else "exact_match"
        tgt = target if target.metric == metric else None
        vals = [r.measured.value(metric) or 0 for r in ok]
        ys = list(range(len(ok)))
        for y, r in zip(ys, ok):
            if r.measured.value(metric) is None:  # no bar: say so, a zero-length bar would read as 0
                a2.text(0.01, y, T["not_measured"], va="center", fontsize=7, color="dimgray")
        f1 = [r.measured.quality.get("token_f1") for r in ok]
        if metric != "token_f1" and any(v is not None for v in f1):
            # token F1 beside the target metric: partial learning (some tokens right) that exact match hides
            a2.barh([y - 0.2 for y in ys], vals, height=0.4, color=cols, label=metric_name(metric, lang))
            a2.barh(
                [y + 0.2 for y in ys],
                [v or 0 for v in f1],
                height=0.4,
                color=cols,
                alpha=0.45,
                hatch="//",
                label=metric_name("token_f1", lang),
            )
        else:
            a2.barh(ys, vals, color=cols)
        a2.set_yticks(ys)
        key = "ax_metric" if (tgt is None or tgt.higher_is_better) else "ax_metric_low"
        a2.set_xlabel(T[key].format(metric=metric_name(metric, lang)))
        if tgt is not None:
            a2.axvline(tgt.value, color="crimson", linestyle="--", label=T["lg_target"])
        if a2.get_legend_handles_labels()[0]:
            a2.legend(fontsize=8, loc="upper right")
        if metric in ("exact_match", "token_f1", "rouge_l", "label_accuracy"):
            a2.set_xlim(0, 1)
        if not d.learned:
            a2.text(
                0.5,
                0.5,
                T["chart_nothing"],
                transform=a2.transAxes,
                ha="center",
                va="center",
                color="crimson",
                fontsize=14,
            )
        a2.set_yticklabels([])
        a2.set_ylim(-0.6, len(ok) - 0.4 + 0.9)  # room above the bars for the legend
    return _png(fig)


def parity_chart(ok: list[ResultRow], T: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    hi = 1.0
    for method, mark in (("analytic", "o"), ("traced", "s")):
        preds = [(r, getattr(r.predicted, method)) for r in ok]
        pts = [
            (r.measured.peak_bytes_per_gpu / MiB, p.peak_bytes_per_gpu / MiB)
            for r, p in preds
            if p is not None and p.peak_bytes_per_gpu is not None
        ]
        if pts:
            ax.scatter(*zip(*pts), marker=mark, label=T[f"m_{method}"])
            hi = max(hi, *(max(p) for p in pts))
    ax.plot([0, hi * 1.05], [0, hi * 1.05], "k:", label=T["lg_exact"])
    ax.set_xlabel(T["ax_measured"])
    ax.set_ylabel(T["ax_predicted"])
    ax.legend(fontsize=8)
    return _png(fig)


def charts(rows: list[ResultRow], d: Decision, capacity_bytes: int | None, lang: str) -> dict[str, bytes]:
    """file name -> PNG bytes, every label in `lang`; the names carry the language, so the English and the
    Japanese report written into one folder each keep their own charts."""
    import matplotlib

    matplotlib.use("Agg")
    register_fonts()
    T = TEXT[lang]
    with matplotlib.rc_context({"font.family": FONTS[lang], "axes.unicode_minus": False}):
        return {
            f"memory.{lang}.png": memory_chart(rows, T),
            f"pareto.{lang}.png": pareto_chart(d, capacity_bytes, T),
            f"quality.{lang}.png": quality_chart(d, lang, T),
            f"parity.{lang}.png": parity_chart(d.ok, T),
        }
