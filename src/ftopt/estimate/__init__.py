"""Per-GPU memory and time of one combination, by the analytic formulas or by tracing the real training step."""

from __future__ import annotations

from ftopt.estimate import analytic, fsdp
from ftopt.estimate.allocator import reserved_slack_bytes
from ftopt.estimate.result import (
    SAMPLES_PER_QUOTE,
    Estimate,
    FallbackCause,
    MemoryBreakdown,
    Method,
    TraceFallback,
    usable_bytes,
)
from ftopt.estimate.time import step_time
from ftopt.spec import Batching, Combination, HardwareSpec, ModelSpec, TrainingSetup
from ftopt.spec.errors import FtoptError, TraceUnavailable
from ftopt.spec.policy import storage


def check_setup(model: ModelSpec, setup: TrainingSetup, combo: Combination, hw: HardwareSpec) -> list[str]:
    """Cross-object rules no single spec can check. Returns warnings; raises FtoptError for impossible input."""
    notes = []
    if setup.seq_len > model.max_positions:
        notes.append(
            f"seq-len {setup.seq_len} exceeds the model's {model.max_positions} positions; "
            "quality beyond that length is not guaranteed."
        )
    hw.check_runs(setup.precision, combo.attn)  # never estimate what the device cannot run
    note = _batching_note(setup)
    if note:
        notes.append(note)
    if combo.zero and setup.world_size == 1 and combo.offload.value == "none":
        notes.append("ZeRO on one GPU partitions nothing; it only adds DeepSpeed's buffers.")
    return notes


def _batching_note(setup: TrainingSetup) -> str | None:
    """What the estimate assumes about the rows' lengths, where the data decides (estimate/layout.py)."""
    s = setup.seq_len
    if setup.batching is Batching.PADDED:
        return (
            f"Assumes a micro-batch whose longest row is --seq-len {s} tokens (padding to the longest sets the "
            "shape); shorter data needs less (--batching packed fills the rows, padded-max always pads to it)."
        )
    if setup.batching is Batching.FULL:
        return (
            f"Assumes every row is exactly --seq-len {s} tokens, with no padding and so no attention mask; data "
            "with shorter rows is padded and needs more with SDPA (--batching padded)."
        )
    return None


def estimate(
    model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination, method: Method | str = Method.ANALYTIC
) -> Estimate:
    """Per-GPU peak memory, device total, fit and step/epoch time of `combo`."""
    method = Method(method)
    notes = check_setup(model, setup, combo, hw)
    (bd, phase, cpu), method, fallback = _peak_memory(model, hw, setup, combo, method)
    peak = bd.total()
    # the caching allocator holds cached blocks beyond the allocated peak; the device adds its context and NCCL
    reserved = peak + reserved_slack_bytes(model, setup, storage(setup.precision, combo), on_gpu=not hw.is_cpu)
    device = analytic.device_bytes(reserved, combo, hw.is_cpu, setup.world_size)
    t = step_time(model, setup, combo, hw)
    steps = setup.steps_per_epoch()
    fits, tight, fit_notes = _fit(hw, setup, device, cpu)
    notes += fit_notes
    return Estimate(
        method=method,
        model=model.name,
        hardware=hw.name,
        combination=combo,
        peak_bytes_per_gpu=peak,
        reserved_bytes_per_gpu=reserved,
        device_bytes_per_gpu=device,
        breakdown=bd,
        peak_phase=phase,
        cpu_bytes_per_node=cpu,
        capacity_bytes=hw.memory_bytes,
        headroom_fraction=setup.headroom,
        fits=fits,
        tight=tight,
        trainable_params=analytic.trainable_params(model, combo),
        total_params=model.param_count(),
        step_seconds=t.step_seconds,
        steps_per_epoch=steps,
        epoch_seconds=t.step_seconds * steps,
        total_seconds=t.step_seconds * steps * setup.epochs,
        per_dataset=setup.dataset_tokens is not None,
        seconds_per_1k_samples=t.step_seconds
        * SAMPLES_PER_QUOTE
        / (setup.micro_batch * setup.grad_accum * setup.world_size),
        calibration=hw.calibration,
        time_constants=hw.time_constants,
        flops_per_step=t.flops_per_step,
        comm_seconds=t.comm_seconds,
        kernels_per_step=t.kernels_per_step,
        overhead_seconds=t.overhead_seconds,
        notes=notes,
        trace_fallback=fallback,
    )


def _peak_memory(
    model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination, method: Method
) -> tuple[tuple[MemoryBreakdown, str, int], Method, TraceFallback | None]:
    """((breakdown at the peak, phase, host RAM per node), the method that answered, why a trace fell back)."""
    traced, fallback = None, None
    if method is Method.TRACED:
        from ftopt.estimate.traced import traced_memory  # lazy: imports transformers and peft

        try:
            target = "cpu" if hw.is_cpu else "cuda"
            if combo.uses_fsdp:  # the activation side of a rank's step, as it computes; FSDP2's sharding added below
                view_setup, view = fsdp.compute_view(setup, combo)
                traced = traced_memory(model, view_setup, view, target, phases=fsdp.TRACED_PHASES)
            else:
                traced = traced_memory(model, setup, combo, target=target)
        except TraceUnavailable as e:  # never a dead end: say why (a warning, typed) and answer analytically
            fallback = TraceFallback(cause=FallbackCause.TRACE_UNAVAILABLE, error=e.error, message=str(e))
            method = Method.ANALYTIC
    if combo.uses_fsdp:
        # CPU ranks reduce over gloo, GPU ranks over NCCL (ftopt.train.fsdp_worker)
        peak = fsdp.peak(model, setup, combo, traced[0] if traced is not None else None, gloo=hw.is_cpu)
    elif traced is not None:
        peak = traced
    else:
        peak = analytic.memory(model, setup, combo, on_gpu=not hw.is_cpu)
    return peak, method, fallback


def _fit(hw: HardwareSpec, setup: TrainingSetup, device: int, cpu: int) -> tuple[bool, bool, list[str]]:
    """(fits, tight, notes): `device` bytes per GPU against the GPU less the headroom (setup.headroom), `cpu`
    bytes per node against the node's RAM; tight = fits the GPU but not the headroom."""
    notes = []
    host_ok = cpu <= hw.host_memory_bytes
    fits = host_ok and device <= usable_bytes(hw.memory_bytes, setup.headroom)
    tight = host_ok and not fits and device <= hw.memory_bytes
    if tight:
        notes.append(
            f"tight: fits the GPU but not the {setup.headroom:.0%} kept free (--headroom); "
            "a run this close to the limit can fail on fragmentation or another process."
        )
    if not host_ok:
        notes.append("offloaded states need more host RAM than the node has.")
    return fits, tight, notes


def predictions(model: ModelSpec, hw: HardwareSpec, setup: TrainingSetup, combo: Combination) -> dict:
    """Both methods' predictions for one run, as stored beside measurements (metrics.json, bench results): per
    method `method` (the one that answered), `peak_bytes_per_gpu`, `reserved_bytes_per_gpu`, `device_bytes_per_gpu`, `fits` and `tight` (against
    setup.headroom), `step_seconds`, `flops_per_step`,
    `kernels_per_step`, `breakdown`, `notes` (e.g. why a trace fell back to the formulas), or `error` when it cannot
    run."""
    out: dict = {"hardware": hw.name}
    for method in Method:
        try:
            e = estimate(model, hw, setup, combo, method)
            # `method`: what answered (a trace that cannot run falls back to the formulas, and says so here)
            out[method.value] = {
                "method": e.method.value,
                "peak_bytes_per_gpu": e.peak_bytes_per_gpu,
                "reserved_bytes_per_gpu": e.reserved_bytes_per_gpu,
                "device_bytes_per_gpu": e.device_bytes_per_gpu,
                "fits": e.fits,
                "tight": e.tight,
                "step_seconds": e.step_seconds,
                "flops_per_step": e.flops_per_step,
                "kernels_per_step": e.kernels_per_step,
                "breakdown": e.breakdown.model_dump(),
                "notes": e.notes,
                "trace_fallback": e.trace_fallback.model_dump(mode="json") if e.trace_fallback else None,
            }
        except FtoptError as err:
            out[method.value] = {"error": str(err)}
    return out


__all__ = [
    "Estimate",
    "FallbackCause",
    "MemoryBreakdown",
    "Method",
    "TraceFallback",
    "check_setup",
    "estimate",
    "predictions",
]
