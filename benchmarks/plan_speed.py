"""Times a full `plan` (96 combinations on a GPU: eager, SDPA and flash; + what-ifs) for llama-3.1-70b. Target: < 1 s.
Then once with method="traced" (what `ftopt plan` does by default): the same search, then the traced estimator
confirms the recommendation, the longest context and the fewest GPUs (a few FakeTensor traces; imports excluded).

Then the two first commands as a user runs them, each a fresh process (imports included): the analytic plan, the
confirmed plan with an empty trace store ($FTOPT_CACHE/traces: the first plan of a configuration) and again with
the store it left (a second plan, or the planner page). Target: the confirmed plan under 5 s on 2 cores; each time
is also given as a ratio to the analytic plan of the same run, which a loaded machine slows alike.

.venv/bin/python benchmarks/plan_speed.py
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ["FTOPT_CACHE"] = tempfile.mkdtemp()  # an empty trace store: every trace below runs
from ftopt import TrainingSetup, load_hardware, load_model, plan  # noqa: E402

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


COMMANDS = (
    ["--model", "llama-3.1-70b", "--gpu", "h100-80g", "--gpus", "8", "--seq-len", "4096"],
    ["--model", "llama-3.1-8b", "--gpu", "rtx4090", "--seq-len", "4096"],
)


def _cli_seconds(args: list[str], cache: str) -> float:
    env = {**os.environ, "FTOPT_CACHE": cache}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftopt", "plan", *args, "--json"], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


for args in COMMANDS:
    with tempfile.TemporaryDirectory() as cache:
        analytic = _cli_seconds([*args, "--method", "analytic"], cache)
        cold = _cli_seconds(args, cache)
        warm = _cli_seconds(args, cache)
    print(
        f"ftopt plan {' '.join(args)}: analytic {analytic:.1f} s; confirmed {cold:.1f} s "
        f"({cold / analytic:.1f}x) with an empty trace store, {warm:.1f} s ({warm / analytic:.1f}x) with it filled"
    )
