"""The report's fourth point: the basis the choice went by, the plan's pick beside the measured pick, whether the
measurement confirmed it ("the recommendation is verified") and, where it did not, why; and the tie, if any."""

from __future__ import annotations

import html

from ftopt.report.decision import Basis, Decision, Why, gpu_seconds, start_metric
from ftopt.report.text import metric_name, plural
from ftopt.results.rows import WARMUP_STEPS

e = html.escape


def point_verified(d: Decision, T: dict, lang: str, hardware: str, target_gpu: str | None) -> str | None:
    if d.best is None:
        return None
    if d.basis is Basis.PROJECTED:
        basis = T["basis_projected"].format(
            because=_because(d, T, lang), gpu=e(target_gpu or "-"), pct=f"{d.projected_tie:.0%}"
        )
    else:
        warmup = max((r.measured.warmup_steps for r in d.ok), default=WARMUP_STEPS)
        basis = T["basis_measured"].format(hardware=e(hardware), warmup=plural(warmup, "step", lang))
    basis += _repeats(d, T, lang)
    b, p = d.best, d.plan_pick
    by = T[f"by_{d.tie_break or 'plan'}"]
    fields = dict(plan=e(p.label) if p else "-", best=e(b.label), by=by)
    if p is None:
        verdict = T["plan_none"]
    elif d.why is None:
        verdict = T["verified"].format(**fields)
    elif d.why is Why.QUALITY:
        v = p.measured.value(d.target.metric) if p.measured else None
        value = "-" if v is None else f"{metric_name(d.target.metric, lang)} {v:.3g}"
        verdict = T["why_quality"].format(**fields, value=e(value))
    elif d.why is Why.UNMEASURED:
        verdict = T["why_unmeasured"].format(**fields, metric=e(metric_name(d.target.metric, lang)))
    elif d.why is Why.FAILED:
        verdict = T["why_failed"].format(**fields, status=T.get(f"status_{p.status.value}", p.status.value))
    elif d.why is Why.SLOWER:
        verdict = T["why_slower"].format(**fields, pct=f"{gpu_seconds(p) / gpu_seconds(b) - 1:.0%}")
    else:
        verdict = T["why_tie"].format(**fields)
    tie = ""
    if d.tied and d.why is not Why.TIE:
        sep = "、" if lang == "ja" else ", "
        tie = T["tie_note"].format(others=sep.join(e(r.label) for r in d.tied), by=by)
    plan_def = T["plan_def"].format(gpu=e(target_gpu or hardware)) if p is not None else ""
    return T["p_verified"].format(basis=basis, verdict=verdict, tie=tie, plan_def=plan_def)


def _because(d: Decision, T: dict, lang: str) -> str:
    """The ways the PoC is not the target (projection.Difference), as one phrase in the report's language."""
    items = [T[f"diff_{x.kind}"].format(poc=e(x.poc), target=e(x.target)) for x in d.projected_because]
    if lang == "ja":
        return "、".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _repeats(d: Decision, T: dict, lang: str) -> str:
    """How many repeats of each combination were pooled into its one band (empty when each ran once)."""
    pooled = d.pooled()
    if not pooled:
        return ""
    sep = "、" if lang == "ja" else "; "
    items = sep.join(
        T["repeat_item"].format(
            label=e(p.representative.label), runs=plural(p.repeats, "run", lang), steps=p.stats.steps
        )
        for p in pooled
    )
    return T["repeats_pooled"].format(items=items)


def nothing_to_learn(d: Decision, T: dict, lang: str) -> str:
    """The flag for a sweep with nothing to learn: every run scored before training already had full marks on
    the metric (ftopt.report.decision.full_marks_at_start), or every run started at a near-zero loss."""
    if d.full_marks_at_start:
        return T["nothing_to_learn_full"].format(
            metric=e(metric_name(start_metric(d.target), lang)), n=len(d.full_marks_at_start), total=len(d.ok)
        )
    return T["nothing_to_learn"] if d.nothing_to_learn else ""
