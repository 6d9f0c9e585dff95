"""Hostfile mode (`ftopt train ... --nodes N --hostfile FILE`): DeepSpeed's pdsh runner starts every node's ranks
from this host. It checks the first host over ssh, asks it for the master address (`ssh HOST hostname -I`), then
runs `pdsh -S -w host1,host2 "export K=V; ...; cd <this folder>; <this python> -m deepspeed.launcher.launch
--node_rank=%n ..."` (deepspeed/launcher/runner.py main, multinode_runner.py PDSHRunner.get_cmd, DeepSpeed 0.19).

A node gets a fresh ssh login's environment plus those `export`s: the runner's PYTHON* variables and the lines of
the `.deepspeed_env` file named by DS_ENV_FILE, which this module writes into a private temporary folder, never
under the run folder, and never with the token; the runner's command line, which holds every exported value,
is not logged. Every rank's output arrives in the run folder's launcher.log, each line prefixed by pdsh with its
host; node 0's (rank 0's progress) also reaches the console. A failed rank is named by the `ftopt: rank R failed:
...` line its worker prints (ftopt.train.ranks.FAILED).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError
from ftopt.train import ranks
from ftopt.train.allocator import ALLOC_ENV

# What a run needs on every node: ftopt's variables (cache, injected test failures), Hugging Face's (endpoint,
# offline, cache folders), the thread count and the CUDA allocator setting the memory prediction assumes.
FORWARD_PREFIXES = ("FTOPT_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "OMP_NUM_THREADS", "PYTHONPATH", ALLOC_ENV)
SECRETS = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
# The runner writes `export K="V";` (MultiNodeRunner.add_export quotes any value with a character outside
# [\w@%+=:,./-]); inside double quotes the node's shell still reads these four, and a backslash before each hands
# it over unchanged (POSIX sh). The backslash itself makes the runner quote the value.
_SHELL_SPECIAL = '\\"$`'
# A line of DeepSpeed's own logger ("[2026-12-04 03:28:04,161] [INFO] [launch.py:158:main] ..."): launcher.log only
_LAUNCHER_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\] \[[A-Z]+\] ")


def env_file_lines(env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """`.deepspeed_env` lines ("K=V") for the variables of `env` a run needs on every node, never the token; and
    the names of those that cannot travel in one (a newline, or leading/trailing blanks, which the runner strips)."""
    lines, dropped = [], []
    for name in sorted(env):
        if not name.startswith(FORWARD_PREFIXES) or name in SECRETS:
            continue
        value = env[name]
        if "\n" in value or value != value.strip():
            dropped.append(name)
            continue
        lines.append(name + "=" + "".join("\\" + c if c in _SHELL_SPECIAL else c for c in value))
    return lines, dropped


def launch(spec: RunSpec, env: dict[str, str], module: str) -> dict:
    """Run every node's ranks of `module` (the worker) through DeepSpeed's runner with `env` (the run's
    environment); metrics.json's content."""
    out, s = spec.output_dir, spec.setup
    log_path = out / "launcher.log"
    lines, dropped = env_file_lines(env)
    if dropped:
        print(
            f"warning: not forwarded to the nodes (a newline or blanks around the value): {', '.join(dropped)}",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="ftopt-dsenv-") as tmp:
        env_file = os.path.join(tmp, ".deepspeed_env")
        with open(os.open(env_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("".join(line + "\n" for line in lines))
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(s.gpus_per_node)]
        cmd += ["--num_nodes", str(s.nodes), "--hostfile", str(spec.hostfile), "--master_port", str(ranks.free_port())]
        # warning, not info: at info the runner logs its pdsh command line, every exported value in it (its own
        # MLFLOW_* among them, tracking tokens included), into launcher.log under the run folder
        cmd += ["--log_level", "warning", "--module", module, ranks.encode_arg(spec.to_json())]
        code = _run(cmd, {**env, "DS_ENV_FILE": env_file}, log_path, _first_host(spec.hostfile))
    return _result(code, out / "metrics.json", log_path)


def _first_host(path) -> str:
    """Node 0, the host of rank 0: the runner takes the host file's hosts in order (check_launch read it)."""
    from deepspeed.launcher.runner import _parse_hostfile

    with open(path) as f:
        return next(iter(_parse_hostfile(f.readlines())))


def _run(cmd: list[str], env: dict[str, str], log_path: Path, host0: str) -> int:
    """The runner's exit code. Every line goes to launcher.log; node 0's lines (rank 0's progress among them) also
    to the console, without pdsh's host prefix and without DeepSpeed's launcher log lines and ftopt's markers."""
    prefix = f"{host0}: "
    with (
        log_path.open("w") as logf,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as p,
    ):
        for raw in iter(p.stdout.readline, b""):
            line = raw.decode(errors="replace")
            logf.write(line)
            logf.flush()
            text = line[len(prefix) :]
            if line.startswith(prefix) and not _LAUNCHER_LINE.match(text) and not text.startswith(ranks.MARKER_PREFIX):
                sys.stderr.write(text)
                sys.stderr.flush()
    return p.returncode


def _result(code: int, metrics_path: Path, log_path: Path) -> dict:
    """metrics.json's content; a run without it fails naming the rank that failed (an out-of-memory one first)."""
    if metrics_path.exists():
        if code != 0:
            print(
                f"warning: a rank exited with {code} after the metrics were written (log: {log_path})", file=sys.stderr
            )
        return json.loads(metrics_path.read_text())
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    failed = ranks.failures(text)
    oom = [r for r, line in failed.items() if any(m in line for m in ranks.OOM_MARKERS)]
    if oom or failed:
        rank = (oom or list(failed))[0]
        raise FtoptError(ranks.failure_message(rank, failed[rank], log_path, oom=bool(oom)))
    if code == 0:
        raise FtoptError(f"The run ended without metrics; see {log_path}.")
    what = "ran out of memory" if any(m in text for m in ranks.OOM_MARKERS) else f"failed (exit {code})"
    raise FtoptError(f"The launch {what}: {ranks.last_error_line(text)} (log: {log_path}).")
