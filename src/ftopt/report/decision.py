"""The measured decision: which successful run meets the user's quality bar at the lowest cost (GPU-seconds per
epoch: a two-process run pays for two GPUs), what it gives up against the best run, and whether anything was
learned at all."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftopt.quality import QualityTarget
from ftopt.spec import Optim, Quant

QUALITY_TOLERANCE = 0.05  # without a user target: eval loss within 5% of the sweep's best (stated as such)
SAME_TIME = 0.02  # runs within 2% of each other's time are not called slower


def epoch_seconds(r: dict) -> float:
    return r["measured"].get("epoch_seconds") or float("inf")


def gpu_seconds(r: dict) -> float:
    """GPU-seconds per epoch: wall time x processes (GPUs) the run used."""
    return epoch_seconds(r) * r.get("gpus", 1)


@dataclass
class Decision:
    target: QualityTarget
    target_given: bool  # False: derived from the sweep (best eval loss within 5%), and the report says so
    best: dict | None  # the cheapest run that met the target; None when no run met it
    met: list[dict]  # every successful run that met the target
    ok: list[dict]
    closest: dict | None  # the run nearest the target (the best on its metric)
    learned: bool  # False: every run scored 0 on a higher-is-better metric (nothing of the task was learned)
    fastest: dict | None = None  # the fastest run on the recommended run's GPU count (the time trade-off's reference)
    tradeoff: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _value(target: QualityTarget, r: dict) -> float | None:
    return target.value_of(r["measured"])


def decide(rows: list[dict], target: QualityTarget | None = None) -> Decision:
    """Among successful runs meeting the target, the cheapest per epoch in GPU-seconds."""
    ok = [r for r in rows if r["status"] == "ok" and r["measured"].get("eval_loss") is not None]
    failed = [f"{r['label']} ({r['status']})" for r in rows if r["status"] != "ok"]
    given = target is not None
    if target is None:
        best_loss = min((r["measured"]["eval_loss"] for r in ok), default=0.0)
        target = QualityTarget(
            metric="eval_loss", op="<=", value=round(best_loss * (1 + QUALITY_TOLERANCE), 4), source="derived"
        )
    scored = [r for r in ok if _value(target, r) is not None]
    sign = 1 if target.higher_is_better else -1
    closest = max(scored, key=lambda r: sign * _value(target, r), default=None)
    learned = not (target.higher_is_better and scored and all(_value(target, r) <= 0 for r in scored))
    met = [r for r in ok if target.met(r["measured"])]
    best = min(met, key=gpu_seconds) if met else None
    d = Decision(
        target=target, target_given=given, best=best, met=met, ok=ok, closest=closest, learned=learned, failed=failed
    )
    if best is not None:
        d.fastest = min((r for r in ok if r.get("gpus", 1) == best.get("gpus", 1)), key=epoch_seconds)
        d.tradeoff = _tradeoff(best, closest, d.fastest, target)
    return d


def _tradeoff(best: dict, top: dict, fastest: dict, target: QualityTarget) -> list[tuple[str, str]]:
    """Quality given up against the best-scoring run; time against the fastest run on the same number of GPUs."""
    out = []
    dq = abs(_value(target, top) - _value(target, best))
    if dq > 1e-9:
        out.append(("quality", f"{dq:.3g}"))
    if epoch_seconds(best) > epoch_seconds(fastest) * (1 + SAME_TIME):
        out.append(("time", f"{epoch_seconds(best) / epoch_seconds(fastest) - 1:.0%}"))
    return out


def quant_of(c: dict) -> Quant:
    return Quant(c.get("quant", "none"))  # results lines written before quantized bases existed have no key


def optim_of(c: dict) -> Optim:
    return Optim(c.get("optim", "adamw"))  # likewise before 8-bit optimizers


def memory_techniques(c: dict, T: dict) -> list[str]:
    """The memory techniques of a combination in the report's language (`T`: report.text); attention kind is not
    one, it is listed apart. A 4-bit base is QLoRA (its LoRA included), an int8 base says so beside LoRA."""
    t = []
    quant, optim = quant_of(c), optim_of(c)
    if quant.four_bit:
        t.append(T["tech_qlora"].format(quant=quant.value.upper(), r=c["lora_r"]))
    elif c["lora_r"]:
        t.append(T["tech_lora"].format(r=c["lora_r"]))
    if quant is Quant.INT8:
        t.append(T["tech_int8"])
    if optim is not Optim.ADAMW:
        t.append(T[f"tech_{optim.name.lower()}"])
    if c["gc"]:
        t.append(T["tech_gc"])
    if c["zero"]:
        t.append(f"ZeRO-{c['zero']}")
    if c["offload"] != "none":
        t.append(T[f"tech_offload_{c['offload']}"])
    return t
