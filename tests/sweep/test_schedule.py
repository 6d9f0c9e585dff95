"""One-process runs go side by side, a run of several processes alone; Ctrl-C stops every run still going."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ftopt.sweep.schedule import run_in_order


def _record(slots, sizes):
    lock, live, seen, events = threading.Lock(), [0], [], []

    def run(item, procs):
        with lock:
            live[0] += sizes[item]
            seen.append((item, live[0]))
        time.sleep(0.05)
        with lock:
            live[0] -= sizes[item]
        return item * 10

    run_in_order(
        range(len(sizes)),
        run,
        lambda i: sizes[i],
        slots,
        lambda i: events.append(("start", i)),
        lambda i, r: events.append(("done", i, r)),
    )
    return seen, events


def test_one_process_runs_share_the_slots_and_a_two_process_run_runs_alone():
    sizes = [1, 1, 1, 2, 1, 1]
    seen, events = _record(2, sizes)
    busy = dict(seen)
    assert max(busy[i] for i in (0, 1, 2, 4, 5)) == 2  # side by side
    assert busy[3] == 2 and all(v <= 2 for v in busy.values())  # the two-process run had the machine to itself
    assert [e[1] for e in events if e[0] == "start"] == list(range(len(sizes)))  # started in order
    assert sorted(e[2] for e in events if e[0] == "done") == [10 * i for i in range(len(sizes))]


def test_one_slot_runs_one_at_a_time():
    seen, _ = _record(1, [1, 1, 1])
    assert [n for _, n in seen] == [1, 1, 1]


def test_ctrl_c_stops_the_runs_still_going():
    """Ctrl-C reaches the sweep's thread while two runs go on in theirs: both process groups are stopped."""
    started = []

    def run(item, procs):
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        procs.add(p)
        started.append(p)
        p.wait()
        return p.returncode

    def start(item):
        while item == 2 and len(started) < 2:
            time.sleep(0.01)
        if item == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_order([0, 1, 2], run, lambda i: 1, 3, start, lambda i, r: None)
    assert len(started) == 2 and [p.returncode for p in started] == [-signal.SIGKILL] * 2  # stopped, not waited for


def _alive(pid: int) -> bool:
    """Running (a killed child whose parent has gone may stay a zombie until init reaps it: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


SWEEP_WITH_ONE_RUN = """
import subprocess, sys
from ftopt.sweep.schedule import run_in_order

def run(item, procs):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    procs.add(p)
    print(p.pid, flush=True)
    return p.wait()

run_in_order([0], run, lambda i: 1, 1, lambda i: None, lambda i, r: None)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads a process's state from Linux /proc")
def test_sigterm_stops_the_runs_still_going():
    """SIGTERM (kill, a CI cancel, Slurm's scancel) ended the sweep at once and left its run training, an orphan in
    a session of its own; now the run's process group goes down with the sweep, as on Ctrl-C."""
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP_WITH_ONE_RUN], stdout=subprocess.PIPE, text=True)
    run_pid = int(sweep.stdout.readline())
    try:
        assert _alive(run_pid)
        sweep.send_signal(signal.SIGTERM)
        sweep.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(run_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(run_pid), "the run kept going after the sweep was terminated"
    finally:
        if _alive(run_pid):
            os.kill(run_pid, signal.SIGKILL)
        sweep.kill()
