"""What a plan falls short of, in one sentence: the limit the nearest candidate misses and the figures compared."""

from __future__ import annotations

from ftopt.estimate import Estimate
from ftopt.spec import HardwareSpec
from ftopt.spec.units import fmt_bytes


def _miss_text(cands: list[Estimate], hw: HardwareSpec) -> str:
    """Why the nearest of `cands` (none of which fits) does not: the --headroom margin when it fits the GPU and the
    host RAM (tight), else host RAM when its device total is within the margin, else device memory."""
    tight = [e for e in cands if e.tight]
    if tight:
        e = min(tight, key=lambda e: e.device_bytes_per_gpu)
        return (
            f"{e.combination.label()} needs {fmt_bytes(e.device_bytes_per_gpu)} of the {fmt_bytes(e.capacity_bytes)} "
            f"per GPU, more than the {fmt_bytes(e.usable_bytes)} usable with {e.headroom_fraction:.0%} kept free "
            "(--headroom): it fits the GPU, not the margin"
        )
    host_only = [e for e in cands if e.device_bytes_per_gpu <= e.usable_bytes]
    if host_only:  # within the margin on the GPUs: the offloaded states' host RAM is what does not fit
        e = min(host_only, key=lambda e: e.cpu_bytes_per_node)
        return (
            f"{e.combination.label()} fits the GPUs ({fmt_bytes(e.device_bytes_per_gpu)} of "
            f"{fmt_bytes(e.usable_bytes)} usable) but its offloaded states need {fmt_bytes(e.cpu_bytes_per_node)} "
            f"of host RAM per node, more than the {fmt_bytes(hw.host_memory_bytes)} assumed "
            "(set --host-ram if your nodes have more)"
        )
    e = min(cands, key=lambda e: e.device_bytes_per_gpu)
    margin = f" usable with {e.headroom_fraction:.0%} kept free" if e.headroom_fraction else ""
    return (
        f"the smallest combination ({e.combination.label()}) needs {fmt_bytes(e.device_bytes_per_gpu)} per GPU, "
        f"{fmt_bytes(e.device_bytes_per_gpu - e.usable_bytes)} more than the {fmt_bytes(e.usable_bytes)}{margin} "
        f"on a {hw.name}"
    )


def shortfall(estimates: list[Estimate], rec: Estimate | None, full_only: bool, hw: HardwareSpec) -> str | None:
    """Say what does not fit, and which limit it misses (_miss_text); or full fine-tuning when only LoRA fits."""
    if rec is None:
        return "nothing fits: " + _miss_text(estimates, hw)
    full = [e for e in estimates if not e.combination.lora]
    if not full_only and full and not any(e.fits for e in full):
        return "full fine-tuning does not fit: " + _miss_text(full, hw) + "; only LoRA combinations fit"
    return None
