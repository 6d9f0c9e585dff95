"""CPU time of scoring the demo's held-out rows (64 words of the `back` task, greedy) on the shipped base model:
one row per generate() call against the demo's micro-batch (8) per call, in the same process, each three times.
Both must give the same completions; the figure is the ratio of the medians (a loaded machine slows both alike).
Every run scores twice (step 0 and the end), so the saving counts twice per run; under ZeRO-3 each forward also
gathers every layer over the ranks, so fewer forwards save more there.

.venv/bin/python benchmarks/generation_speed.py
"""

import statistics
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from ftopt.presets import base_model_dir
from ftopt.results.quality import generate
from ftopt.spec import TrainingSetup
from ftopt.sweep import sample_task
from ftopt.sweep.demo import DEMO_EVAL_EXAMPLES, DEMO_TRAIN_EXAMPLES

tok = AutoTokenizer.from_pretrained(base_model_dir())
model = AutoModelForCausalLM.from_pretrained(base_model_dir(), use_safetensors=True).eval()
_, rows = sample_task.finetune_task(DEMO_TRAIN_EXAMPLES, DEMO_EVAL_EXAMPLES)
batch = TrainingSetup.for_hardware(True, packing=True).micro_batch


def cpu_seconds(size: int) -> tuple[float, list[str]]:
    t0 = time.process_time()
    preds = generate(model, tok, rows, "cpu", log=lambda m: None, batch=size)
    return time.process_time() - t0, preds


generate(model, tok, rows[:2], "cpu", log=lambda m: None)  # warm-up: first-call dispatch and allocations
alone, batched = [], []
for _ in range(3):
    (t1, p1), (t8, p8) = cpu_seconds(1), cpu_seconds(batch)
    assert p1 == p8, "batched completions differ from one-row completions"
    alone.append(t1)
    batched.append(t8)
a, b = statistics.median(alone), statistics.median(batched)
print(f"{len(rows)} held-out rows, greedy, base model, CPU seconds (median of 3)")
print(f"  one row per generate(): {a:.2f} s")
print(f"  {batch} rows per generate():  {b:.2f} s")
print(f"  ratio: {a / b:.1f}x less CPU batched, same completions")
