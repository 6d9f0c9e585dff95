"""What a quantized base and an 8-bit optimizer cost in step time, measured against the time model's prediction.
Prints figures; not a test (shared machines are noisy, so the variants alternate in one run, each on one thread,
and are compared as ratios to their unquantized / 32-bit twin).

    .venv/bin/python benchmarks/quant_time.py               # ~10 min on 2 shared cores
    .venv/bin/python benchmarks/quant_time.py --rounds 1    # quicker, noisier

Each variant is `ftopt train` on a random-init llama (~30M parameters), fp32, seq 128 x 4, `--steps` optimizer
steps; its median steady step time comes from its metrics.json, and so does the prediction it was trained under
(this machine's calibration where one is stored, else the uncalibrated CPU preset). The time model's terms are in
src/ftopt/estimate/time.py ([Dequant], [Optimizer]): dequantization and the optimizer update as memory traffic
at the device's bandwidth. Writes benchmarks/results/quant_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# large enough that matmuls, not per-operator dispatch, carry most of a step, small enough for a shared CPU
CONFIG = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 8000,
    "max_position_embeddings": 512,
}
SEQ, BATCH = 128, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # one core per run, as `ftopt bench`
# (name, baseline name, flags): each quantized / 8-bit variant beside the run it replaces
VARIANTS = [
    ("LoRA r8", None, ["--lora-r", "8"]),
    ("QLoRA NF4 r8", "LoRA r8", ["--lora-r", "8", "--quant", "nf4"]),
    ("LoRA r8 int8 base", "LoRA r8", ["--lora-r", "8", "--quant", "int8"]),
    ("full AdamW", None, ["--lora-r", "0"]),
    ("full 8-bit AdamW", "full AdamW", ["--lora-r", "0", "--optim", "adamw-8bit"]),
]


def run(work: Path, name: str, flags: list[str], steps: int) -> dict:
    cfg = work / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    out = work / name.replace(" ", "_")
    cmd = [
        sys.executable,
        "-m",
        "ftopt",
        "train",
        "--random-init",
        str(cfg),
        "--out",
        str(out),
        "--overwrite",
        "--max-steps",
        str(steps),
        "--seq-len",
        str(SEQ),
        "--micro-batch",
        str(BATCH),
        "--packing",
        "--precision",
        "fp32",
        "--eval-max-examples",
        "0",
        "--json",
        *flags,
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV)
    m = json.loads((out / "metrics.json").read_text())
    return {
        "measured_seconds": m["measured"]["step_seconds"],
        "predicted_seconds": m["predicted"]["analytic"]["step_seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--hidden", type=int, help="another model width (a check of the rates on a second size)")
    a = ap.parse_args()
    a.tag = ""
    if a.hidden:  # same shape ratios (llama's 8/3 MLP), another size
        CONFIG.update(hidden_size=a.hidden, intermediate_size=int(a.hidden * 8 / 3) // 32 * 32)
        a.tag = f"_h{a.hidden}"
    seen: dict[str, list[dict]] = {n: [] for n, _, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ftopt-quant-time-") as tmp:
        for r in range(a.rounds):
            for name, _, flags in VARIANTS:  # alternate: a load spike hits every variant of a round alike
                seen[name].append(run(Path(tmp), name, flags, a.steps))
                print(f"round {r + 1}: {name}: {seen[name][-1]['measured_seconds'] * 1e3:.0f} ms/step", flush=True)
    med = {n: {k: statistics.median(x[k] for x in v) for k in v[0]} for n, v in seen.items()}
    rows = []
    print("\n| variant | measured ms/step | predicted ms/step | measured vs its twin | predicted vs its twin |")
    print("|---|---|---|---|---|")
    for name, base, _ in VARIANTS:
        m, b = med[name], med[base] if base else None
        row = {
            "variant": name,
            **m,
            "measured_ratio": m["measured_seconds"] / b["measured_seconds"] if b else None,
            "predicted_ratio": m["predicted_seconds"] / b["predicted_seconds"] if b else None,
        }
        rows.append(row)
        ratios = f"{row['measured_ratio']:.2f}x | {row['predicted_ratio']:.2f}x" if b else "- | -"
        print(f"| {name} | {m['measured_seconds'] * 1e3:.0f} | {m['predicted_seconds'] * 1e3:.0f} | {ratios} |")
    rates = achieved_rates(med)
    print(
        f"\nachieved on this machine: dequantization {rates['dequant_bytes_per_s'] / 1e9:.2f} GB/s, "
        f"8-bit optimizer update {rates['bnb_optimizer_bytes_per_s'] / 1e9:.2f} GB/s "
        "(the cpu entry of presets/time_constants.json: dequant_bytes_per_s / bnb_optimizer_bytes_per_s)"
    )
    from ftopt.spec.io import atomic_write_text

    atomic_write_text(
        ROOT / "benchmarks" / "results" / f"quant_time{a.tag}.json",
        json.dumps(
            {
                "config": CONFIG,
                "seq_len": SEQ,
                "micro_batch": BATCH,
                "steps": a.steps,
                "rounds": a.rounds,
                "runs": seen,
                "rows": rows,
                "rates": rates,
            },
            indent=2,
        ),
    )


def achieved_rates(med: dict) -> dict:
    """The bytes the time model counts for dequantization and the 8-bit update, over the extra seconds each
    variant measured beside its twin. The 32-bit AdamW update the 8-bit one replaces is left in the twin: at
    28 bytes per parameter it is a few percent of the extra here."""
    from ftopt.estimate.time import dequant_bytes, optimizer_bytes
    from ftopt.spec import Combination, TrainingSetup, from_hf_config

    spec, setup = from_hf_config(CONFIG, "quant-time"), TrainingSetup(seq_len=SEQ, micro_batch=BATCH, precision="fp32")
    extra_dequant = med["QLoRA NF4 r8"]["measured_seconds"] - med["LoRA r8"]["measured_seconds"]
    extra_optim = med["full 8-bit AdamW"]["measured_seconds"] - med["full AdamW"]["measured_seconds"]
    nf4, eight = Combination(lora_r=8, quant="nf4"), Combination(optim="adamw-8bit")
    return {
        "dequant_bytes_per_s": dequant_bytes(spec, setup, nf4) / extra_dequant if extra_dequant > 0 else None,
        "bnb_optimizer_bytes_per_s": optimizer_bytes(spec, setup, eight) / extra_optim if extra_optim > 0 else None,
    }


if __name__ == "__main__":
    main()
