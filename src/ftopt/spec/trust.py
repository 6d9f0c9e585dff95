"""Trust comes only from the command line.

A plan or run file (`ftopt plan --out`, bench's run files, a colleague's shared plan) is data: it must not switch
on code execution by itself. `model.trust_remote_code: true` runs the model repo's Python code, and `data.metrics`
imports a module; either in a file is refused unless the command line that reads the file says so too
(`--trust-remote-code`, `--allow-metric-module`). The run then takes its trust flag from the command line.
"""

from __future__ import annotations

from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError


def trusted_file_run(spec: RunSpec, path: Path, *, trust_remote_code: bool, allow_metric_module: bool) -> RunSpec:
    """`spec` as read from `path`, refused where the file asks for code the command line did not allow; its
    trust_remote_code is the command line's."""
    if spec.model.trust_remote_code and not trust_remote_code:
        raise FtoptError(
            f"{path}: model.trust_remote_code is true, but a file cannot allow {spec.model.ref}'s own code to run; "
            "add --trust-remote-code to this command if you trust it."
        )
    if spec.data.metrics and not allow_metric_module:
        raise FtoptError(
            f"{path}: data.metrics imports code ({', '.join(spec.data.metrics)}), which a file cannot allow; "
            "add --allow-metric-module to this command if you trust it, or give the metric with --metric."
        )
    return spec.model_copy(update={"model": spec.model.model_copy(update={"trust_remote_code": trust_remote_code})})
