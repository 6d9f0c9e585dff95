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
CONFIG = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6,
          "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8000, "max_position_embeddings": 512}
SEQ, BATCH = 128, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # one core per run, as `ftopt bench`
# (name, baseline name, flags): each quantized / 8-bit variant beside the run it replaces
VARIANTS = [("LoRA r8", None, ["--lora-r", "8"]),
            ("QLoRA NF4 r8", "LoRA r8", ["--lora-r", "8", "--quant", "nf4"]),
            ("LoRA r8 int8 base", "LoRA r8", ["--lora-r", "8", "--quant", "int8"]),
            ("full AdamW", None, ["--lora-r", "0"]),
            ("full 8-bit AdamW", "full AdamW", ["--lora-r", "0", "--optim", "adamw-8bit"])]


def run(work: Path, name: str, flags: list[str], steps: int) -> dict:
    cfg = work / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    out = work / name.replace(" ", "_")
    cmd = [sys.executable, "-m", "ftopt", "train", "--random-init", str(cfg), "--out", str(out), "--overwrite",
           "--max-steps", str(steps), "--seq-len", str(SEQ), "--micro-batch", str(BATCH), "--packing",
           "--precision", "fp32", "--eval-max-examples", "0", "--json", *flags]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV)
    m = json.loads((out / "metrics.json").read_text())
    return {"measured_seconds": m["measured"]["step_seconds"], "predicted_seconds": m["predicted"]["analytic"]["step_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
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
        row = {"variant": name, **m, "measured_ratio": m["measured_seconds"] / b["measured_seconds"] if b else None,
               "predicted_ratio": m["predicted_seconds"] / b["predicted_seconds"] if b else None}
        rows.append(row)
        ratios = (f"{row['measured_ratio']:.2f}x | {row['predicted_ratio']:.2f}x" if b else "- | -")
        print(f"| {name} | {m['measured_seconds'] * 1e3:.0f} | {m['predicted_seconds'] * 1e3:.0f} | {ratios} |")
    from ftopt.io import atomic_write_text

    atomic_write_text(ROOT / "benchmarks" / "results" / "quant_time.json",
                      json.dumps({"config": CONFIG, "seq_len": SEQ, "micro_batch": BATCH, "steps": a.steps,
                                  "rounds": a.rounds, "runs": seen, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
