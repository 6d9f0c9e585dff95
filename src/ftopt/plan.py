"""Enumerate every valid combination, predict its memory and time, and recommend one.

The recommendation is derived from the predictions alone: among combinations that fit (device memory and host
RAM) and meet the quality requirement (`full_only`), the one with the shortest predicted total time; near-ties
(within NEAR_TIE_FRACTION) go to the one with fewer moving parts (no offload, then the lower ZeRO stage: less to
configure and debug), then to more memory headroom. No table of rules.
"""
from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field

from ftopt.errors import FtoptError
from ftopt.estimate import Estimate, Method, estimate
from ftopt.spec import Attention, Combination, HardwareSpec, ModelSpec, Offload, Optim, Quant, TrainingSetup
from ftopt.units import fmt_bytes, fmt_seconds

NEAR_TIE_FRACTION = 0.01
DEFAULT_LORA_R = 16
# ZeRO stage and offload pairs DeepSpeed accepts (offload needs a stage; parameter offload needs stage 3).
ZERO_OFFLOAD = [(0, Offload.NONE), (1, Offload.NONE), (1, Offload.OPTIMIZER), (2, Offload.NONE),
                (2, Offload.OPTIMIZER), (3, Offload.NONE), (3, Offload.OPTIMIZER), (3, Offload.ALL)]
# Quantized LoRA bases the plan tries. FP4 is left out: the same bytes and time as NF4, and lower quality (QLoRA
# paper, Table 2/Fig. 3); `estimate --quant fp4` still predicts it.
PLAN_QUANTS = (Quant.NF4, Quant.INT8)


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    hardware: str
    setup: TrainingSetup
    method: Method
    candidates: list[Estimate] = Field(description="every combination, fitting ones first, by predicted total time")
    recommended: Estimate | None
    reason: str
    max_hours: float | None = None
    cost_per_gpu_hour: float | None = None
    longest_context: int | None = Field(None, description="longest seq_len that fits with the recommendation")
    fewest_gpus: int | None = Field(None, description="fewest GPUs (of this kind) on which any combination fits")
    fewest_gpus_combination: Combination | None = None
    shortfall: str | None = Field(None, description="what still does not fit, when something does not")

    def cost(self, e: Estimate) -> float | None:
        if self.cost_per_gpu_hour is None:
            return None
        return e.total_seconds / 3600 * self.setup.world_size * self.cost_per_gpu_hour

    def to_json(self) -> dict:
        def cand(e: Estimate) -> dict:
            return {**e.combination.key(), "label": e.combination.label(), "peak_bytes_per_gpu": e.peak_bytes_per_gpu,
                    "device_bytes_per_gpu": e.device_bytes_per_gpu, "fits": e.fits, "epoch_seconds": e.epoch_seconds,
                    "total_seconds": e.total_seconds, "step_seconds": e.step_seconds, "cost": self.cost(e),
                    "breakdown": e.breakdown.model_dump()}
        return {
            "model": self.model, "hardware": self.hardware, "method": self.method.value,
            "setup": self.setup.model_dump(mode="json"),
            "recommended": self.recommended.combination.key() if self.recommended else None,
            "recommended_estimate": self.recommended.to_json() if self.recommended else None,
            "reason": self.reason, "candidates": [cand(e) for e in self.candidates],
            "longest_context": self.longest_context, "fewest_gpus": self.fewest_gpus,
            "fewest_gpus_combination": self.fewest_gpus_combination.key() if self.fewest_gpus_combination else None,
            "shortfall": self.shortfall,
        }


def combinations(hw: HardwareSpec, lora_r: int = DEFAULT_LORA_R, full_only: bool = False,
                 lora_targets: tuple[str, ...] | None = None, quants: tuple[Quant, ...] | None = None,
                 optims: tuple[Optim, ...] | None = None) -> list[Combination]:
    """GC on/off x full/LoRA x (ZeRO stage, offload) x attention eager/flash (eager/sdpa on a CPU), plus for
    LoRA each quantized base (ZeRO 0-2) and, without DeepSpeed, each bitsandbytes optimizer. `quants`/`optims`
    restrict the enumeration (None = PLAN_QUANTS and every optimizer)."""
    attns = [Attention.EAGER, Attention.SDPA] if hw.is_cpu else [Attention.EAGER, Attention.FLASH]
    ranks = [0] if full_only else [0, lora_r]
    quant_set = (Quant.NONE, *PLAN_QUANTS) if quants is None else quants
    optim_set = tuple(Optim) if optims is None else optims
    out = []
    for gc, r, quant, (zero, off), optim, attn in itertools.product([False, True], ranks, quant_set, ZERO_OFFLOAD,
                                                                     optim_set, attns):
        if (quant is not Quant.NONE and (not r or zero == 3)) or (optim is not Optim.ADAMW and zero):
            continue  # combinations Combination's validator rejects: not enumerated
        out.append(Combination(gc=gc, lora_r=r, lora_targets=lora_targets if r else None, zero=zero, offload=off,
                               attn=attn, quant=quant, optim=optim))
    return out


def _rank_key(e: Estimate):
    return (not e.fits, e.total_seconds, -e.headroom_bytes)


def choose(estimates: list[Estimate], max_hours: float | None) -> tuple[Estimate | None, str]:
    fitting = sorted((e for e in estimates if e.fits), key=lambda e: e.total_seconds)
    if not fitting:
        return None, "no combination fits in memory"
    best_time = fitting[0].total_seconds
    near = [e for e in fitting if e.total_seconds <= best_time * (1 + NEAR_TIE_FRACTION)]
    # ties: no offload, then an unquantized base and 32-bit states (exact weights and updates), then the lower stage
    pick = min(near, key=lambda e: (e.combination.offload is not Offload.NONE, e.combination.quant is not Quant.NONE,
                                    e.combination.optim is not Optim.ADAMW, e.combination.zero, -e.headroom_bytes))
    others = [e for e in fitting if e is not pick]
    reason = (f"fastest combination that fits: {fmt_seconds(pick.total_seconds)} of training, "
              f"{fmt_bytes(pick.device_bytes_per_gpu)} of {fmt_bytes(pick.capacity_bytes)} per GPU")
    if len(near) > 1:
        reason += f"; ties within {NEAR_TIE_FRACTION:.0%} with {len(near) - 1} other(s), chosen as the simplest to run"
    slower_safe = [e for e in others if e.combination.gc and not pick.combination.gc]
    if not pick.combination.gc and slower_safe:
        reason += "; gradient checkpointing is not needed, so its ~33% recomputation is avoided"
    if max_hours is not None and pick.total_seconds > max_hours * 3600:
        reason += f"; it still exceeds the {max_hours:g} h budget: add GPUs or shorten the data"
    return pick, reason


def longest_context(model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination,
                    method: Method, step: int = 256) -> int | None:
    """Largest seq_len (multiple of `step`, up to the model's positions) that still fits, by bisection."""
    def fits(s: int) -> bool:
        return estimate(model, hw, setup.model_copy(update={"seq_len": s}), combo, method).fits

    hi_limit = max(model.max_positions, setup.seq_len)
    if not fits(step):
        return None
    lo, hi = 1, hi_limit // step  # in units of `step`; lo always fits
    if fits(hi * step):
        return hi * step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid)
    return lo * step


def fewest_gpus(model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combos: list[Combination],
                method: Method, max_gpus: int = 64) -> tuple[int | None, Combination | None]:
    """Fewest GPUs of this kind (filling nodes of `gpus_per_node`) on which any combination fits."""
    per_node = setup.gpus_per_node
    for n in itertools.chain(range(1, per_node + 1), range(2 * per_node, max_gpus + 1, per_node)):
        s = setup.model_copy(update={"gpus_per_node": min(n, per_node), "nodes": max(1, n // per_node)})
        fit = [e for c in combos if (e := estimate(model, hw, s, c, method)).fits]
        if fit:
            return n, min(fit, key=lambda e: e.total_seconds).combination
    return None, None


def plan(model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, *, method: Method | str = Method.ANALYTIC,
         max_hours: float | None = None, full_only: bool = False, lora_r: int = DEFAULT_LORA_R,
         lora_targets: tuple[str, ...] | None = None, cost_per_gpu_hour: float | None = None,
         what_ifs: bool = True, quants: tuple[Quant, ...] | None = None, optims: tuple[Optim, ...] | None = None) -> Plan:
    method = Method(method)
    if max_hours is not None and max_hours <= 0:
        raise FtoptError(f"--max-hours must be positive, got {max_hours}.")
    if lora_r <= 0:
        raise FtoptError(f"--lora-r for the plan's LoRA candidates must be positive, got {lora_r}.")
    combos = combinations(hw, lora_r, full_only, lora_targets, quants, optims)
    # The traced method is slower: rank everything analytically, then trace the leading candidates.
    estimates = [estimate(model, hw, setup, c, Method.ANALYTIC) for c in combos]
    estimates.sort(key=_rank_key)
    if method is Method.TRACED:
        lead = 6
        estimates[:lead] = sorted((estimate(model, hw, setup, e.combination, Method.TRACED) for e in estimates[:lead]),
                                  key=_rank_key)
    rec, reason = choose(estimates, max_hours)
    p = Plan(model=model.name, hardware=hw.name, setup=setup, method=method, candidates=estimates, recommended=rec,
             reason=reason, max_hours=max_hours, cost_per_gpu_hour=cost_per_gpu_hour)
    if what_ifs:
        if rec is not None:
            p.longest_context = longest_context(model, hw, setup, rec.combination, Method.ANALYTIC)
        p.fewest_gpus, p.fewest_gpus_combination = fewest_gpus(model, hw, setup, combos, Method.ANALYTIC)
    p.shortfall = _shortfall(estimates, rec, full_only, hw)
    return p


def _shortfall(estimates: list[Estimate], rec: Estimate | None, full_only: bool, hw: HardwareSpec) -> str | None:
    """Say what does not fit: the smallest miss overall, or full fine-tuning when only LoRA fits."""
    if rec is None:
        best = min(estimates, key=lambda e: e.device_bytes_per_gpu)
        return (f"nothing fits: the smallest combination ({best.combination.label()}) needs "
                f"{fmt_bytes(best.device_bytes_per_gpu)} per GPU, {fmt_bytes(best.device_bytes_per_gpu - hw.memory_bytes)} "
                f"more than the {fmt_bytes(hw.memory_bytes)} of a {hw.name}")
    full = [e for e in estimates if not e.combination.lora]
    if not full_only and full and not any(e.fits for e in full):
        best = min(full, key=lambda e: e.device_bytes_per_gpu)
        if best.device_bytes_per_gpu <= best.capacity_bytes:
            return (f"full fine-tuning fits the GPUs only with {best.combination.label()}, which needs "
                    f"{fmt_bytes(best.cpu_bytes_per_node)} of host RAM per node (assumed {fmt_bytes(hw.host_memory_bytes)}); "
                    "only LoRA combinations fit")
        return (f"full fine-tuning does not fit on these GPUs: at best ({best.combination.label()}) it needs "
                f"{fmt_bytes(best.device_bytes_per_gpu)} per GPU; only LoRA combinations fit")
    return None
