"""What the page draws besides the plan JSON, derived from the plan's candidates only (no estimate here)."""

from __future__ import annotations

import json

# Each technique: the combination field it sets, its "off" value, its "on" values in the order tried. Another field
# that must change with it for the combination to be valid (Combination's validator) follows in `also_off`.
TECHNIQUES = (
    ("lora", "lora_r", 0, None, {"quant": "none", "lora_targets": None}),
    ("quant", "quant", "none", ("nf4", "int8"), {}),
    ("gc", "gc", False, (True,), {}),
    ("zero", "zero", 0, (3, 2, 1), {"offload": "none"}),
    ("offload", "offload", "none", ("optimizer", "all"), {}),
    ("optim", "optim", "adamw", ("adamw-8bit", "paged-adamw-8bit", "paged-adamw"), {}),
    ("flash", "attn", "sdpa", ("flash",), {}),
)
KEY_FIELDS = ("gc", "lora_r", "zero", "offload", "attn", "lora_targets", "quant", "optim")


def _key(c: dict) -> str:
    return json.dumps([c.get(f) for f in KEY_FIELDS])


def cost_seconds(c: dict) -> float:
    """The time the plan ranks by: the whole run with a dataset size, else per 1k samples."""
    return c["total_seconds"] if c["total_seconds"] is not None else c["seconds_per_1k_samples"]


def pareto(candidates: list[dict]) -> list[int]:
    """Indices of the fitting candidates no other fitting one beats on both memory and time, by memory."""
    fit = sorted(
        (i for i, c in enumerate(candidates) if c["fits"]), key=lambda i: candidates[i]["device_bytes_per_gpu"]
    )
    front, best = [], float("inf")
    for i in fit:
        t = cost_seconds(candidates[i])
        if t < best:
            front.append(i)
            best = t
    return front


def techniques(doc: dict) -> list[dict]:
    """For the recommendation: each technique on and off, all else equal; indices into candidates (None: that
    variant is not among the candidates, e.g. a technique the plan was told not to try)."""
    rec = doc["recommended"]
    if rec is None:
        return []
    index = {_key(c): i for i, c in enumerate(doc["candidates"])}
    lora_r = next((c["lora_r"] for c in doc["candidates"] if c["lora_r"]), None)
    out = []
    for name, field, off, ons, also_off in TECHNIQUES:
        on_values = (lora_r,) if name == "lora" else ons
        is_on = rec[field] != off
        off_i = index.get(_key({**rec, field: off, **also_off}))
        on_i = (
            index.get(_key(rec))
            if is_on
            else next((i for v in on_values if (i := index.get(_key({**rec, field: v}))) is not None), None)
        )
        if on_i is None and off_i is None:
            continue
        out.append({"technique": name, "recommended_uses": is_on, "on": on_i, "off": off_i})
    return out


def views(doc: dict) -> dict:
    return {"pareto": pareto(doc["candidates"]), "techniques": techniques(doc)}
