"""Slow plans (the traced method: a FakeTensor trace of the leading candidates, seconds to minutes) run in a child
process, so that the page can poll for progress and cancel: a thread cannot be stopped, a process can."""

from __future__ import annotations

import multiprocessing
import secrets
import threading
import time
from dataclasses import dataclass, field


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


def _child(query: dict, config: dict | None, allow_local: bool, conn) -> None:
    conn.send(plan_body(query, config, allow_local))
    conn.close()


@dataclass
class Job:
    process: multiprocessing.Process
    conn: object
    started: float = field(default_factory=time.monotonic)
    result: dict | None = None


class Jobs:
    """Running plans by id. `spawn`: a forked child of a threaded server could inherit a lock held by another
    thread (Python's multiprocessing docs warn against fork with threads)."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, query: dict, config: dict | None, allow_local: bool) -> str:
        parent, child = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(target=_child, args=(query, config, allow_local, child), daemon=True)
        p.start()
        child.close()
        job_id = secrets.token_hex(8)
        with self._lock:
            self._jobs[job_id] = Job(p, parent)
        return job_id

    def status(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.result is None and job.conn.poll():
            job.result = job.conn.recv()
            job.process.join()
        elif job.result is None and not job.process.is_alive():
            job.result = {"error": f"The plan stopped (exit code {job.process.exitcode}).", "field": None}
        elapsed = round(time.monotonic() - job.started, 1)
        if job.result is not None:
            with self._lock:  # delivered: a finished job is not kept
                self._jobs.pop(job_id, None)
        return {"state": "running" if job.result is None else "done", "elapsed_s": elapsed, "result": job.result}

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.process.terminate()
        job.process.join(5)
        return True

    def close(self) -> None:
        for job_id in list(self._jobs):
            self.cancel(job_id)
