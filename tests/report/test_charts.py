"""Charts: Japanese drawn with a font that has every glyph (matplotlib warns 'Glyph ... missing' otherwise),
colours fixed per technique, labels that do not overlap, the recommended run starred."""

import warnings

from ftopt.report.charts import FONTS, charts, colour, place_labels, register_fonts
from ftopt.report.decision import decide
from ftopt.report.text import TEXT
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import parse_rows
from ftopt.spec import Combination
from tests.report.test_report import FULL, LORA, ROWS, row


def _missing_glyph_warnings(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if "missing from" in str(w.message)]


def test_japanese_charts_have_every_glyph():
    from matplotlib import font_manager

    register_fonts()
    path = font_manager.findfont(font_manager.FontProperties(family="IPAexGothic"), fallback_to_default=False)
    assert path.endswith("ipaexg.ttf")
    rows = parse_rows(ROWS)
    d = decide(rows, QualityTarget.parse("exact_match>=0.5"))
    assert _missing_glyph_warnings(lambda: charts(rows, d, 2**30, "ja")) == []


def test_the_glyph_check_catches_a_font_without_japanese():
    """Control: the same Japanese label drawn with the English font list does warn (the check above can fail)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw():
        with matplotlib.rc_context({"font.family": FONTS["en"]}):
            fig, ax = plt.subplots()
            ax.set_xlabel(TEXT["ja"]["ax_loss"])
            fig.canvas.draw()
            plt.close(fig)

    assert _missing_glyph_warnings(draw)


def test_colours_are_fixed_per_technique():
    assert colour(Combination(**LORA)) == colour(
        Combination(**dict(LORA, attn="eager"))
    )  # attention is a marker, not a colour
    assert (
        len(
            {
                colour(Combination(**FULL)),
                colour(Combination(**LORA)),
                colour(Combination(**dict(LORA, gc=True))),
                colour(Combination(**dict(LORA, zero=2))),
                colour(Combination(**dict(FULL, gc=True))),
            }
        )
        == 5
    )


def test_labels_do_not_overlap_even_for_clustered_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(10.0 + 0.01 * i, 5.0 + 0.01 * i, f"combination number {i}") for i in range(5)]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.margins(0.5)
    texts = place_labels(ax, pts)
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in texts]
    assert len(boxes) == 5
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(5) for j in range(i + 1, 5))
    plt.close(fig)


def test_recommended_run_is_starred_on_the_pareto_chart(monkeypatch):
    import matplotlib.axes

    starred = []
    real = matplotlib.axes.Axes.scatter

    def spy(self, x, y, *a, **kw):
        if kw.get("marker") == "*":
            starred.append((list(x), list(y)))
        return real(self, x, y, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    rows = parse_rows([row("slow", epoch=20, em=0.9), row("chosen", epoch=10, em=0.9, peak=50 * 2**20)])
    d = decide(rows, QualityTarget.parse("exact_match>=0.5"))
    charts(rows, d, None, "en")
    assert starred == [([50.0], [10.0])]


def test_quantized_bases_and_bnb_optimizers_have_their_own_colours():
    """A QLoRA or 8-bit-optimizer run must not share the colour of the 16-bit/AdamW run it derives from."""
    qlora, int8 = dict(LORA, quant="nf4", optim="adamw"), dict(LORA, quant="int8", optim="adamw")
    adam8, paged8 = dict(FULL, quant="none", optim="adamw-8bit"), dict(FULL, quant="none", optim="paged-adamw-8bit")
    study = [dict(base, gc=gc, zero=z) for base in (FULL, LORA) for gc in (False, True) for z in range(4)]
    new = [
        qlora,
        int8,
        adam8,
        paged8,
        dict(qlora, optim="adamw-8bit"),
        dict(LORA, optim="adamw-8bit"),
        dict(qlora, gc=True),
        dict(adam8, gc=True),
    ]
    colours = [colour(Combination(**c)) for c in study + new]
    assert len(set(colours)) == len(colours)  # every family (and its GC shade) distinct
    assert colour(Combination(**qlora)) == colour(
        Combination(**dict(qlora, quant="fp4"))
    )  # 4-bit bases are one family (QLoRA)
    assert colour(Combination(**LORA)) == colour(
        Combination(**dict(LORA, quant="none", optim="adamw"))
    )  # rows written before the keys existed
