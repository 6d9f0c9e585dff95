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


def fmt_hours(h: float) -> str:
    """A time budget given in hours (--max-hours): in hours from a tenth of an hour up (2 h, 0.5 h, 1,000 h), a
    shorter one in the unit that shows it (3 min, 3.6 s, 0.36 ms); never in exponent notation (1e-07 h)."""
    if h >= 0.1:
        return f"{h:,.3f}".rstrip("0").rstrip(".") + " h"
    s = h * 3600
    if s >= 60:
        return f"{s / 60:.3g} min"
    return f"{s:.3g} s" if s >= 1 else f"{s * 1000:.3g} ms"


_BYTE_UNITS = {
    "b": 1,
    "kib": 2**10,
    "mib": 2**20,
    "gib": GiB,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_bytes(text: str, flag: str, bare_unit: str = "gib") -> int:
    """'1.5TiB', '512GiB', '1.2TB' or a bare number (in `bare_unit`) as a positive byte count; FtoptError otherwise."""
    import re

    from ftopt.spec.errors import FtoptError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = (m.group(2).lower() or bare_unit) if m else None
    if m is None or unit not in _BYTE_UNITS or float(m.group(1)) <= 0:
        raise FtoptError(f"{flag} must be a positive size such as 1.5TiB, 768GiB or a number of GiB, got '{text}'.")
    return int(float(m.group(1)) * _BYTE_UNITS[unit])


def ceil_div(total: int, parts: int) -> int:
    """ceil(total / parts) on integers (no float rounding): one rank's share of partitioned bytes, or how many
    blocks of `parts` elements hold `total`."""
    return -(-total // parts)
