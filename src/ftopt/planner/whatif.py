"""The plan's what-ifs: the longest context that fits with the recommendation, and the fewest GPUs that fit at all.

Both search with the analytic formulas (instant) and, when asked to confirm, check the answer with the traced
estimator (a FakeTensor trace of the real training step, ~1-2 s each). An answer the trace rejects is searched
again from the traced figures, a few traces at most; every answer says which method gave it.
"""

from __future__ import annotations

import itertools
from enum import Enum

from ftopt.estimate import Estimate, FallbackCause, Method, TraceFallback, estimate
from ftopt.planner.choice import choose_fitting, tie_fraction
from ftopt.spec import Combination, HardwareSpec, ModelSpec, TrainingSetup

# Traces one what-if may spend confirming (each is a FakeTensor trace, ~1-2 s for a 7B-70B model on a CPU).
CONFIRM_TRIES = 3


class Answer(str, Enum):
    """The plan's answers the trace confirms (Plan.answered_by, Plan.fallbacks)."""

    RECOMMENDED = "recommended"
    LONGEST_CONTEXT = "longest_context"
    FEWEST_GPUS = "fewest_gpus"


class LimitKind(str, Enum):
    MEMORY = "memory"
    POSITIONS = "positions"  # the model's max_position_embeddings, not memory
    REQUESTED = "requested"  # the run's own --seq-len, beyond the model's positions: the search stops there


def longest_context(
    model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination, method: Method, step: int = 256
) -> int | None:
    """Largest seq_len (multiple of `step`, up to the model's positions) that still fits, by bisection."""
    return longest_context_and_bound(model, hw, setup, combo, method, step)[0]


def longest_context_and_bound(
    model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination, method: Method, step: int = 256
) -> tuple[int | None, LimitKind | None]:
    """(longest seq_len that fits, what bounds it): POSITIONS when even the model's position limit fits, so the
    answer says nothing about memory; REQUESTED when the run asks for more than the model's positions and that
    length fits (the search goes no further than the run's own length); MEMORY otherwise."""

    def fits(s: int) -> bool:
        return estimate(model, hw, setup.model_copy(update={"seq_len": s}), combo, method).fits

    hi_limit = max(model.max_positions, setup.seq_len)
    step = min(step, hi_limit)  # a model with fewer positions than one step is searched in units of its limit
    if not fits(step):
        return None, LimitKind.MEMORY
    lo, hi = 1, hi_limit // step  # in units of `step`; lo always fits
    if fits(hi * step):
        return hi * step, _ceiling_kind(model, hi * step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid)
    return lo * step, LimitKind.MEMORY


def _ceiling_kind(model: ModelSpec, n: int) -> LimitKind:
    """What stops the search when its ceiling, `n` tokens, fits: the model's positions, or a run's own longer
    length."""
    if n > model.max_positions:
        return LimitKind.REQUESTED
    return LimitKind.POSITIONS if n == model.max_positions else LimitKind.MEMORY


def confirmed_longest_context(
    model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination, confirm: bool, step: int = 256
) -> tuple[int | None, LimitKind | None, Method | None, TraceFallback | None]:
    """The analytic answer, then (confirm=True) traced at that length. When the trace needs more memory, the length
    shrinks in proportion to the overshoot (activations grow about linearly with it) and is traced again. The last
    item says why the answer is not the trace's, when it is not; out of traces there is no answer (None, and no
    method)."""
    n, bound = longest_context_and_bound(model, hw, setup, combo, Method.ANALYTIC, step)
    if not confirm or n is None:
        return n, bound, Method.ANALYTIC, None
    for _ in range(CONFIRM_TRIES):
        e = estimate(model, hw, setup.model_copy(update={"seq_len": n}), combo, Method.TRACED)
        if e.trace_fallback is not None:  # the trace cannot run this architecture: the formulas' answer stands
            return n, bound, Method.ANALYTIC, e.trace_fallback
        if e.fits:
            return n, bound, Method.TRACED, None
        shrunk = int(n * e.usable_bytes / max(e.device_bytes_per_gpu, 1)) // step * step
        n, bound = min(shrunk, n - step), LimitKind.MEMORY
        if n < step:
            return None, LimitKind.MEMORY, Method.TRACED, None  # the trace: not even one step of context fits
    return (  # neither estimator's answer: the formulas' length was rejected, the trace confirmed none shorter
        None,
        None,
        None,
        TraceFallback(
            cause=FallbackCause.TRIES_EXHAUSTED,
            message=f"the trace rejected {CONFIRM_TRIES} context lengths in turn; no length is confirmed",
        ),
    )


def _gpu_counts(per_node: int, max_gpus: int):
    """1, 2, ... up to one full node, then whole nodes; never more than max_gpus."""
    return itertools.chain(range(1, min(per_node, max_gpus) + 1), range(2 * per_node, max_gpus + 1, per_node))


def fewest_gpus(
    model: ModelSpec,
    hw: HardwareSpec,
    setup: TrainingSetup,
    combos: list[Combination],
    method: Method,
    max_gpus: int = 64,
    confirm: bool = False,
) -> tuple[int | None, Combination | None, Method, TraceFallback | None]:
    """Fewest GPUs of this kind (filling nodes of `gpus_per_node`) on which any combination fits, the one the plan's
    rule (ftopt.planner.choice) picks there, the method that answered and, when that is not the trace, why.
    Searched analytically; with `confirm`, the pick must also fit by the trace (CONFIRM_TRIES traces in all): one
    the trace rejects is dropped and the rule picks again among the rest, then at the next count. Out of traces,
    the answer is an untraced candidate, said to be unconfirmed; never one the trace rejected."""
    per_node, budget, tie = setup.gpus_per_node, CONFIRM_TRIES, tie_fraction(hw.calibration)
    for n in _gpu_counts(per_node, max_gpus):
        s = setup.model_copy(update={"gpus_per_node": min(n, per_node), "nodes": max(1, n // per_node)})
        fit = [e for c in combos if (e := estimate(model, hw, s, c, Method.ANALYTIC)).fits]
        while fit:
            pick, _ = choose_fitting(fit, s.world_size, tie)  # the plan's own rule picks
            if not confirm or method is not Method.TRACED:
                return n, pick.combination, Method.ANALYTIC, None
            if budget == 0:
                return n, pick.combination, Method.ANALYTIC, _out_of_traces(pick.combination, n)
            budget -= 1
            t = estimate(model, hw, s, pick.combination, Method.TRACED)
            if t.trace_fallback is not None:
                return n, pick.combination, Method.ANALYTIC, t.trace_fallback
            if t.fits:
                return n, pick.combination, Method.TRACED, None
            fit.remove(pick)
    return None, None, Method.ANALYTIC, None


def _out_of_traces(combo: Combination, n: int) -> TraceFallback:
    return TraceFallback(
        cause=FallbackCause.TRIES_EXHAUSTED,
        message=f"the trace rejected the {CONFIRM_TRIES} picks it had time for; {combo.label()} on {n} GPUs is the "
        "formulas' answer, not confirmed by the trace",
    )


def trace_pick(
    model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, estimates: list[Estimate], pick: Estimate
) -> Estimate:
    """`pick` traced; it replaces the analytic estimate in `estimates` (so the table shows what answered)."""
    t = estimate(model, hw, setup, pick.combination, Method.TRACED)
    estimates[estimates.index(pick)] = t
    return t
