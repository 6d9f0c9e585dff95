"""One error type for every user mistake: the CLI prints its message as one line and exits 2."""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import ValidationError


class FtoptError(Exception):
    """A problem with the user's input or environment, phrased as one sentence they can act on."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of what a library's exception says, at most `limit` characters, to quote inside one of
    ftopt's sentences; its type name where it says nothing (a bare `ValueError()` has no first line)."""
    line = next(iter(str(e).splitlines()), "").strip() or type(e).__name__
    return line[:limit] if limit else line


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that stopped a run which knows what the user should hear (where its last checkpoint is and
    how to go on): the command prints this one line in place of its plain 'interrupted', so it is said once."""


class TraceUnavailable(FtoptError):
    """The traced estimator cannot run this model or input; callers fall back to the analytic method and say so.
    `error`: the type name of what the trace raised (e.g. UnsupportedOperatorException), for the typed warning."""

    def __init__(self, message: str, error: str = "FtoptError"):
        super().__init__(message)
        self.error = error


class FieldError(ValueError):
    """A validator's sentence that names fields of what it checks (`fields`, each a whole word of `message`). Said
    as written, with the field names, where the values came from a file (a plan, a run specification, a grid);
    validation_message(flags=True) says it with the flags the user typed instead (flag_of): the one mapping."""

    def __init__(self, message: str, *fields: str):
        super().__init__(message)
        self.fields = fields

    def worded(self, name: Callable[[str], str]) -> str:
        """The sentence with each of its fields called `name(field)`."""
        if not self.fields:
            return str(self)
        words = "|".join(re.escape(f) for f in sorted(self.fields, key=len, reverse=True))
        return re.sub(rf"\b({words})\b", lambda m: name(m.group(1)), str(self))


# Fields whose command-line flag is not `--` + the field's name with dashes (resolve and the CLI messages share it).
FIELD_FLAGS = {
    "gpus_per_node": "--gpus",
    "gc": "--gc/--no-gc",
    "learning_rate": "--lr",
    "train": "--data",
    "eval": "--eval-data",
    "dir": "--out",
    "hardware": "--gpu",
    "metrics": "--metric",
}


def flag_of(field: str) -> str:
    """The flag a user types for a field: seq_len -> --seq-len, gpus_per_node -> --gpus."""
    return FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def validation_message(err: ValidationError, flags: bool = False, values: bool = True) -> str:
    """Turn pydantic's multi-line report into one sentence naming the field and the bad value. With `flags` (the
    values came from the command line) a top-level field, and each field a validator's FieldError names, is
    named by its flag. Without `values` (they were read
    from a file, which may hold anything) pydantic's own checks repeat no value, only the field and its rule."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "input"
        if flags and len(e["loc"]) == 1:
            loc = flag_of(str(e["loc"][0]))
        msg = e["msg"].removeprefix("Value error, ")
        said = e.get("ctx", {}).get("error")
        if flags and isinstance(said, FieldError):
            msg = said.worded(flag_of)
        if e["type"] in ("value_error", "assertion_error") or not loc or loc == "input":
            parts.append(msg)  # ftopt's own validators: worded from fields already typed, never raw text
        else:
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})" if values else f"{loc}: {msg}")
    return "; ".join(parts)
