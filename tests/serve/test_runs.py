"""The page's listing of a sweep's runs (ResultsRoot.progress), read from what bench writes: runs/<key>.run.json as
an attempt starts, a results line as it ends."""

import os
from datetime import datetime, timedelta, timezone

from ftopt.results.rows import Measured, ResultRow
from ftopt.serve.runs import RESULTS, ResultsRoot
from ftopt.spec import Combination
from ftopt.spec.io import append_line_atomic

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def _line(folder, key: str, status: str, ended: datetime | None) -> None:
    m = Measured(peak_bytes_per_gpu=1, step_seconds=0.1, steps=3) if status == "ok" else None
    row = ResultRow(key=key, label=key, combination=Combination(), status=status, measured=m, ended_at=ended)
    append_line_atomic(folder / RESULTS, row.to_line())


def _start(folder, key: str, at: datetime) -> None:
    """What bench does as an attempt starts: (re)writes the run's file, at `at`."""
    path = folder / "runs" / f"{key}.run.json"
    path.write_text("{}")
    os.utime(path, (at.timestamp(), at.timestamp()))


def _results_written(folder, at: datetime) -> None:
    os.utime(folder / RESULTS, (at.timestamp(), at.timestamp()))


def test_a_retried_run_is_listed_as_running_then_with_its_new_result(tmp_path):
    """A run recorded as error and tried again by a rerun is listed as running while it runs, though its old line
    marks it done, and with its new result after."""
    folder = tmp_path / "sweep"
    (folder / "runs").mkdir(parents=True)
    root = ResultsRoot(tmp_path)
    at = [T0 + timedelta(minutes=i) for i in range(10)]
    for key in ("a", "b"):
        _start(folder, key, at[0])
    _line(folder, "a", "error", at[1])
    _line(folder, "b", "ok", at[2])
    _results_written(folder, at[2])
    p = root.progress("sweep")
    assert (p["running"], p["finished"], p["by_status"], p["started"]) == ([], 2, {"error": 1, "ok": 1}, 2)

    # the rerun tries "a" again; meanwhile a new run "c" starts beside it and ends first (one-process runs side by
    # side), so the results file is written after "a" started again
    _start(folder, "a", at[3])
    _start(folder, "c", at[4])
    _line(folder, "c", "ok", at[5])
    _results_written(folder, at[5])
    p = root.progress("sweep")
    assert p["running"] == ["a"] and p["by_status"] == {"ok": 2} and p["finished"] == 2 and p["started"] == 3

    _line(folder, "a", "ok", at[6])
    p = root.progress("sweep")
    assert (p["running"], p["finished"], p["by_status"]) == ([], 3, {"ok": 3})


def test_a_line_without_an_end_time_is_judged_by_the_results_file(tmp_path):
    """Lines of an older ftopt carry no end time: a run file written after the results file's last write is still
    running; one written before it is not."""
    folder = tmp_path / "sweep"
    (folder / "runs").mkdir(parents=True)
    root = ResultsRoot(tmp_path)
    _start(folder, "a", T0)
    _line(folder, "a", "timeout", None)
    _results_written(folder, T0 + timedelta(minutes=1))
    assert root.progress("sweep")["running"] == []
    _start(folder, "a", T0 + timedelta(minutes=2))
    assert root.progress("sweep")["running"] == ["a"]


def test_a_final_result_is_never_running_again(tmp_path):
    """ok and oom runs are never rerun: a run file touched later (a copy of the folder) does not make them run."""
    folder = tmp_path / "sweep"
    (folder / "runs").mkdir(parents=True)
    _line(folder, "a", "oom", T0)
    _start(folder, "a", T0 + timedelta(minutes=5))
    assert ResultsRoot(tmp_path).progress("sweep")["by_status"] == {"oom": 1}
