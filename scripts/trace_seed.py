"""Write src/ftopt/presets/traces.json: the trace results the preset plans below confirm with, shipped so that a
first `ftopt plan` of these configurations answers without tracing (ftopt.estimate.trace_cache).

Each command runs as a user runs it, in its own process with an empty trace store; every trace it used is then run
again here, in a process that imports only the tracer, and its result is written with the library versions and
the digest of each ftopt source file that process loaded. The table answers only while all of them are unchanged:
after a change to one of those files, or another torch, transformers or PEFT, run this again (a few minutes on a
CPU). A result that differs between the two runs stops the script: the trace must be a function of its key.

.venv/bin/python scripts/trace_seed.py
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The plans the README and docs quote, and the bare `ftopt plan`; each as `ftopt plan` arguments.
COMMANDS = (
    [],
    ["--model", "llama-3.1-70b", "--gpu", "h100-80g", "--gpus", "8", "--seq-len", "4096"],
    ["--model", "llama-3.1-8b", "--gpu", "rtx4090", "--seq-len", "4096"],
    ["--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "8", "--seq-len", "2048"],
    ["--model", "llama-2-70b", "--gpu", "h100-80g", "--gpus", "8", "--seq-len", "4096"],
)


def _stored_calls(store: Path) -> list[dict]:
    """Run each command with the store at `store`; the trace calls its files record."""
    for args in COMMANDS:
        env = {**os.environ, "FTOPT_CACHE": str(store)}
        cmd = [sys.executable, "-m", "ftopt", "plan", *args, "--json"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"planned: ftopt plan {' '.join(args)}", file=sys.stderr)
    return [json.loads(p.read_text()) for p in sorted((store / "traces").glob("*.json"))]


def _rerun(stored: list[dict]) -> dict:
    """Each stored call traced again in this process; the table's entries, its sources and library versions."""
    from ftopt.estimate import trace_cache, traced
    from ftopt.spec import Combination, ModelSpec, TrainingSetup

    entries = {}
    for doc in stored:
        call = doc["call"]
        spec, setup = ModelSpec.model_validate(call["spec"]), TrainingSetup.model_validate(call["setup"])
        combo = Combination.model_validate(call["combination"])
        k = trace_cache.key(spec, setup, combo, call["num_layers"], call["device"], tuple(call["world"]))
        if k.call != call:  # the plan would look up another key than the one written here
            sys.exit(f"{combo.label()}: its call does not survive a round trip through JSON")
        t = traced._run_trace(spec, setup, combo, call["num_layers"], call["device"].split(":")[0])
        fresh = trace_cache.TraceResult(
            phase_peaks=t.phase_peaks, grad_weight=t.grad_weight, count_states=t.count_states
        )
        result = json.loads(json.dumps(trace_cache.result_doc(fresh)))
        if result != {n: doc[n] for n in result}:
            sys.exit(f"the trace of {combo.label()} at {call['num_layers']} layers differs between two runs")
        entries[k.seed] = {**result, "call": call}
    root = trace_cache.source_root()
    sources = sorted(
        Path(m.__file__).resolve().relative_to(root).as_posix()
        for name, m in sys.modules.items()
        if (name == "ftopt" or name.startswith("ftopt.")) and getattr(m, "__file__", None)
    )
    return {
        "libraries": trace_cache.library_versions(),
        "sources": {rel: trace_cache.file_digest(root / rel) for rel in sources},
        "entries": entries,
    }


def main() -> None:
    from ftopt.estimate.trace_cache import seed_path
    from ftopt.spec.io import atomic_write_text

    with tempfile.TemporaryDirectory() as store:
        table = _rerun(_stored_calls(Path(store)))
    about = "trace results of the preset plans in scripts/trace_seed.py; written by that script, never by hand"
    atomic_write_text(seed_path(), json.dumps({"about": about, **table}, indent=1, sort_keys=True) + "\n")
    print(f"{len(table['entries'])} traces, {len(table['sources'])} source files: {seed_path()}", file=sys.stderr)


if __name__ == "__main__":
    main()
