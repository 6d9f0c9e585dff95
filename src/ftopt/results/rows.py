"""A measured run, typed: what `metrics.json` holds (`RunMetrics`, written by `ftopt train`) and what one line of a
bench results file holds (`ResultRow`, written by `ftopt bench`). Report, calibration and projection read these
objects, never loose dicts. Schemas: docs/metrics-schema.md and docs/results-schema.md.

Older files load: `migrate_row` lifts a line of an earlier schema (ftopt.bench/1 carried the sweep's flags
instead of the run specification; ftopt.bench/2 no per-step times) to the current one before validation.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftopt.estimate.result import TraceFallback
from ftopt.results.quality import QualityTarget
from ftopt.spec import Combination, RunSpec
from ftopt.spec.errors import FtoptError, first_line, validation_message

RESULTS_SCHEMA = "ftopt.bench/4"
METRICS_SCHEMA = "ftopt.metrics/4"
# Schemas whose lines need lifting (migrate_row); bench/3 lines differ from /4 only by lacking `base_quality`.
_RESULTS_BEFORE_STEP_TIMES = (None, "ftopt.bench/1", "ftopt.bench/2")
# Step times left out of the median and spread: step 1 pays one-off costs (the optimizer allocates its states
# lazily at its first step; kernels are selected, thread pools and the caching allocator warm up) and step 2 still
# grows the allocator once the states exist (the same 2-step window the CPU peak is measured over,
# docs/metrics-schema.md). From step 3 on a step repeats the same work.
WARMUP_STEPS = 2
# The spread of a run's step time: the interquartile range of its steady steps (robust to the odd slow step a
# shared machine throws in, unlike min/max or a standard deviation).
SPREAD_QUANTILES = (0.25, 0.75)


class Status(str, Enum):
    OK = "ok"
    OOM = "oom"
    ERROR = "error"
    TIMEOUT = "timeout"
    FAILED = "failed"  # exited 0 without writing metrics.json: no result

    @property
    def final(self) -> bool:
        """A result a rerun of the sweep keeps: ok (measured) or oom (the combination does not fit; running it again
        on the same hardware measures the same). error, timeout and failed say nothing about the combination (a bad
        data file, a too-short --run-timeout, a crash since fixed): a rerun tries them again."""
        return self in (Status.OK, Status.OOM)


class Prediction(BaseModel):
    """One estimator's prediction for the run (`ftopt.estimate.predictions`), or why it could not answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str | None = Field(None, description="the estimator that answered (a trace may fall back to analytic)")
    peak_bytes_per_gpu: int | None = None
    reserved_bytes_per_gpu: int | None = Field(
        None, description="the caching allocator's reserved peak (torch.cuda.max_memory_reserved)"
    )
    device_bytes_per_gpu: int | None = Field(None, description="reserved peak plus the CUDA context (and NCCL buffers)")
    fits: bool | None = Field(None, description="fits the GPU within the headroom (--headroom)")
    tight: bool | None = Field(None, description="fits the GPU but not the headroom")
    step_seconds: float | None = None
    flops_per_step: float | None = None
    kernels_per_step: int | None = None
    breakdown: dict[str, int] = Field(default_factory=dict, description="bytes per memory category")
    notes: list[str] = Field(default_factory=list)
    trace_fallback: TraceFallback | None = Field(None, description="why a trace asked for answered analytically")
    error: str | None = None


class Predictions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    hardware: str | None = None
    analytic: Prediction | None = None
    traced: Prediction | None = None

    def best(self) -> Prediction | None:
        """The traced prediction where it answered, else the analytic one."""
        for p in (self.traced, self.analytic):
            if p is not None and p.error is None and p.peak_bytes_per_gpu is not None:
                return p
        return None


class StepStats(BaseModel):
    """Median step time over the steady steps (warm-up left out) and its spread (interquartile range)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    median: float = Field(gt=0, description="seconds per optimizer step")
    low: float = Field(description="seconds, lower quartile (the median itself without per-step times)")
    high: float = Field(description="seconds, upper quartile")
    steps: int = Field(ge=0, description="steady steps the figures come from (0: only the stored median)")
    warmup: int = Field(ge=0, description="leading steps left out")


def step_stats(times: list[float], warmup: int = WARMUP_STEPS) -> StepStats | None:
    """Median and interquartile range of `times` (seconds per step, in order) after the first `warmup` steps; a
    run shorter than that keeps its last step only (a figure, not a spread)."""
    steady = times[warmup:] or times[-1:]
    if not steady:
        return None
    if len(steady) < 2:
        return StepStats(median=steady[0], low=steady[0], high=steady[0], steps=1, warmup=len(times) - 1)
    q = statistics.quantiles(steady, n=4, method="inclusive")
    return StepStats(median=statistics.median(steady), low=q[0], high=q[2], steps=len(steady), warmup=warmup)


class Measured(BaseModel):
    """metrics.json's `measured` object (docs/metrics-schema.md); bench results lines copy it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    peak_bytes_per_gpu: int
    peak_reserved_bytes_per_gpu: int | None = None
    device_used_bytes_per_gpu: int | None = None
    eval_peak_bytes_per_gpu: int | None = None
    step_seconds: float | None = None
    epoch_seconds: float | None = None
    step_times: list[float] = Field(default_factory=list, description="rank 0's seconds per optimizer step, in order")
    warmup_steps: int = Field(WARMUP_STEPS, ge=0, description="leading steps left out of step_seconds")
    tokens_per_s: float | None = None
    train_loss: float | None = None
    final_loss: float | None = None
    first_loss: float | None = Field(None, description="loss of the first logged step (nothing-to-learn check)")
    eval_loss: float | None = None
    perplexity: float | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    base_quality: dict[str, float] = Field(
        default_factory=dict,
        description="the same quality metrics before the first step (step 0); empty where not scored "
        "(no generation, DeepSpeed, or files written before ftopt.metrics/4)",
    )
    exact_match: float | None = None
    steps: int | None = None
    train_seconds: float | None = None
    stopped_by_time_budget: bool = False

    def value(self, metric: str) -> float | None:
        """A top-level figure (eval_loss, perplexity) or a quality metric; None when the run has no such figure."""
        v = getattr(self, metric, None) if metric in ("eval_loss", "perplexity") else None
        return v if v is not None else self.quality.get(metric)

    def stats(self) -> StepStats | None:
        """Step-time median and spread from the per-step times; rows without them keep their stored median."""
        s = step_stats(self.step_times, self.warmup_steps) if self.step_times else None
        if s is None and self.step_seconds:
            return StepStats(median=self.step_seconds, low=self.step_seconds, high=self.step_seconds, steps=0, warmup=0)
        return s

    @property
    def steps_per_epoch(self) -> float | None:
        return self.epoch_seconds / self.step_seconds if self.epoch_seconds and self.step_seconds else None


class RunMetrics(BaseModel):
    """metrics.json as `ftopt train` writes it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    schema_id: str = Field(METRICS_SCHEMA, alias="schema")
    run: RunSpec
    model: str
    combination: Combination
    label: str
    precision: str
    world_size: int
    seq_len: int
    micro_batch: int
    grad_accum: int
    packing: bool
    data_format: str
    tokenizer: str
    tokens_per_step: int
    steps_per_epoch: int
    measured: Measured
    predicted: Predictions
    mfu: float | None = None
    ranks: list[dict[str, Any]] = Field(default_factory=list, description="per-rank measurements, as gathered")
    data: dict[str, Any] | None = None


class ResultRow(BaseModel):
    """One bench results line (docs/results-schema.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    schema_id: str = Field(RESULTS_SCHEMA, alias="schema")
    key: str
    label: str
    combination: Combination
    gpus: int = Field(1, gt=0)
    repeat: int = Field(0, ge=0)
    status: Status
    run: RunSpec | None = Field(None, description="None only in lines migrated from ftopt.bench/1")
    legacy_sweep: dict[str, Any] | None = Field(None, description="ftopt.bench/1's sweep flags (no run spec)")
    predicted: Predictions = Predictions()
    measured: Measured | None = None
    mfu: float | None = None
    tokens_per_step: int | None = None
    error_tail: str | None = None
    quality_target: QualityTarget | None = Field(
        None, description="the sweep's --quality-target (the report's default)"
    )
    ended_at: datetime | None = Field(
        None, description="when the attempt ended and this line was written (UTC); absent in lines of older ftopt"
    )

    @property
    def ok(self) -> bool:
        return self.status is Status.OK and self.measured is not None

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True))


_MEASURED_V2_DROPPED = ("tokens_per_s_rank0",)  # never stored; listed so a hand-edited line loads


def migrate_row(doc: dict) -> dict:
    """A results line of any schema as the current one: bench/1 kept the sweep's flags under `sweep` (no run
    spec), bench/1 and /2 had no per-step times (their `step_seconds` median stands, with no spread)."""
    doc = dict(doc)
    schema = doc.pop("schema", None)
    if schema in _RESULTS_BEFORE_STEP_TIMES:
        if "sweep" in doc:
            doc["legacy_sweep"] = doc.pop("sweep")
        m = doc.get("measured")
        if isinstance(m, dict):
            m = {k: v for k, v in m.items() if k in Measured.model_fields and k not in _MEASURED_V2_DROPPED}
            m.setdefault("warmup_steps", 1)  # bench/2's median left out the first step only
            doc["measured"] = m
        pred = doc.get("predicted")
        if isinstance(pred, dict):
            doc["predicted"] = {
                k: ({kk: vv for kk, vv in v.items() if kk in Prediction.model_fields} if isinstance(v, dict) else v)
                for k, v in pred.items()
            }
    doc["schema"] = RESULTS_SCHEMA
    return doc


def parse_row(doc: dict | ResultRow) -> ResultRow:
    if isinstance(doc, ResultRow):
        return doc
    return ResultRow.model_validate(migrate_row(doc))


def parse_rows(docs: list) -> list[ResultRow]:
    """Rows from objects (tests, callers holding JSON), each migrated and validated; a bad one is an error."""
    out = []
    for i, d in enumerate(docs, 1):
        try:
            out.append(parse_row(d))
        except ValidationError as e:
            raise FtoptError(f"Result {i} is not a valid result line: {validation_message(e)}.") from None
    return out


# Lines a results file may have that are not result rows, each named in its own warning up to this many; the rest
# are one counted line. A few bad lines (a hand edit, a line from a crashed writer) are each worth finding; many
# come from one cause (another tool's file, a newer ftopt's schema), which the first ones show, and a warning per
# line would bury the command's own output.
MAX_LINE_WARNINGS = 3


class SkippedLine(BaseModel):
    """A non-empty line of a results file that is not a result row: its number and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    line: int
    why: str  # "an invalid result (<field>: <problem>)" or "a corrupt result (<parser message>)"


class ResultsFile(BaseModel):
    """A results file as read: its valid rows (migrated to the current schema) and the lines that are not rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    rows: list[ResultRow]
    skipped: list[SkippedLine]

    def warnings(self) -> list[str]:
        """One line per skipped line, the first MAX_LINE_WARNINGS of them; the rest counted in one more."""
        said = [f"{self.path}, line {s.line}: skipped {s.why}" for s in self.skipped[:MAX_LINE_WARNINGS]]
        rest = self.skipped[MAX_LINE_WARNINGS:]
        if rest:
            said.append(
                f"{self.path}: skipped {len(rest)} more lines that are not result rows (lines {rest[0].line} to "
                f"{rest[-1].line}); {len(self.rows)} valid result lines read"
            )
        return said

    def no_rows_error(self) -> FtoptError:
        """The one sentence for a file without a valid row: how many lines were not rows, and the first's problem."""
        if not self.skipped:
            return FtoptError(f"The results file {self.path} has no valid result line.")
        first = self.skipped[0]
        lines = "its one line is not" if len(self.skipped) == 1 else f"none of its {len(self.skipped)} lines is"
        return FtoptError(
            f"The results file {self.path} has no valid result line: {lines} a result row; line {first.line} "
            f"is {first.why}."
        )


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _read_line(line: str) -> ResultRow:
    doc = json.loads(line)
    if not isinstance(doc, dict) or "key" not in doc or "status" not in doc:
        raise ValueError("not a result object")
    return parse_row(doc)


def current_attempts(rows: list[ResultRow]) -> list[ResultRow]:
    """One row per run key: a rerun appends a retried run's new attempt after the failed one (which stays in the
    file as its record), so a key can have several lines. The one that stands is the last successful attempt, else
    the last final one (Status.final), else the last; a later failure never hides a success. In the order keys first
    appear."""
    chosen: dict[str, ResultRow] = {}
    for r in rows:
        prev = chosen.get(r.key)
        if prev is None or (r.ok, r.status.final) >= (prev.ok, prev.status.final):
            chosen[r.key] = r
    return list(chosen.values())


def scan_results(path: str | Path) -> ResultsFile:
    """Every valid line, migrated to the current schema, and every other non-empty line with its number and why
    (the good lines are kept); a missing file reads as empty. `rows` holds each run's current attempt
    (current_attempts): a retried run's earlier failures stay in the file but are not counted twice."""
    p = Path(path)
    rows, skipped = [], []
    lines = p.read_text(errors="replace").splitlines() if p.exists() else []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(_read_line(line))
        except ValidationError as e:  # fields and rules only: the line's values may be anything, and long
            skipped.append(SkippedLine(line=n, why=f"an invalid result ({_clip(validation_message(e, values=False))})"))
        except ValueError as e:
            skipped.append(SkippedLine(line=n, why=f"a corrupt result ({_clip(first_line(e))})"))
    return ResultsFile(path=str(p), rows=current_attempts(rows), skipped=skipped)


def read_results(path: str | Path, warn: Callable[[str], None] = lambda m: None) -> list[ResultRow]:
    """Every valid line (scan_results); the lines that are not result rows go to `warn` (ResultsFile.warnings)."""
    found = scan_results(path)
    for message in found.warnings():
        warn(message)
    return found.rows


def read_metrics(path: str | Path) -> RunMetrics:
    """A run's metrics.json (a metrics/2 file has no per-step times: its median stands; metrics/3 has no step-0
    quality)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != METRICS_SCHEMA and isinstance(doc.get("measured"), dict):
        doc["measured"] = {"warmup_steps": 1, **doc["measured"]}
        doc["schema"] = METRICS_SCHEMA
    try:
        return RunMetrics.model_validate(doc)
    except ValidationError as e:
        raise FtoptError(f"{path} is not a valid metrics.json: {validation_message(e)}.") from None
