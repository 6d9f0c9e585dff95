"""Times a full `plan` (96 combinations on a GPU: eager, SDPA and flash; + what-ifs) for llama-3.1-70b. Target: < 1 s.
Then once with method="traced" (what `ftopt plan` does by default): the same search, then the traced estimator
confirms the recommendation, the longest context and the fewest GPUs (a few FakeTensor traces; imports excluded).

.venv/bin/python benchmarks/plan_speed.py
"""

import statistics
import time

from ftopt import TrainingSetup, load_hardware, load_model, plan

model, hw = load_model("llama-3.1-70b"), load_hardware("a100-80g")
setup = TrainingSetup(seq_len=4096, gpus_per_node=8, dataset_tokens=100_000_000)
plan(model, hw, setup)  # warm-up (imports, pydantic schema build)
times = []
for _ in range(5):
    t0 = time.perf_counter()
    p = plan(model, hw, setup)
    times.append(time.perf_counter() - t0)
print(f"plan llama-3.1-70b on 8 x a100-80g, seq 4096: {len(p.candidates)} combinations + what-ifs")
print(f"median {statistics.median(times):.3f} s, max {max(times):.3f} s over {len(times)} runs (target < 1 s)")
print(f"recommended: {p.recommended.combination.label() if p.recommended else None}")

from ftopt.estimate.traced import traced_memory  # noqa: E402,F401  (import transformers/peft outside the timing)

t0 = time.perf_counter()
pt = plan(model, hw, setup, method="traced")
took = time.perf_counter() - t0
print(
    f"traced confirmation: {took:.2f} s ({took / statistics.median(times):.0f}x the analytic plan); "
    f"answered by {pt.recommended.method.value}, {pt.longest_context_method.value}, {pt.fewest_gpus_method.value}"
)
