"""One error type for every user mistake: the CLI prints its message as one line and exits 2."""

from __future__ import annotations

from pydantic import ValidationError


class FtoptError(Exception):
    """A problem with the user's input or environment, phrased as one sentence they can act on."""


class TraceUnavailable(FtoptError):
    """The traced estimator cannot run this architecture; callers fall back to the analytic method."""


def validation_message(err: ValidationError) -> str:
    """Turn pydantic's multi-line report into one sentence naming the field and the bad value."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "input"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("value_error", "assertion_error") or not loc or loc == "input":
            parts.append(msg)
        else:
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})")
    return "; ".join(parts)
