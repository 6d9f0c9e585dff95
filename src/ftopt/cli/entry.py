"""The `ftopt` console entry: the Typer app, with click's usage errors as one line that names the bad value.

Typer (standalone) prints a usage block, a hint and "Invalid value for '--lora-r': Input should be a valid integer",
three lines that never show what was typed. Every other bad input in ftopt is one sentence naming the value, exit
code 2; this gives click's own refusals (a value its type cannot parse, an unknown option, a missing argument) the
same shape: `error: --lora-r: Input should be a valid integer, ... (got 'abc')`.
"""

from __future__ import annotations

import sys


def _given(param, argv: list[str]) -> str | None:
    """The text the user gave for `param` on the command line (`--opt VALUE` or `--opt=VALUE`), if it can be found."""
    names = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
    for i, word in enumerate(argv):
        for name in names:
            if word == name and i + 1 < len(argv):
                return argv[i + 1]
            if word.startswith(f"{name}="):
                return word[len(name) + 1 :]
    return None


def usage_line(e, argv: list[str]) -> str:
    """One line for a click usage error: the option, click's reason, and the value given."""
    param = getattr(e, "param", None)
    reason = " ".join(e.format_message().split())  # click's message, on one line
    if param is None:
        return f"error: {reason}"
    name = "/".join(getattr(param, "opts", ()) or [param.human_readable_name])
    reason = reason.removeprefix(f"Invalid value for '{name}': ").removeprefix(f"Invalid value for {name}: ")
    value = _given(param, argv)
    return f"error: {name}: {reason}" + (f" (got {value!r})" if value is not None else "")


def main() -> None:
    import typer
    from typer._click.exceptions import NoArgsIsHelpError, UsageError  # Typer's own click, not the click package's

    from ftopt.cli.app import app

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as e:  # `ftopt` alone: the help, as click shows it
        e.show()
        sys.exit(e.exit_code)
    except UsageError as e:
        print(usage_line(e, sys.argv[1:]), file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
