"""Repeats of one combination (`ftopt bench --repeat`) are one candidate in the decision: their steady steps pooled
into one median and spread, never tied with each other, and the report says how many repeats each pooled.
Synthetic results lines: no run is trained here."""

import pytest

from ftopt.report.decision import decide
from ftopt.report.render import build_report
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import parse_rows
from tests.report.test_decision import EAGER, SDPA, timed

EM = QualityTarget.parse("exact_match>=0.5")


def _repeat(label, step, rep, combination, **kw):
    r = timed(label, step, 0.8, combination, jitter=0.02, **kw)
    r["key"], r["repeat"] = f"{label}-rep{rep}", rep
    return r


def _rows():
    """sdpa ran three times: once fast (a quiet moment on a shared machine), twice at 80 ms; eager once at 65 ms."""
    sdpa = [_repeat("LoRA r8 + sdpa", s, i, SDPA) for i, s in enumerate((0.05, 0.08, 0.08))]
    return sdpa + [_repeat("LoRA r8 + eager", 0.065, 0, EAGER)]


def test_repeats_pool_into_one_band_and_one_fast_repeat_does_not_decide():
    """Before: each repeat was its own candidate, so sdpa's one fast repeat (50 ms, its 2% spread clear of eager's)
    won alone and the other two repeats were ignored. Pooled, sdpa's median is 80 ms over 60 steps."""
    d = decide(parse_rows(_rows()), EM)
    (p,) = d.pooled()
    assert p.repeats == 3 and p.stats.steps == 60 and p.stats.median == pytest.approx(0.08, rel=0.03)
    assert p.stats.low < 0.06  # the fast repeat widens the spread instead of setting the cost
    assert d.best.label == "LoRA r8 + eager"
    assert all(r.label != d.best.label for r in d.tied)  # never tied with its own repeat


def test_repeats_of_the_pick_are_not_reported_as_ties():
    rows = [_repeat("LoRA r8 + sdpa", 0.05, i, SDPA) for i in range(3)] + [_repeat("LoRA r8 + eager", 0.09, 0, EAGER)]
    d = decide(parse_rows(rows), EM)
    assert d.best.label == "LoRA r8 + sdpa" and d.tied == [] and d.tie_break is None


@pytest.mark.parametrize(
    "lang,text",
    [
        (
            "en",
            "Repeats of one combination count as one candidate, their steady steps pooled into one median and "
            "spread: LoRA r8 + sdpa, 3 runs pooled over 60 steps.",
        ),
        ("ja", "LoRA r8 + sdpaは3回分の60ステップ"),
    ],
)
def test_the_report_says_how_many_repeats_were_pooled(tmp_path, lang, text):
    h = build_report(_rows(), tmp_path, lang=lang, quality_target=EM)["html"].read_text()
    assert text in h
    single = [_repeat("LoRA r8 + sdpa", 0.05, 0, SDPA), _repeat("LoRA r8 + eager", 0.065, 0, EAGER)]
    h = build_report(single, tmp_path / "one", lang=lang, quality_target=EM)["html"].read_text()
    assert "Repeats of one combination" not in h and "繰り返した実行" not in h
