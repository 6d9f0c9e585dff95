#!/usr/bin/env bash
# GPU check (one H100 or H200, < 10 min): the CUDA context, one full fine-tune per precision with and without
# padding, DoRA, LoRA + flash and QLoRA on 8B, measured by `ftopt train` against both estimators (allocated and
# reserved peaks, device total, step time); printed as benchmarks/published.py's table, rows appended to
# benchmarks/results/gpu_check.jsonl as each run finishes (and copied to $OUT when set, for the device tool).
#   bash benchmarks/gpu_check.sh
# Needs a CUDA torch in .venv (or the current python): says what is missing and stops at once otherwise (exit 2).
# Without flash-attn, bitsandbytes or `--dora` the rows that need them are skipped, each saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
status=0
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout 570 "$PY" benchmarks/gpu_check.py || status=$?
if [ -n "${OUT:-}" ] && [ -f benchmarks/results/gpu_check.jsonl ]; then cp benchmarks/results/gpu_check.jsonl "$OUT/"; fi
exit $status
