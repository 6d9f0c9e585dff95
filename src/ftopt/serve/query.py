"""The page's state: one URL query, read into one typed `PlanQuery`.

Parameter names are the `ftopt plan` flags with '_' for '-' (`?model=llama-2-7b&gpu=rtx4090&seq_len=2048`), so a
link reads like the command line it stands for, and an error message naming a flag names the field beside which
the page shows it. Values are only parsed here (text to int/float/list); every range check is the planner's own, so
the page shows the CLI's message word for word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from pydantic import Field

from ftopt.planner.request import PlanLevers
from ftopt.spec.errors import FtoptError
from ftopt.spec.hardware import PLANNING_DEFAULT_GPU

DEFAULT_MODEL = "llama-2-7b"  # `ftopt plan --model` default (cli.plan)
DEFAULT_GPU = PLANNING_DEFAULT_GPU  # what estimate and plan assume without --gpu


class PlanQuery(PlanLevers):
    """Inputs of one plan, as the page sends them: the model, the hardware and the setup the page offers, and the
    levers of `ftopt plan` (PlanLevers, the same fields and defaults the CLI's PlanRequest has). None = not given:
    the planner's defaults apply."""

    model: str = DEFAULT_MODEL
    gpu: str = DEFAULT_GPU
    gpu_memory_gib: float | None = Field(None, description="custom GPU: device memory, GiB (replaces the preset's)")
    gpu_bandwidth_gbs: float | None = Field(
        None, description="custom GPU: memory bandwidth, GB/s (replaces the preset's)"
    )
    gpus: int | None = None
    nodes: int | None = None
    seq_len: int | None = None
    micro_batch: int | None = None
    precision: str | None = Field(None, description="training precision, as `plan --precision`")
    batching: str | None = Field(None, description="how rows are batched, as `plan --batching`")
    dataset_tokens: int | None = None
    headroom: float | None = Field(None, description="share of GPU memory kept free, as `plan --headroom`")

    def flags(self) -> list[str]:
        """The `ftopt plan` command line for these inputs (the custom GPU has no flag: a JSON file stands for it):
        the model, hardware and setup first, then the levers, as `ftopt plan --help` lists them."""
        given = self.model_dump(exclude_defaults=True)
        order = [n for n in type(self).model_fields if n not in PlanLevers.model_fields] + list(PlanLevers.model_fields)
        out = []
        for name in order:
            if name not in given or name.startswith("gpu_"):
                continue
            value = given[name]
            flag = "--" + name.replace("_", "-")
            out += [flag] if value is True else [flag, str(value)]
        return out


_INTS = {n for n, f in PlanQuery.model_fields.items() if f.annotation in (int, int | None)}
_FLOATS = {n for n, f in PlanQuery.model_fields.items() if f.annotation in (float, float | None)}
_BOOLS = {n for n, f in PlanQuery.model_fields.items() if f.annotation is bool}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_query(params: Mapping[str, str]) -> PlanQuery:
    """URL query values (strings; empty = not given) to a PlanQuery; a value that is not a number names its flag."""
    given = {}
    for name, raw in params.items():
        if name == "lang":
            continue  # the page's language, not a planning input
        if name not in PlanQuery.model_fields:
            raise FtoptError(f"Unknown parameter '{name}'; known: {', '.join(PlanQuery.model_fields)}.")
        text = raw.strip()
        if not text:
            continue
        try:
            if name in _INTS:
                given[name] = int(text)
            elif name in _FLOATS:
                given[name] = float(text)
                if not math.isfinite(given[name]):  # nan compares false with every bound; inf overflows sizes
                    raise ValueError(text)
            elif name in _BOOLS:
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError(text)
                given[name] = text.lower() in _TRUE
            else:
                given[name] = text
        except ValueError:
            kind = "an integer" if name in _INTS else "true or false" if name in _BOOLS else "a finite number"
            raise FtoptError(f"{_flag(name)} must be {kind}, got '{text}'.") from None
    return PlanQuery(**given)


# Where a message's subject is not a flag: the spec field it names, or its opening words.
_FIELD_ALIASES = {
    "gpus_per_node": "gpus",
    "memory_bytes": "gpu_memory_gib",
    "hbm_bandwidth_bytes_per_s": "gpu_bandwidth_gbs",
}
_OPENINGS = {
    "Unknown model": "model",
    "The model config": "model",
    "Unknown GPU": "gpu",
    "The hardware file": "gpu",
    "No combination": "quant",
    "LoRA target": "lora_targets",
}


def field_of(message: str) -> str | None:
    """The input a one-line error message is about (shown beside it), or None (shown above the results)."""
    m = re.search(r"--([a-z][a-z0-9-]*)", message)
    if m and (name := m.group(1).replace("-", "_")) in PlanQuery.model_fields:
        return name
    m = re.match(r"([a-z_]+)\b", message)
    if m:
        name = _FIELD_ALIASES.get(m.group(1), m.group(1))
        if name in PlanQuery.model_fields:
            return name
    return next((f for opening, f in _OPENINGS.items() if message.startswith(opening)), None)
