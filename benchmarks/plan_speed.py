"""Times a full `plan` (96 combinations on a GPU: eager, SDPA and flash; + what-ifs) for llama-3.1-70b. Target: < 1 s.
Then twice with method="traced" (what `ftopt plan` does by default): the same search, then the traced estimator
confirms the recommendation, the longest context and the fewest GPUs, first from the trace results ftopt ships
(presets/traces.json), then without them (a few FakeTensor traces; imports excluded).

Then the first commands as a user runs them, each a fresh process (imports included): the analytic plan, the
confirmed plan with an empty trace store ($FTOPT_CACHE/traces: the first plan of a configuration) and again with
the store it left (a second plan, or the planner page). The first two commands are among the plans whose traces
ftopt ships (presets/traces.json, scripts/trace_seed.py); the third is not, so its first plan traces. Target: the
confirmed plan under 5 s on 2 cores. Each time is wall-clock and CPU (user + sys of the process), and each is also
a ratio to the analytic plan of the same run, which a loaded machine slows alike.

.venv/bin/python benchmarks/plan_speed.py
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

# torch, transformers and peft imported outside the timing
import peft  # noqa: E402,F401
import transformers.models.llama.modeling_llama  # noqa: E402,F401

from ftopt.estimate import trace_cache  # noqa: E402
from ftopt.estimate.traced import traced_memory  # noqa: E402,F401


def _confirmed() -> tuple[float, str]:
    t0 = time.perf_counter()
    pt = plan(model, hw, setup, method="traced")
    by = f"{pt.recommended.method.value}, {pt.longest_context_method.value}, {pt.fewest_gpus_method.value}"
    return time.perf_counter() - t0, by


analytic_s = statistics.median(times)
took, by = _confirmed()
print(f"traced confirmation, the shipped table answering: {took:.2f} s ({took / analytic_s:.0f}x the analytic plan)")
trace_cache.forget()
for f in (Path(os.environ["FTOPT_CACHE"]) / "traces").glob("*.json"):
    f.unlink()
trace_cache.seed_path = lambda: Path(os.devnull)  # no table: every confirmation below is traced
took, by = _confirmed()
print(
    f"traced confirmation, each trace run: {took:.2f} s ({took / analytic_s:.0f}x the analytic plan); answered by {by}"
)


COMMANDS = (
    ["--model", "llama-3.1-70b", "--gpu", "h100-80g", "--gpus", "8", "--seq-len", "4096"],
    ["--model", "llama-3.1-8b", "--gpu", "rtx4090", "--seq-len", "4096"],
    ["--model", "llama-3.1-8b", "--gpu", "rtx4090", "--seq-len", "3072"],  # not in the packaged table
)


def _cli_seconds(args: list[str], cache: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `ftopt plan ARGS --json` in a fresh process with the trace store at `cache`."""
    env = {**os.environ, "FTOPT_CACHE": cache}
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftopt", "plan", *args, "--json"], env=env, check=True, capture_output=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _timed(name: str, took: tuple[float, float], base: tuple[float, float]) -> str:
    return f"{name} {took[0]:.1f} s wall ({took[0] / base[0]:.1f}x), {took[1]:.1f} s CPU ({took[1] / base[1]:.1f}x)"


print(f"load average {os.getloadavg()[0]:.1f} over the last minute")
for args in COMMANDS:
    with tempfile.TemporaryDirectory() as cache:
        analytic = _cli_seconds([*args, "--method", "analytic"], cache)
        cold = _cli_seconds(args, cache)
        warm = _cli_seconds(args, cache)
    print(
        f"ftopt plan {' '.join(args)}: analytic {analytic[0]:.1f} s wall, {analytic[1]:.1f} s CPU; "
        + _timed("confirmed with an empty trace store", cold, analytic)
        + "; "
        + _timed("with it filled", warm, analytic)
    )
