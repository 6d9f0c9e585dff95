"""What the page draws besides the plan JSON, derived from the plan's candidates only (no estimate here)."""

from __future__ import annotations

import json

# Each technique: the fields that say whether a candidate uses it, its "off" setting, then the "on" settings tried
# in order (the first that the plan has wins); an "on" setting may change another field too where Combination's
# validator needs it (offload needs a ZeRO stage or FSDP2; ZeRO-3 takes no quantized base). "LORA" stands for the
# plan's LoRA settings (LORA_FIELDS of its LoRA candidates: all of them share the rank, targets and variant). Sharding is one technique whichever engine does it: ZeRO (`zero`) or FSDP2 (`fsdp`),
# exclusive, off meaning neither.
LORA_FIELDS = ("lora_r", "lora_targets", "dora", "rslora", "lora_dropout")
TECHNIQUES = (
    (
        "lora",
        ("lora_r",),
        {"lora_r": 0, "quant": "none", "lora_targets": None, "dora": False, "rslora": False, "lora_dropout": 0.0},
        ["LORA"],
    ),
    ("quant", ("quant",), {"quant": "none"}, [{"quant": "nf4"}, {"quant": "int8"}]),
    ("gc", ("gc",), {"gc": False}, [{"gc": True}]),
    (
        "sharding",
        ("zero", "fsdp"),
        {"zero": 0, "fsdp": "none", "offload": "none"},
        [{"zero": 3}, {"zero": 2}, {"zero": 1}, {"fsdp": "full"}, {"fsdp": "grad-op"}],
    ),
    (
        "offload",
        ("offload",),
        {"offload": "none"},
        [
            {"offload": "optimizer"},
            {"offload": "optimizer", "zero": 2},
            {"offload": "optimizer", "zero": 1},
            {"offload": "all"},
        ],
    ),
    (
        "optim",
        ("optim",),
        {"optim": "adamw"},
        [{"optim": "adamw-8bit"}, {"optim": "paged-adamw-8bit"}, {"optim": "paged-adamw"}],
    ),
    ("flash", ("attn",), {"attn": "sdpa"}, [{"attn": "flash"}]),
)
# every Combination.key() field: candidates that differ only in a LoRA variant or the QLoRA recipe stay apart
KEY_FIELDS = (
    "gc",
    "lora_r",
    "zero",
    "fsdp",
    "offload",
    "attn",
    "lora_targets",
    "quant",
    "optim",
    "dora",
    "rslora",
    "qlora_recipe",
    "lora_dropout",
)


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
    lora = next(({f: c[f] for f in LORA_FIELDS} for c in doc["candidates"] if c["lora_r"]), None)
    out = []
    for name, fields, off, ons in TECHNIQUES:
        is_on = any(rec[f] != off[f] for f in fields)
        off_i = index.get(_key({**rec, **off}))
        if is_on:
            on_i = index.get(_key(rec))
        else:
            tries = (lora if on == "LORA" else on for on in ons)
            on_i = next((i for on in tries if on and (i := index.get(_key({**rec, **on}))) is not None), None)
        if on_i is None and off_i is None:
            continue
        out.append({"technique": name, "recommended_uses": is_on, "on": on_i, "off": off_i})
    return out


def views(doc: dict) -> dict:
    return {"pareto": pareto(doc["candidates"]), "techniques": techniques(doc)}
