#!/usr/bin/env bash
# GPU check (one H200, < 8 min): real bf16 training steps of 0.5B-8B presets per combination (flash included),
# torch.cuda.max_memory_allocated/reserved vs the analytic and traced estimates.
# Writes benchmarks/results/gpu_check.json and prints the table.
#   bash benchmarks/gpu_check.sh
# Needs a CUDA torch and flash-attn in .venv (or the current python); falls back to python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout 470 "$PY" benchmarks/estimate_accuracy.py --gpu
