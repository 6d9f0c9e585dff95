"""Units: everything is computed in bytes, seconds and FLOPs; conversion happens only for display."""
from __future__ import annotations

GiB = 2**30
MiB = 2**20


def fmt_bytes(n: float) -> str:
    """Human-readable bytes in binary units (GiB / MiB), the units nvidia-smi and torch report."""
    if abs(n) >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"


def fmt_seconds(s: float) -> str:
    if s == float("inf"):
        return "n/a"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"
