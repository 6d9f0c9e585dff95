"""Trust comes only from the command line.

A plan or run file (`ftopt plan --out`, bench's run files, a colleague's shared plan, the `run.json` that
`plan --export`'s torchrun.sh hands to each rank) is data: it must not switch on code execution by itself.
`model.trust_remote_code: true` runs the model repo's Python code, and `data.metrics` imports a module; either in a
file is refused unless the command line that reads the file says so too (`--trust-remote-code`,
`--allow-metric-module`). The run then takes its trust flag from the command line.

`admit` is the one gate every way a run starts passes: ftopt.train.start.prepare and ftopt.train.engine.launch for
`train`, `train --plan`, bench's runs, per-node and hostfile runs; ftopt.train.ranks.rank_run for each launched or
torchrun-started rank.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError


class CommandLineTrust(BaseModel):
    """What the command line that starts a run allows; nothing in a file adds to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    trust_remote_code: bool = Field(False, description="--trust-remote-code: the model repo's own code may run")
    allow_metric_module: bool = Field(False, description="--allow-metric-module: data.metrics' modules may import")

    def flags(self) -> list[str]:
        """The same allowance for a child's command line (a launched rank, bench's `ftopt train`)."""
        return ["--trust-remote-code"] * self.trust_remote_code + ["--allow-metric-module"] * self.allow_metric_module


def admit(spec: RunSpec, trust: CommandLineTrust, source: str | Path | None = None) -> RunSpec:
    """`spec`, refused where it asks for code the command line did not allow; its trust_remote_code is the command
    line's. `source`: the file (or argument) it was read from, named in the refusal; None for a run the command line
    itself described."""
    where = f"{source}: " if source is not None else ""
    if spec.model.trust_remote_code and not trust.trust_remote_code:
        raise FtoptError(
            f"{where}model.trust_remote_code is true, but a file cannot allow {spec.model.ref}'s own code to run; "
            "add --trust-remote-code to this command if you trust it."
        )
    if spec.data.metrics and not trust.allow_metric_module:
        raise FtoptError(
            f"{where}data.metrics imports code ({', '.join(spec.data.metrics)}), which a file cannot allow; "
            "add --allow-metric-module to this command if you trust it, or give the metric with --metric."
        )
    model = spec.model.model_copy(update={"trust_remote_code": trust.trust_remote_code})
    return spec.model_copy(update={"model": model})
