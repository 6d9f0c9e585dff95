"""The report knows FSDP2 (its sharding is a memory technique, its runs have their own colours), and a run that did
not measure the target's metric reads "not measured": never a 0%, never "missed" or "not met". Synthetic results
lines: no run is trained here."""

import itertools

import pytest

from ftopt.report.charts import colour
from ftopt.report.decision import Why, decide
from ftopt.report.render import build_report
from ftopt.results.quality import QualityTarget
from ftopt.results.rows import parse_rows
from ftopt.spec import Combination
from tests.report.test_decision import timed
from tests.report.test_report import LORA

EM = QualityTarget.parse("exact_match>=0.5")
FULL = dict(LORA, lora_r=0)
GRAD_OP = dict(FULL, fsdp="grad-op")


def unscored(r: dict) -> dict:
    """A results line whose run measured no generation quality (as FSDP2 runs stored before they scored it)."""
    r["measured"].update(quality={}, exact_match=None)
    return r


@pytest.mark.parametrize(
    "lang,says",
    [
        ("en", "FSDP2 sharding with the parameters kept gathered from forward to backward (grad-op)"),
        ("ja", "FSDP2によるシャーディング(grad-op"),
    ],
)
def test_an_fsdp2_pick_names_its_sharding_as_its_memory_technique(tmp_path, lang, says):
    rows = [timed("full + FSDP2-grad-op", 0.05, 0.8, GRAD_OP), timed("full", 0.09, 0.8, FULL)]
    assert decide(parse_rows(rows), EM).best.label == "full + FSDP2-grad-op"
    h = build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()
    assert says in h
    assert ("No memory technique is needed" if lang == "en" else "メモリ削減手法は不要です") not in h


def test_fsdp2_runs_have_colours_of_their_own():
    """Every set of memory techniques (16-bit base, AdamW) gets its own colour: FSDP2 full and grad-op, with and
    without LoRA, GC or parameter offload, differ from each other and from every ZeRO stage."""
    combos = [Combination(lora_r=r, gc=gc, zero=z) for r, gc, z in itertools.product((0, 8), (False, True), range(4))]
    combos += [
        Combination(lora_r=r, gc=gc, fsdp=f, offload=o)
        for r, gc, f, o in itertools.product((0, 8), (False, True), ("full", "grad-op"), ("none", "all"))
    ]
    assert len({colour(c) for c in combos}) == len(combos)


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_a_run_without_the_metric_is_not_measured_never_missed(tmp_path, lang):
    """The plan's pick (predicted cheapest) stored no exact match: it neither met nor missed the bar, and every
    place that judges it says so."""
    rows = [
        unscored(timed("full + FSDP2-full", 0.05, 0.0, dict(FULL, fsdp="full"), pred_step=0.04)),
        timed("full", 0.09, 0.8, FULL, pred_step=0.09),
    ]
    d = decide(parse_rows(rows), EM)
    assert d.best.label == "full" and d.plan_pick.label == "full + FSDP2-full" and d.why is Why.UNMEASURED
    h = build_report(rows, tmp_path, lang=lang, quality_target=EM)["html"].read_text()
    if lang == "en":
        assert "its run did not measure exact match, so it could not be held to the quality bar" in h
        assert "Not measured, so neither met nor missed: full + FSDP2-full." in h
        assert "not measured</td>" in h and "not met" not in h and "missed the quality bar" not in h
    else:
        assert "その実行では完全一致率を測定していないため" in h
        assert "未測定</td>" in h and "未達" not in h


def test_the_demo_says_not_measured_instead_of_zero():
    from ftopt.sweep.demo import quality_line

    r = parse_rows([unscored(timed("full + FSDP2-full", 0.05, 0.0, dict(FULL, fsdp="full")))])[0]
    assert quality_line(r) == "  full + FSDP2-full: exact match not measured, token F1 not measured"
    scored = parse_rows([timed("full", 0.05, 0.25, FULL)])[0]
    assert quality_line(scored) == "  full: exact match 25%, token F1 0.25"
