"""Replay consecutive training steps of a published row through the CUDA caching allocator's rules, at full depth.
Prints figures; not a test, and not an estimate (docs/accuracy.md "Why full fine-tuning is low and LoRA high").

    python benchmarks/peft_replay.py peft-full --lengths 650,150,650,630,610 --empty-after 0,1
    python benchmarks/peft_replay.py peft-lora-r32-qv --lengths 150,650,630,610 --empty-after 0 --no-kv-cache

The row's setup (benchmarks/published/rows.json) is traced on FakeTensors with every layer, one step per entry of
--lengths (the batch's padded length), in the order PEFT's MetaMathQA loop runs a step (run.py train):
zero_grad(), forward, backward, clip_grad_norm_, AdamW's step (foreach; the states appear at the first). The loop
keeps `outputs` until the next forward returns. After each step named in --empty-after, torch.cuda.empty_cache()
is replayed (Replay.empty_cache). Each step prints its allocated and reserved peaks; the reserved one is what
torch.cuda.max_memory_reserved would report over the steps so far if it were reset at that step's start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
GIB = 2**30


def _setup(row_id: str, kv_cache: bool):
    from ftopt.spec import Combination, TrainingSetup, load_model

    rows = json.loads((ROOT / "benchmarks" / "published" / "rows.json").read_text())["rows"]
    row = next((r for r in rows if r["id"] == row_id and "setup" in r), None)
    if row is None:
        print(f"no predicted row named {row_id!r} in benchmarks/published/rows.json", file=sys.stderr)
        sys.exit(2)
    s = dict(row["setup"])
    spec = load_model(s.pop("model"))
    s.pop("hardware")
    combo = Combination(**{k: s.pop(k) for k in Combination.model_fields if k in s})
    s["kv_cache"] = kv_cache and s.get("keeps_outputs", False)
    return spec, TrainingSetup(**s), combo


def replay(row_id: str, lengths: list[int], empty_after: set[int], kv_cache: bool) -> None:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftopt.estimate import layout
    from ftopt.estimate.allocator import Replay
    from ftopt.estimate.quant import quantized_weight_bytes
    from ftopt.estimate.trace_optimizer import traced_optimizer
    from ftopt.estimate.traced import CUDA_ALLOC_GRANULARITY, _engine_view, _materialize, _StorageMode, _Tracker
    from ftopt.model.build import build_model
    from ftopt.model.quantize import stand_in_linears

    spec, setup, combo = _setup(row_id, kv_cache)
    tracker = _Tracker(grad_weight=1.0, count_states=True, granularity=CUDA_ALLOC_GRANULARITY)
    tracker.replay = rep = Replay(expandable=setup.expandable_segments)
    t0 = time.perf_counter()
    model = build_model(
        spec,
        _engine_view(combo),
        setup.precision,
        device="meta",
        num_layers=spec.num_layers,
        quantize_linears=partial(stand_in_linears, storage_bytes=quantized_weight_bytes),
    )
    with FakeTensorMode(allow_non_fake_inputs=True), layout.packed_detection(setup.packing):
        _materialize(model, "cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        for p in model.parameters():
            tracker.add(p.untyped_storage(), "weights")
        opt = traced_optimizer(model, params, spec, combo, setup, True, tracker.retag)
        with _StorageMode(tracker):
            outputs = None  # the loop's variable: the previous step's outputs live until the next forward returns
            for i, n in enumerate(lengths):
                inputs = layout.step_inputs(setup.model_copy(update={"seq_len": n}), combo, "cpu")
                if setup.kv_cache and not combo.gc:
                    inputs["use_cache"] = True
                rep.peak_allocated, rep.peak_reserved = rep.allocated, rep.reserved
                opt.zero_grad(set_to_none=True)
                outputs = model(**inputs)
                outputs.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                print(
                    f"step {i} ({n:4} tokens a row): peak allocated {rep.peak_allocated / GIB:6.2f} GiB, "
                    f"peak reserved {rep.peak_reserved / GIB:6.2f} GiB; after the step {rep.allocated / GIB:6.2f} "
                    f"allocated ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
                if i in empty_after:
                    rep.empty_cache()
                    print(f"  empty_cache: {rep.reserved / GIB:.2f} GiB reserved", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row", help="a predicted row of benchmarks/published/rows.json, e.g. peft-full")
    ap.add_argument("--lengths", required=True, help="comma-separated padded length of each step's batch")
    ap.add_argument("--empty-after", default="", help="comma-separated step indices (from 0) followed by empty_cache")
    ap.add_argument("--no-kv-cache", action="store_true", help="trace the forward without transformers' KV cache")
    a = ap.parse_args()
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
        empty = {int(x) for x in a.empty_after.split(",") if x}
    except ValueError:
        ap.error(f"--lengths and --empty-after take comma-separated integers, got {a.lengths!r} and {a.empty_after!r}")
    if min(lengths) <= 0:
        ap.error(f"--lengths needs positive token counts, got {a.lengths!r}")
    replay(a.row, lengths, empty, not a.no_kv_cache)


if __name__ == "__main__":
    main()
