"""Bench result folders under the one root given on the command line (`ftopt serve --results DIR`): listed, their
sweep progress counted, their report rendered. The browser names a folder only by its place in that listing; no
path from a request is opened outside the root."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ftopt.spec.errors import FtoptError

if TYPE_CHECKING:
    from ftopt.results.rows import ResultRow

RESULTS = "results.jsonl"
MAX_DEPTH = 3  # root/<project>/<sweep>/results.jsonl: deep enough for a folder of sweeps, bounded for a big root


class ResultsRoot:
    def __init__(self, root: Path | None) -> None:
        self.root = root.expanduser().resolve() if root is not None else None

    def names(self) -> list[str]:
        """Folders (relative to the root, '.' for the root itself) holding a results.jsonl."""
        if self.root is None:
            return []
        found = []
        for depth in range(MAX_DEPTH + 1):
            for p in self.root.glob("/".join(["*"] * depth + [RESULTS])):
                found.append(p.parent.relative_to(self.root).as_posix())
        return sorted(found)

    def folder(self, name: str) -> Path:
        if self.root is None:
            raise FtoptError("No results folder was given; start the server with --results DIR.")
        if name not in self.names():
            raise FtoptError(f"'{name}' is not a results folder under {self.root}.")
        return self.root / name

    def progress(self, name: str) -> dict:
        """Runs finished (by the status of each run's current attempt) and started, and the runs in progress: bench
        writes runs/<key>.run.json as each attempt starts and appends its result line (with the time it ended) when
        it ends, so a run file written after its run's last attempt ended is a run in progress, a run never finished
        or a failed one being tried again."""
        from ftopt.sweep.bench import read_results

        folder = self.folder(name)
        path = folder / RESULTS
        rows = {r.key: r for r in read_results(path)}
        written = path.stat().st_mtime if path.exists() else 0.0
        started = sorted(
            (p.stat().st_mtime, p.name.removesuffix(".run.json")) for p in (folder / "runs").glob("*.run.json")
        )
        running = [key for at, key in started if _in_progress(at, rows.get(key), written)]
        by_status: dict[str, int] = {}
        for r in rows.values():
            if r.key not in running:
                by_status[r.status.value] = by_status.get(r.status.value, 0) + 1
        return {
            "name": name,
            "finished": sum(by_status.values()),
            "by_status": by_status,
            "started": len(started),
            "running": running,
        }

    def report_html(self, name: str, lang: str) -> str:
        """The decision report as `ftopt report DIR --lang LANG` writes it with no other flag (self-contained HTML:
        the charts are inline)."""
        import tempfile

        if lang not in ("en", "ja"):
            raise FtoptError(f"--lang must be en or ja, got '{lang}'.")
        with tempfile.TemporaryDirectory(prefix="ftopt-serve-report-") as out:
            return self._write(name, lang, Path(out))

    def _write(self, name: str, lang: str, out: Path) -> str:
        from ftopt.report.cli_support import write_report

        paths = write_report(self.folder(name) / RESULTS, out, lang=lang, warn=lambda m: None)  # report's defaults
        return paths["html"].read_text(encoding="utf-8")


def _in_progress(started: float, last: ResultRow | None, results_written: float) -> bool:
    """Whether the attempt whose run file was written at `started` (epoch seconds) has no result line yet. `last`:
    the run's current line; an ok or oom run is never run again (Status.final). A line of an older ftopt has no
    end time: it ended no later than the results file's last write."""
    if last is None:
        return True
    if last.status.final:
        return False
    ended = last.ended_at.timestamp() if last.ended_at is not None else results_written
    return started > ended
