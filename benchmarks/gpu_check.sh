#!/usr/bin/env bash
# GPU check (one H200, < 8 min): `ftopt train` scenarios (LoRA + flash, full + GC, LoRA + ZeRO-2, QLoRA) measured
# against the planner's memory and time predictions; rows appended to benchmarks/results/gpu_check.jsonl as each
# run finishes (and copied to $OUT when set, for the device tool).
#   bash benchmarks/gpu_check.sh
# Needs a CUDA torch and flash-attn in .venv (or the current python); says what is missing and stops otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
status=0
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout 450 "$PY" benchmarks/gpu_check.py || status=$?
if [ -n "${OUT:-}" ] && [ -f benchmarks/results/gpu_check.jsonl ]; then cp benchmarks/results/gpu_check.jsonl "$OUT/"; fi
exit $status
