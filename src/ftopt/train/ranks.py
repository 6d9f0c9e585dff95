"""Starting this node's ranks of a multi-process run, and reading how they ended. Engine-neutral: any worker that
reads torch.distributed's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as torchrun and
DeepSpeed's launcher set it) runs under it, DeepSpeed's and FSDP's alike.

One `ftopt train` per node (`--nodes N --node-rank K --master-addr HOST`, as torchrun and `deepspeed --no_ssh`
do) starts that node's `gpus_per_node` ranks. Rank 0's output streams to the console (its progress lines) and to
logs/rank0.log; every other rank writes logs/rankR.log only. Ctrl-C (or SIGTERM, as Slurm sends) is forwarded to
every rank once, and the ranks stop together at the end of a step (ftopt.train.callbacks.StopVote).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Seconds the other ranks get to end on their own once one rank has exited with an error (a rank that crashed at
# exit after the run's files were written leaves rank 0 finishing its own), then to end after SIGTERM.
GRACE_SECONDS = 20
# Exit code of a rank that stopped on Ctrl-C (the shell's 128 + SIGINT).
INTERRUPTED = 130
# Substrings of an out-of-memory failure: PyTorch's CUDA and CPU allocators, cuBLAS.
OOM_MARKERS = ("out of memory", "OutOfMemoryError", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED")
LOG_DIR = "logs"
MARKER_PREFIX = "ftopt: rank "  # of the launcher's markers below, never shown on the console
FINISHED = MARKER_PREFIX + "{rank} finished"  # a worker's last line: a later non-zero exit is a crash at teardown
# What a worker prints when it fails (then its traceback): names the rank in a log that several ranks share
FAILED = MARKER_PREFIX + "{rank} failed: {error}"
_FAILED_LINE = re.compile(r"ftopt: rank (\d+) failed: (.*)")


class Rendezvous(BaseModel):
    """How the ranks of one run find each other: torchrun's --nnodes/--node-rank/--master-addr/--master-port."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    nodes: int = Field(1, gt=0)
    node_rank: int = Field(0, ge=0)
    procs_per_node: int = Field(1, gt=0)
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29500, gt=0, lt=65536, description="torchrun's default port")

    @model_validator(mode="after")
    def _rules(self) -> Rendezvous:
        if self.node_rank >= self.nodes:
            raise ValueError(
                f"--node-rank {self.node_rank} is not below --nodes {self.nodes} (node ranks count from 0)"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def env(self, local_rank: int) -> dict[str, str]:
        """torch.distributed's environment for one local rank (the names torchrun sets)."""
        return {
            "RANK": str(self.node_rank * self.procs_per_node + local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.procs_per_node),
            "GROUP_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def encode_arg(doc: dict) -> str:
    """A JSON document as one shell-safe command-line argument (base64), e.g. the run specification for each rank:
    it reaches every node with the command, where a file would need a shared folder."""
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def decode_arg(arg: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(arg.encode()))


# A launched rank's command line: `python -m WORKER RUN [flags]` (ftopt.train.worker, ftopt.train.fsdp_worker).
FOLDER_CLAIMED = "--folder-claimed"  # from ftopt's launcher, which claimed the output folder before starting ranks


class RankCommandLine(BaseModel):
    """What a rank's own command line says. RUN, the run specification, is encode_arg's text (ftopt's launcher) or
    a run.json path (`plan --export`'s torchrun.sh); like any file it is data. Trust (ftopt.spec.trust) and what to do
    with the output folder now (--resume, --overwrite: a run file's values never carry over, as for `train --plan`)
    come from the flags, which ftopt's launcher sets from its own command line and a user adds to torchrun.sh's."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run: str
    trust_remote_code: bool = False
    allow_metric_module: bool = False
    resume: bool = False
    overwrite: bool = False
    folder_claimed: bool = False

    @classmethod
    def parse(cls, argv: list[str], prog: str) -> RankCommandLine:
        import argparse

        p = argparse.ArgumentParser(prog=prog, description="one rank of an ftopt run")
        p.add_argument("run", help="run.json, or the run as ftopt's launcher encodes it")
        for flag in ("--trust-remote-code", "--allow-metric-module", "--resume", "--overwrite", FOLDER_CLAIMED):
            p.add_argument(flag, action="store_true")
        p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # DeepSpeed's launcher
        args = vars(p.parse_args(argv))
        args.pop("local_rank")  # LOCAL_RANK in the environment says the same
        return cls(**args)

    def flags(self) -> list[str]:
        named = {"--resume": self.resume, "--overwrite": self.overwrite, FOLDER_CLAIMED: self.folder_claimed}
        return [*self.trust().flags(), *(flag for flag, on in named.items() if on)]

    def trust(self):
        from ftopt.spec.trust import CommandLineTrust

        return CommandLineTrust(trust_remote_code=self.trust_remote_code, allow_metric_module=self.allow_metric_module)


def rank_args(spec, trust) -> list[str]:
    """The arguments ftopt's launcher gives each rank (after `-m WORKER`): the run itself (no file that every node
    would need), the launching command line's trust (ftopt.spec.trust.CommandLineTrust) and folder flags."""
    o = spec.output
    line = RankCommandLine(
        run=encode_arg(spec.to_json()),
        **trust.model_dump(),
        resume=o.resume,
        overwrite=o.overwrite,
        folder_claimed=True,
    )
    return [line.run, *line.flags()]


def rank_run(argv: list[str], prog: str):
    """A rank's run and whether it must claim the output folder itself (no launcher did: torchrun.sh), through the
    trust gate (ftopt.spec.trust.admit) with this command line's allowance."""
    from pydantic import ValidationError

    from ftopt.spec import RunSpec
    from ftopt.spec.errors import FtoptError, validation_message
    from ftopt.spec.trust import admit

    line = RankCommandLine.parse(argv, prog)
    from_file = line.run.endswith(".json")
    source = line.run if from_file else "the run on this rank's command line"
    try:
        doc = json.loads(Path(line.run).read_text()) if from_file else decode_arg(line.run)
        spec = RunSpec.model_validate(doc)
    except OSError as e:
        raise FtoptError(f"{line.run} cannot be read: {e.strerror}.") from None
    except ValidationError as e:
        raise FtoptError(f"{source} is not a run specification: {validation_message(e)}.") from None
    except ValueError as e:
        raise FtoptError(f"{source} is not a run specification: {e}.") from None
    spec = admit(spec, line.trust(), source)
    output = spec.output.model_copy(update={"resume": line.resume, "overwrite": line.overwrite})
    return spec.model_copy(update={"output": output}), not line.folder_claimed


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cmd: list[str], rdzv: Rendezvous, log_dir: Path, env: dict[str, str]) -> tuple[dict[int, int], bool]:
    """Run this node's ranks to their end; returns ({global rank: exit code}, interrupted by Ctrl-C/SIGTERM)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[int, subprocess.Popen] = {}
    pumps = []
    for local in range(rdzv.procs_per_node):
        rank = int(rdzv.env(local)["RANK"])
        logf = (log_dir / f"rank{rank}.log").open("w")
        # a session of their own: a terminal's Ctrl-C reaches this launcher only, which forwards it exactly once
        p = subprocess.Popen(
            cmd,
            env={**env, **rdzv.env(local)},
            stdout=subprocess.PIPE if rank == 0 else logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs[rank] = p
        if rank == 0:
            t = threading.Thread(target=_tee, args=(p.stdout, logf), daemon=True)
            t.start()
            pumps.append(t)
        else:
            logf.close()
    interrupted = _wait(procs)
    for t in pumps:
        t.join(timeout=5)
    return {r: p.returncode for r, p in procs.items()}, interrupted


def _tee(pipe, logf) -> None:
    """Rank 0's output: to its log, and to the console (stderr: stdout carries --json alone)."""
    with logf:
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace")
            logf.write(line)
            logf.flush()
            if not line.startswith(MARKER_PREFIX):  # the launcher's markers, not the user's
                sys.stderr.write(line)
                sys.stderr.flush()


def _wait(procs: dict[int, subprocess.Popen]) -> bool:
    """Wait for every rank; forward the first Ctrl-C/SIGTERM as SIGINT (the ranks stop together at the end of a
    step), a second one as SIGTERM, a third as SIGKILL (a rank blocked in C++, e.g. waiting for a master that never
    answers, runs no Python signal handler); once one rank has failed, give the others GRACE_SECONDS, then SIGTERM,
    then SIGKILL."""
    interrupts, failed_at = 0, None
    # SIGTERM (Slurm's scancel) as Ctrl-C; SIGINT handled even where the shell started us with it ignored
    with signals_interrupt(signal.SIGINT, signal.SIGTERM):
        while any(p.poll() is None for p in procs.values()):
            try:
                time.sleep(0.2)
                if failed_at is None and any(p.returncode not in (None, 0) for p in procs.values()):
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
                    _signal_all(procs, signal.SIGTERM)
                if failed_at is not None and time.monotonic() - failed_at > 2 * GRACE_SECONDS:
                    _signal_all(procs, signal.SIGKILL)
            except KeyboardInterrupt:
                _signal_all(procs, (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[min(interrupts, 2)])
                interrupts += 1
    return interrupts > 0


@contextmanager
def signals_interrupt(*sigs: int):
    """Inside, each of `sigs` raises KeyboardInterrupt as Ctrl-C does (SIGTERM's default would end the process at
    once, leaving its children running); the previous handlers come back after. Only the main thread may set
    handlers: elsewhere nothing changes."""
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in sigs} if _main_thread() else {}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _signal_all(procs: dict[int, subprocess.Popen], sig: int) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(sig)


def failing_rank(codes: dict[int, int]) -> int | None:
    """The rank that failed first in all likelihood: one that exited by itself with an error, before those the
    launcher stopped (SIGTERM/SIGKILL: negative codes) or that stopped on Ctrl-C."""
    bad = {r: c for r, c in codes.items() if c not in (0, INTERRUPTED)}
    own = [r for r, c in bad.items() if c > 0 or c == -signal.SIGABRT]
    return min(own or bad or [None])  # type: ignore[type-var]


def last_exception(log_path: Path) -> str:
    """The most telling line of a failed rank's log: the last exception line."""
    try:
        return last_error_line(log_path.read_text(errors="replace"))
    except OSError:
        return "no log"


def last_error_line(text: str) -> str:
    """The last line of `text` that reads as an error (not a traceback's 'File ...' line), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if ("Error" in line or "error:" in line or "Exception" in line) and not line.startswith("File "):
            return line.removeprefix("error: ")[:300]
    return lines[-1][:300] if lines else "no output"


def is_oom(log_path: Path) -> bool:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return False
    return any(m in text for m in OOM_MARKERS)


def end_rank(work) -> None:
    """A launched rank's life: `work()`, then its exit as the launcher reads it (engine.py's _judge, hostfile.py's
    failures): an FtoptError is one line and exit 2, Ctrl-C exits INTERRUPTED, a failure is named by a FAILED line
    before its traceback, success ends with the FINISHED marker."""
    from ftopt.spec.errors import FtoptError

    rank = os.environ.get("RANK", "0")
    try:
        work()
    except FtoptError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        print(FAILED.format(rank=rank, error=f"error: {e}"), file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except Exception as e:  # named before the traceback: hostfile mode's launcher.log holds every rank's output
        print(FAILED.format(rank=rank, error=f"{type(e).__name__}: {e}".splitlines()[0]), file=sys.stderr, flush=True)
        raise
    print(FINISHED.format(rank=rank), file=sys.stderr, flush=True)


def rank_log(log_dir: Path, rank: int) -> Path:
    return log_dir / f"rank{rank}.log"


def interrupted_line(out: Path) -> str:
    """The same line as one process prints on Ctrl-C."""
    if not any(out.glob("checkpoint-*")):  # stopped before the first save: nothing intact to speak of
        return f"interrupted before the first checkpoint in {out}; --resume starts the run again from step 0"
    return f"interrupted: the last checkpoint in {out} is intact; continue with --resume"


def failures(text: str) -> dict[int, str]:
    """{rank: its failure line} from the `FAILED` lines in `text` (a launcher's log, lines prefixed by pdsh with
    their host), in the order they appear: the rank that failed first comes first in all likelihood."""
    found: dict[int, str] = {}
    for m in _FAILED_LINE.finditer(text):
        found.setdefault(int(m.group(1)), m.group(2).strip()[:300])
    return found


def failure_message(rank: int, line: str, log: Path, oom: bool, code: int | None = None) -> str:
    what = "ran out of memory" if oom else "failed" + (f" (exit {code})" if code is not None else "")
    return f"Rank {rank} {what} and all ranks were stopped: {line} (log: {log})."
