"""Slow plans (the traced method: a FakeTensor trace of the leading candidates, seconds to minutes) run in a child
process, so that the page can poll for progress and cancel: a thread cannot be stopped, a process can.

Bounded so that a page left open (or driven by a script) cannot exhaust the machine: at most `max_running` children
at once (more is refused, not queued), each stopped after `timeout_s`; a child writes its answer to a file of its
own and exits, so it never waits on a reader. A finished plan's answer is kept KEEP_S after it ends, at most MAX_KEPT
of them (the oldest go first), so that the page can export the run it shows (`/api/export?job=ID`).
"""

from __future__ import annotations

import json
import multiprocessing
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# One trace is one CPU-bound process; two at once already share a 2-core machine with the server itself.
MAX_RUNNING = 2
# A traced plan of a 70B preset took 80-100 s of wall time under a load average of ~9 on 2 cores (docs/serve.md);
# ten minutes leaves room for a slower machine, and stops a plan nobody will wait for.
TIMEOUT_S = 600.0
KEEP_S = 600.0  # a finished plan's answer waits this long for the page's next poll or its export
MAX_KEPT = 8  # finished answers kept at once: a few hundred KiB each (tests/serve/test_safety.py measures one)


class Busy(Exception):
    """Too many plans running: one sentence for the page (HTTP 429)."""


def error_body(e: Exception) -> dict:
    """A user error as the page shows it: the CLI's one line, and the input it belongs beside."""
    from pydantic import ValidationError

    from ftopt.serve.query import field_of
    from ftopt.spec.errors import validation_message

    msg = validation_message(e, flags=True) if isinstance(e, ValidationError) else str(e)
    return {"error": msg, "field": field_of(msg)}


def plan_body(query: dict, config: dict | None, allow_local: bool) -> dict:
    """The page's answer for one plan: the plan JSON and its views, or an error body."""
    from pydantic import ValidationError

    from ftopt.serve.planning import make_plan
    from ftopt.serve.query import PlanQuery
    from ftopt.serve.views import views
    from ftopt.spec.errors import FtoptError

    try:
        doc, _, _, hw = make_plan(PlanQuery(**query), config, allow_local)
    except (FtoptError, ValidationError) as e:
        return error_body(e)
    return {"plan": doc, "views": {**views(doc), "capacity_bytes": hw.memory_bytes}}


def _child(work: Callable[..., dict], args: tuple, out: str) -> None:
    from ftopt.spec.io import atomic_write_text

    atomic_write_text(out, json.dumps(work(*args)))  # the parent reads it only after this process has exited


@dataclass
class Job:
    process: multiprocessing.process.BaseProcess
    out: Path
    timer: threading.Timer
    args: tuple  # what `work` was called with: the export of a finished plan rebuilds its model from them
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    result: dict | None = None


class Jobs:
    """Running plans by id. `spawn`: a forked child of a threaded server could inherit a lock held by another
    thread (Python's multiprocessing docs warn against fork with threads). `work` is what a child runs (plan_body;
    a module-level function, since a spawned child imports it)."""

    def __init__(
        self, max_running: int = MAX_RUNNING, timeout_s: float = TIMEOUT_S, work: Callable[..., dict] = plan_body
    ) -> None:
        self.max_running, self.timeout_s, self.work = max_running, timeout_s, work
        self._ctx = multiprocessing.get_context("spawn")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="ftopt-serve-jobs-"))  # mode 0700: answers are the user's

    def start(self, *args) -> str:
        """A new job running `work(*args)`, or Busy when max_running are running."""
        with self._lock:
            self._forget_stale()
            running = sum(1 for j in self._jobs.values() if j.result is None)
            if running >= self.max_running:
                raise Busy(
                    f"{running} plans are already running, the most this server runs at once; "
                    "wait for one to finish or cancel it."
                )
            job_id = secrets.token_hex(8)
            out = self._dir / f"{job_id}.json"
            p = self._ctx.Process(target=_child, args=(self.work, args, str(out)), daemon=True)
            p.start()
            timer = threading.Timer(self.timeout_s, self._expire, args=(job_id,))
            timer.daemon = True
            self._jobs[job_id] = Job(p, out, timer, args)
            timer.start()
        return job_id

    def _settle(self, job: Job) -> None:
        """Called with the lock held: the answer of a child that has exited."""
        if job.result is not None or job.process.is_alive():
            return
        job.process.join()
        job.timer.cancel()
        job.ended = time.monotonic()
        if job.process.exitcode == 0 and job.out.exists():
            job.result = json.loads(job.out.read_text())
            job.out.unlink()
        else:
            job.result = {"error": f"The plan stopped (exit code {job.process.exitcode}).", "field": None}

    def _expire(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.result is not None:
                return
            self._settle(job)
            if job.result is None:  # still running at the limit
                job.process.kill()
                job.process.join()
                job.ended = time.monotonic()
                job.result = {
                    "error": f"The plan was stopped after {self.timeout_s:g} s, this server's limit for one plan; "
                    "the analytic method answers at once.",
                    "field": "method",
                }

    def _forget_stale(self) -> None:
        """Called with the lock held: drop answers older than KEEP_S, and the oldest beyond MAX_KEPT."""
        now = time.monotonic()
        for job in self._jobs.values():
            self._settle(job)
        ended = sorted((j.ended, job_id) for job_id, j in self._jobs.items() if j.ended is not None)
        for i, (end, job_id) in enumerate(ended):
            if now - end > KEEP_S or i < len(ended) - MAX_KEPT:
                self._drop(job_id)

    def _drop(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.timer.cancel()
            job.out.unlink(missing_ok=True)
        return job

    def status(self, job_id: str) -> dict | None:
        with self._lock:
            self._forget_stale()
            job = self._jobs.get(job_id)
            if job is None:
                return None
        end = job.ended if job.ended is not None else time.monotonic()
        state = "running" if job.result is None else "done"
        return {"state": state, "elapsed_s": round(end - job.started, 1), "result": job.result}

    def finished(self, job_id: str) -> tuple[tuple, dict] | None:
        """(the arguments, the answer) of a finished job still kept, else None."""
        with self._lock:
            self._forget_stale()
            job = self._jobs.get(job_id)
        return None if job is None or job.result is None else (job.args, job.result)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._drop(job_id)
        if job is None:
            return False
        job.process.terminate()
        job.process.join(5)
        if job.process.is_alive():
            job.process.kill()
            job.process.join()
        return True

    def close(self) -> None:
        for job_id in list(self._jobs):
            self.cancel(job_id)
        shutil.rmtree(self._dir, ignore_errors=True)
