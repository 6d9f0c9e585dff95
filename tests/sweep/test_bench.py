"""Sweep with injected OOM and crash, resume, corrupt results, grids, calibration, atomic appends."""

import os
import re
from datetime import datetime, timezone

import pytest

from ftopt.planner import resolve
from ftopt.planner.calibration import calibrate, fit_time_model, spearman
from ftopt.results.rows import WARMUP_STEPS, ResultRow
from ftopt.spec import Combination, load_hardware
from ftopt.spec.errors import FtoptError
from ftopt.spec.io import append_line_atomic
from ftopt.sweep.bench import read_results, run_sweep, sweep_runs
from ftopt.sweep.grid import load_grid


def _base(max_steps=3, seq_len=32, micro_batch=4):
    hw = load_hardware("cpu")
    return resolve.finish_run(
        resolve.new_run(
            hw,
            resolve.model_ref("tiny-llama", weights=False),
            resolve.setup(hw, seq_len=seq_len, micro_batch=micro_batch),
            resolve.combination(),
        ),
        data={"eval_max_examples": 0},
        schedule={"max_steps": max_steps},
        output={},
    )


def test_sweep_records_oom_and_crash_and_resumes(tmp_path):
    combos = [Combination(), Combination(lora_r=4), Combination(gc=True)]
    runs = sweep_runs(_base(), combos, tmp_path / "runs")
    keys = [r.key() for r in runs]
    results = tmp_path / "results.jsonl"
    events = []
    rows = run_sweep(runs, results, inject={keys[0]: "oom", keys[1]: "crash"}, on_event=lambda k, i: events.append(k))
    status = {r.key: r.status.value for r in rows}
    assert status == {keys[0]: "oom", keys[1]: "error", keys[2]: "ok"}
    oom = next(r for r in rows if r.status.value == "oom")
    assert "out of memory" in oom.error_tail and oom.predicted.analytic.peak_bytes_per_gpu > 0
    ok = next(r for r in rows if r.ok)
    assert ok.measured.peak_bytes_per_gpu > 0 and ok.predicted.traced is not None
    assert ok.run.setup.seq_len == 32 and ok.run.combination.gc is True  # the run, echoed
    # every step's time is kept; the median leaves out the warm-up steps
    assert len(ok.measured.step_times) == 3 and ok.measured.warmup_steps == WARMUP_STEPS
    assert ok.measured.step_seconds == ok.measured.step_times[-1]  # 3 steps, 2 of warm-up: the third
    # a second run of the same sweep skips what has a result (ok, oom) and tries the crashed run again: its new
    # line follows the failed one, which stays as the record of that attempt
    events.clear()
    rows2 = run_sweep(runs, results, on_event=lambda k, i: events.append((k, i.get("retry"))))
    assert {r.key: r.status.value for r in rows2} == {keys[0]: "oom", keys[1]: "ok", keys[2]: "ok"}
    assert events == [("skip", None), ("skip", None), ("start", "error"), ("done", "error")]
    lines = [ResultRow.model_validate_json(x) for x in results.read_text().splitlines()]
    assert [(r.key, r.status.value) for r in lines][-2:] == [(keys[2], "ok"), (keys[1], "ok")]
    assert [r.status.value for r in lines if r.key == keys[1]] == ["error", "ok"]
    # a third run has nothing left to do
    events.clear()
    assert len(run_sweep(runs, results, on_event=lambda k, i: events.append(k))) == 3
    assert events == ["skip"] * 3 and len(results.read_text().splitlines()) == 4


def test_zero_processes_and_run_timeout(tmp_path):
    # a run no machine finishes within the timeout, however fast: the timeout, not the speed, ends it
    runs = sweep_runs(_base(max_steps=10**5), [Combination(zero=2)], tmp_path / "runs", zero_gpus=1)
    assert runs[0].spec.setup.world_size == 1  # a one-GPU machine can run the ZeRO reference points
    rows = run_sweep(runs, tmp_path / "r.jsonl", run_timeout_seconds=3)
    assert rows[0].status.value == "timeout" and "--run-timeout" in rows[0].error_tail


def test_resume_after_interrupt_runs_only_the_rest_and_other_settings_run_again(tmp_path):
    combos = [Combination(lora_r=4), Combination(lora_r=4, gc=True)]
    runs = sweep_runs(_base(max_steps=2), combos, tmp_path / "runs")
    results = tmp_path / "r.jsonl"
    first = runs[0].key()
    # as if the sweep was interrupted after the first run finished
    append_line_atomic(results, _line(first))
    started = []
    run_sweep(runs, results, on_event=lambda k, i: started.append((k, i["key"])))
    assert ("skip", first) in started and sum(k == "start" for k, _ in started) == 1
    # the run just recorded, with other settings: not "done before", so it runs again beside the first record
    events = []
    rows = run_sweep(
        sweep_runs(_base(max_steps=3, seq_len=16), combos[1:], tmp_path / "runs"),
        results,
        on_event=lambda k, i: events.append(k),
    )
    assert events.count("start") == 1 and "skip" not in events
    assert sorted(r.measured.steps for r in rows if r.ok) == [2, 3]


def test_a_run_interrupted_mid_way_runs_again_on_the_rerun(tmp_path):
    """Ctrl-C during a run leaves its folder claimed with steps and a checkpoint, and no results line: the rerun's
    `ftopt train` refused that folder ("already holds a run"), so the run was recorded as an error for good."""
    from ftopt.train import manifest

    runs = sweep_runs(_base(max_steps=2), [Combination(lora_r=4)], tmp_path / "runs")
    out = runs[0].spec.output_dir
    manifest.claim(out, resume=False, overwrite=False)  # what the interrupted run had written
    (out / "steps.jsonl").write_text('{"step": 1, "loss": 6.0}\n')
    (out / "checkpoint-1").mkdir()
    (out / "my_notes.txt").write_text("mine")  # added by the user meanwhile: never removed
    events = []
    rows = run_sweep(runs, tmp_path / "r.jsonl", on_event=lambda k, i: events.append(i))
    assert [r.status.value for r in rows] == ["ok"], rows[0].error_tail
    assert rows[0].measured.steps == 2 and (out / "my_notes.txt").read_text() == "mine"
    assert "error" not in events[-1]


def test_a_rerun_retries_error_timeout_and_failed_runs_and_never_oom_or_ok(tmp_path, monkeypatch):
    """Runs recorded as error or timeout were "done before" on every rerun, even after the cause was fixed."""
    import ftopt.sweep.bench as B

    combos = [Combination(), Combination(gc=True), Combination(lora_r=4), Combination(lora_r=4, gc=True)]
    runs = sweep_runs(_base(), combos, tmp_path / "runs")
    results = tmp_path / "r.jsonl"
    for run, status in zip(runs, ("error", "timeout", "failed", "oom")):
        row = ResultRow(key=run.key(), label="x", combination=run.spec.combination, status=status, error_tail="x")
        append_line_atomic(results, row.to_line())
    started = []
    monkeypatch.setattr(B, "_run_with_timeout", lambda cmd, env, timeout, procs: started.append(cmd) or (1, "boom"))
    events = []
    before = datetime.now(timezone.utc)
    rows = run_sweep(runs, results, on_event=lambda k, i: events.append((k, i.get("retry"))))
    assert len(started) == 3 and ("skip", None) in events
    assert [e for e in events if e[0] == "start"] == [("start", "error"), ("start", "timeout"), ("start", "failed")]
    assert len(rows) == 4 and len(results.read_text().splitlines()) == 7  # 4 first attempts, 3 retries
    # each new line says when its attempt ended: the page tells a retry in progress from its earlier attempt by it
    retries = [ResultRow.model_validate_json(x) for x in results.read_text().splitlines()[4:]]
    assert all(before <= r.ended_at <= datetime.now(timezone.utc) for r in retries)


def test_the_current_attempt_of_a_run_never_hides_a_success():
    """A key with several lines (a retried run): its last success stands, else its last final (oom) line, else its
    last line; keys keep the order they first appeared in."""
    from ftopt.results.rows import Measured, current_attempts

    def row(key, status):
        m = Measured(peak_bytes_per_gpu=1, step_seconds=0.1, steps=3) if status == "ok" else None
        return ResultRow(key=key, label=key, combination=Combination(), status=status, measured=m)

    rows = [row("a", "error"), row("b", "timeout"), row("a", "ok"), row("a", "error"), row("b", "error")]
    rows += [row("c", "oom"), row("c", "timeout")]
    assert [(r.key, r.status.value) for r in current_attempts(rows)] == [("a", "ok"), ("b", "error"), ("c", "oom")]


def test_bench_exits_non_zero_with_one_line_when_no_run_succeeded(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import ftopt.sweep.bench as B
    from ftopt.cli.app import app

    grid = tmp_path / "g.yaml"
    grid.write_text("combinations:\n  - {lora_r: 4}\n  - {gc: true}\n")
    monkeypatch.setattr(B, "_run_with_timeout", lambda cmd, env, timeout, procs: (1, "RuntimeError: broken"))
    bench = ["bench", "--out", str(tmp_path / "b"), "--grid", str(grid), "--max-steps", "2", "--gpu", "cpu"]
    r = CliRunner().invoke(app, bench)
    assert r.exit_code == 1, r.output
    said = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert said == [
        "error: no run of the sweep succeeded (0 of 2: 2 error); each failed run's error_tail is in the results "
        "file, and a rerun of the same command tries the error, timeout and failed ones again."
    ]
    r = CliRunner().invoke(app, bench)  # the rerun tries both again
    assert r.exit_code == 1 and r.output.count("running again (last attempt: error)") == 2, r.output


def test_a_failed_run_says_why_on_the_console(tmp_path):
    runs = sweep_runs(_base(), [Combination(lora_r=4)], tmp_path / "runs")
    events = []
    run_sweep(runs, tmp_path / "r.jsonl", inject={runs[0].key(): "crash"}, on_event=lambda k, i: events.append(i))
    assert events[-1]["status"] == "error" and "injected" in events[-1]["error"].lower(), events[-1]


def test_corrupt_results_keep_good_lines(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(f'{_line("a")}\n{{"key": "b", "sta\n[1]\n{_line("c")}\n{{"key": "d", "status": "ok"}}\n')
    warnings = []
    rows = read_results(p, warn=warnings.append)
    assert [r.key for r in rows] == ["a", "c"]
    assert [any(f"line {n}" in w for w in warnings) for n in (2, 3, 5)] == [True] * 3  # 5: not a valid result


def _line(key: str) -> str:
    """A valid results line of a failed run."""
    return ResultRow(key=key, label=key, combination=Combination(), status="oom", error_tail="oom").to_line()


def test_append_on_full_disk_leaves_no_partial_line(tmp_path, monkeypatch):
    p = tmp_path / "r.jsonl"
    append_line_atomic(p, '{"key": "a", "status": "ok"}')
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:7]))  # the disk fills mid-line
    with pytest.raises(OSError):
        append_line_atomic(p, '{"key": "b", "status": "ok"}')
    monkeypatch.setattr(os, "write", real_write)
    assert p.read_text() == '{"key": "a", "status": "ok"}\n'


def test_grid_yaml(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("grid:\n  gc: [false, true]\n  lora_r: [0, 8]\n  zero: [0, 2]\n  offload: [none, optimizer]\n")
    combos = load_grid(g)
    assert len(combos) == 12  # 16 minus the 4 with optimizer offload and no ZeRO
    g.write_text("grid:\n  gc: [true]\n  flash: [true]\n")
    with pytest.raises(FtoptError, match="unknown option"):
        load_grid(g)
    g.write_text("grid:\n  gc: [maybe]\n")  # every point invalid: the reason is named, not only "no valid"
    with pytest.raises(FtoptError, match="gc: Input should be a valid boolean.*'maybe'"):
        load_grid(g)
    g.write_text("combinations:\n  - {lora_r: 8, zero: 5}\n")
    with pytest.raises(FtoptError, match="zero"):
        load_grid(g)


@pytest.mark.parametrize(
    "axes,said",
    [
        ("lora_r: [0, x]", 'lora_r: "x" is in no valid combination of the grid (the first: lora_r: Input should be'),
        ("lora_r: [8, -8]", "lora_r: -8 is in no valid combination"),
        ("lora_r: [0]\n  dora: [false, true]", "dora: true is in no valid combination"),
        ("attn: [sdpa, sdpaa]", 'attn: "sdpaa" is in no valid combination'),
    ],
)
def test_a_grid_value_in_no_valid_point_is_refused_not_dropped(tmp_path, axes, said):
    """lora_r: [0, x] ran one full fine-tune and reported '1 of 1 runs ok': the typed value vanished with the
    points that break a rule between options."""
    g = tmp_path / "g.yaml"
    g.write_text(f"grid:\n  {axes}\n")
    with pytest.raises(FtoptError, match=re.escape(said)):
        load_grid(g)
    g.write_text("grid:\n  lora_r: [0, 8]\n  dora: [false, true]\n")  # DoRA needs LoRA: the full+DoRA point only
    assert sorted((c.lora_r, c.dora) for c in load_grid(g)) == [(0, False), (8, False), (8, True)]


@pytest.mark.parametrize(
    "text,said",
    [
        ("combinations: [1, 2]\n", "'combinations' must be a list of option mappings"),
        ("combinations: 5\n", "'combinations' must be a list of option mappings"),
        ("grid: [1, 2]\n", "'grid' must map option names to lists of values"),
        ("grid: lora_r\n", "'grid' must map option names to lists of values"),
    ],
)
def test_a_grid_of_the_wrong_shape_is_one_sentence(tmp_path, text, said):
    """Each of these ended in a TypeError or AttributeError traceback before any run."""
    g = tmp_path / "g.yaml"
    g.write_text(text)
    with pytest.raises(FtoptError, match=said):
        load_grid(g)


class _Peak:
    """A hardware stand-in: 1 TFLOP/s peak at every dtype."""

    def flops_for(self, dtype):
        return 1e12


def _row(label, x, kernels, zero, seconds, repeat=0):
    return {
        "status": "ok",
        "key": f"{label}-{repeat}",
        "label": label,
        "gpus": 2 if zero else 1,
        "combination": Combination(zero=zero, lora_r=1 + int(label.split("-")[0].removeprefix("c"))).model_dump(),
        "sweep": {"precision": "fp32"},
        "predicted": {"analytic": {"flops_per_step": x * 1e12, "kernels_per_step": kernels}},
        "measured": {"peak_bytes_per_gpu": 1, "step_seconds": seconds},
    }


def test_calibration_recovers_known_constants():
    mfu, per_kernel, fixed = 0.37, 2e-5, 0.021
    xs = [0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.3, 0.5]
    ks = [900, 1500, 1100, 2500, 1300, 800, 2000, 1700]  # operator counts vary independently of FLOPs
    got = fit_time_model([(x, k, x / mfu + k * per_kernel + fixed) for x, k in zip(xs, ks)])
    assert got == pytest.approx((mfu, per_kernel, fixed), rel=1e-9)
    zero_extra = {2: 0.15, 3: 0.9}  # DeepSpeed engine overhead per step, by stage
    rows = [
        _row(f"c{i}-z{z}", x, k, z, x / mfu + k * per_kernel + fixed + zero_extra.get(z, 0.0))
        for i, (x, k) in enumerate(zip(xs, ks))
        for z in (0, 2, 3)
    ]
    fit = calibrate(rows, _Peak())
    assert (fit.mfu, fit.seconds_per_kernel, fit.fixed_step_seconds) == pytest.approx((mfu, per_kernel, fixed))
    assert fit.zero_step_seconds == pytest.approx(zero_extra)
    assert fit.holdout_runs == len(rows)  # every combination predicted by a fit that did not see it
    assert fit.holdout_worst_abs_error < 1e-9 and fit.spearman_rho == pytest.approx(1.0)


def test_calibration_respects_bounds_and_old_results():
    # measured faster than the peak allows: mfu is capped at 1, the overheads are never negative
    mfu, per_kernel, fixed = fit_time_model([(0.2, 100, 0.1), (0.4, 100, 0.2)])
    assert mfu == 1.0 and per_kernel >= 0 and fixed >= 0
    # results written before kernels were counted: the kernel term drops out, the rest still fits
    mfu, per_kernel, fixed = fit_time_model([(x, None, x / 0.5 + 0.01) for x in (0.1, 0.2, 0.3)])
    assert (mfu, per_kernel, fixed) == pytest.approx((0.5, 0.0, 0.01))


def test_calibration_merges_repeats_before_holding_out():
    # two repeats of one combination must not predict each other: the held-out unit is the combination
    rows = [
        _row(f"c{i}", x, 1000, 0, x / 0.5 + 0.01 * (1 + 0.1 * rep), rep)
        for i, x in enumerate((0.1, 0.2, 0.3, 0.4))
        for rep in range(3)
    ]
    fit = calibrate(rows, _Peak())
    assert fit.fit_runs == 12 and fit.combinations == 4 and fit.holdout_runs == 4
    assert [h.measured_seconds for h in fit.holdout] == pytest.approx([x / 0.5 + 0.011 for x in (0.1, 0.2, 0.3, 0.4)])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_rank_check_ignores_near_ties():
    from ftopt.planner.calibration import ordered_pairs

    measured = [1.00, 1.05, 2.0, 3.0]  # the first two are a tie within 10%
    assert ordered_pairs([1.1, 1.0, 2.0, 3.0], measured) == (5, 5)  # swapping the tie is not an error
    assert ordered_pairs([1.0, 1.05, 3.0, 2.0], measured) == (4, 5)


def _bench_combinations(tmp_path, monkeypatch, *flags) -> list[Combination]:
    """The combinations `ftopt bench` would sweep (the sweep itself is replaced by a recorder)."""
    from typer.testing import CliRunner

    import ftopt.sweep.prepare
    from ftopt.cli.app import app

    seen = []
    monkeypatch.setattr(ftopt.sweep.prepare, "sweep_runs", lambda base, combos, *a, **k: seen.extend(combos) or [])
    r = CliRunner().invoke(app, ["bench", "--gpu", "cpu", "--out", str(tmp_path / "b"), *flags])
    assert r.exit_code == 0, r.output
    return seen


def test_bench_quant_and_optim_lists_are_the_cross_product_without_duplicates(tmp_path, monkeypatch):
    from ftopt.spec import Optim, Quant

    plain = _bench_combinations(tmp_path, monkeypatch)
    swept = _bench_combinations(tmp_path, monkeypatch, "--quant", "none,nf4,int8", "--optim", "adamw,adamw-8bit")
    assert len(set(swept)) == len(swept) and swept[: len(plain)] == plain  # `none`/`adamw` add no copy of a point
    lora0 = [c for c in plain if c.lora and not c.zero]
    pairs = {(c.quant, c.optim) for c in swept if c.lora and not c.zero and not c.gc and c.attn is lora0[0].attn}
    assert pairs == {(q, o) for q in (Quant.NONE, Quant.NF4, Quant.INT8) for o in (Optim.ADAMW, Optim.ADAMW_8BIT)}
    full = [c for c in swept if not c.lora and not c.gc and c.attn is lora0[0].attn]
    assert {c.optim for c in full} == {Optim.ADAMW, Optim.ADAMW_8BIT} and len(full) == 2  # no quantized full FT
    zero3 = [c for c in swept if c.zero == 3]
    assert len(zero3) == 1  # ZeRO-3 takes neither
    assert _bench_combinations(tmp_path, monkeypatch, "--quant", "none") == plain


def test_clean_exit_without_metrics_is_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """A run that exits 0 but wrote no metrics.json is recorded as failed with the log's last error (it used to
    crash the whole sweep on reading the missing file)."""
    import ftopt.sweep.bench as B

    log = 'loading...\nTraceback (most recent call last):\n  File "x.py", line 1\nValueError: tokenizer broke\ndone\n'
    monkeypatch.setattr(B, "_run_with_timeout", lambda cmd, env, timeout, procs: (0, log))
    runs = sweep_runs(_base(), [Combination(), Combination(gc=True)], tmp_path / "runs")
    rows = run_sweep(runs, tmp_path / "results.jsonl")
    assert [r.status.value for r in rows] == ["failed", "failed"]
    assert "without" in rows[0].error_tail and "ValueError: tokenizer broke" in rows[0].error_tail
    assert rows[0].predicted.analytic.peak_bytes_per_gpu > 0


def test_bench_across_nodes_needs_a_host_file_and_hands_it_to_every_run(tmp_path, monkeypatch):
    """`bench --nodes N` starts each run from this host over ssh: without a good host file it stops before the first
    run (exit 2); with one, every run's specification carries the nodes and the host file."""
    from typer.testing import CliRunner

    import ftopt.sweep.bench as B
    from ftopt.cli.app import app
    from ftopt.spec import RunSpec

    grid = tmp_path / "g.yaml"
    grid.write_text("combinations:\n  - {lora_r: 8, zero: 2}\n")
    bench = ["bench", "--out", str(tmp_path / "b"), "--grid", str(grid), "--max-steps", "2", "--nodes", "2"]
    seen = []

    def fake_run(cmd, env, timeout, procs):
        seen.append(RunSpec.model_validate_json((tmp_path / cmd[cmd.index("--plan") + 1]).read_text()))
        return 1, "ssh: connect to host node-b port 22: Connection refused"

    monkeypatch.setattr(B, "_run_with_timeout", fake_run)
    r = CliRunner().invoke(app, bench)
    assert r.exit_code == 2 and "--hostfile" in r.output and not seen
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=2\n")
    r = CliRunner().invoke(app, [*bench, "--hostfile", str(hosts)])
    assert r.exit_code == 2 and "lists 1 host" in r.output and not seen
    hosts.write_text("node-a slots=2\nnode-b slots=2\n")
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    r = CliRunner().invoke(app, [*bench, "--hostfile", str(hosts)])
    assert r.exit_code == 2 and "lacks pdsh and ssh" in r.output and not seen
    from tests.train.fake_cluster import write_stand_ins

    write_stand_ins(tmp_path / "bin")  # never called: the runs are faked
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{path}")
    r = CliRunner().invoke(app, [*bench, "--hostfile", str(hosts)])
    assert r.exit_code == 1 and "no run of the sweep succeeded (0 of 1: 1 error)" in r.output, r.output
    assert len(seen) == 1 and seen[0].setup.nodes == 2 and seen[0].setup.world_size == 4
    assert seen[0].hostfile == str(hosts)
    rows = read_results(tmp_path / "b" / "results.jsonl")
    assert rows[0].status.value == "error" and "Connection refused" in rows[0].error_tail


def test_bench_refuses_a_quality_target_no_run_can_measure_before_any_run(tmp_path, monkeypatch):
    """A typo in the metric name ran the whole sweep; only `report` said so afterwards."""
    from typer.testing import CliRunner

    import ftopt.sweep.bench as B
    from ftopt.cli.app import app

    monkeypatch.setattr(B, "_run_with_timeout", lambda *a: pytest.fail("a run started"))
    r = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--quality-target", "exact>=0.5"])
    assert r.exit_code == 2 and "'exact', which no run measures" in r.output and "exact_match" in r.output


def test_optimizer_defaults_keep_stored_bench_keys_and_a_change_runs_again():
    """weight_decay and max_grad_norm joined the run spec after results files existed: at their defaults a run's
    identity (its bench key's digest) is the one it had without them, so a rerun skips what is done; another value
    is another run."""
    from ftopt.sweep.bench import BenchRun

    hw = load_hardware("cpu")
    spec = resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw), resolve.combination())
    before = spec.to_json()["schedule"]
    for k in ("weight_decay", "max_grad_norm", "max_hours"):  # a spec as written before the two fields existed
        del before[k]
    assert spec.identity()["schedule"] == before
    decayed = spec.model_copy(update={"schedule": spec.schedule.model_copy(update={"weight_decay": 0.1})})
    assert BenchRun(spec=decayed).key() != BenchRun(spec=spec).key()


@pytest.mark.parametrize(
    "flags,said",
    [
        (("--run-timeout", "nan"), "--run-timeout must be a positive number of seconds, got nan"),
        (("--run-timeout", "inf"), "--run-timeout must be a positive number of seconds, got inf"),
        (("--zero-gpus", "0"), "--zero-gpus must be at least 1, got 0"),
        (("--lora-dropout", "0"), "--lora-dropout 0 adds no run: each LoRA point already runs without adapter"),
        (("--lora-dropout", "1"), "--lora-dropout is the share of each adapter input zeroed"),
        (("--data", "missing.jsonl"), "--data missing.jsonl does not exist"),
        (("--eval-data", "missing.jsonl"), "--eval-data missing.jsonl does not exist"),
        (("--data", "."), "--data . is a folder but not a saved dataset"),
        (("--data", "{bad}"), "line 2: not valid JSON"),
        (("--data", "{fieldless}"), "has none of the fields ftopt reads"),
    ],
)
def test_bench_refuses_bad_flags_before_the_first_run(tmp_path, monkeypatch, flags, said):
    """Each of these passed the checks: every run then failed on it (data) or the sweep died in a traceback."""
    from typer.testing import CliRunner

    import ftopt.sweep.prepare
    from ftopt.cli.app import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ftopt.sweep.prepare, "run_sweep", lambda *a, **k: pytest.fail("a run started"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n' * 10)
    (tmp_path / "fieldless.jsonl").write_text('{"body": "a"}\n' * 20)
    flags = [f.format(bad=tmp_path / "bad.jsonl", fieldless=tmp_path / "fieldless.jsonl") for f in flags]
    r = CliRunner().invoke(app, ["bench", "--gpu", "cpu", "--out", str(tmp_path / "b"), *flags])
    assert r.exit_code == 2, r.output
    assert said in r.output and "Traceback" not in r.output


def test_a_rerun_with_other_settings_into_the_same_folder_is_refused_before_any_run(tmp_path, monkeypatch):
    """One folder holds one sweep: a rerun with other settings appended its runs to the earlier sweep's results,
    and the report then listed each combination twice, weighed the copies as alternatives, and judged them all by
    the last quality target. The same settings still resume, and a larger grid adds to the sweep."""
    from typer.testing import CliRunner

    import ftopt.sweep.bench as B
    from ftopt.cli.app import app

    started = []

    def oom(run, key, *a):
        started.append(key)
        c = run.spec.combination
        return ResultRow(key=key, label=c.label(), combination=c, status="oom", error_tail="oom", run=run.spec)

    monkeypatch.setattr(B, "_run_one", oom)
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("combinations:\n  - {lora_r: 4}\n")
    two.write_text("combinations:\n  - {lora_r: 4}\n  - {lora_r: 4, zero: 2}\n")
    bench = ["bench", "--out", str(tmp_path / "b"), "--gpu", "cpu", "--seq-len", "32", "--max-steps", "6"]
    target = ["--quality-target", "exact_match>=0.5"]
    r = CliRunner().invoke(app, [*bench, "--grid", str(one), *target])
    assert r.exit_code == 1 and len(started) == 1, r.output  # every run oom: nothing measured
    r = CliRunner().invoke(app, [*bench, "--grid", str(two), *target])  # same settings: resumed, one more run
    assert r.exit_code == 1 and len(started) == 2 and "other settings" not in r.output, r.output
    lines = (tmp_path / "b" / "results.jsonl").read_text()
    for flags, said in (
        (["--max-steps", "8", *target], "--max-steps (6 then, 8 now)"),
        (
            ["--quality-target", "exact_match>=0.8"],
            "--quality-target ('exact_match>=0.5' then, 'exact_match>=0.8' now)",
        ),
        ([*target, "--lr", "0.01", "--seq-len", "16"], "--lr (0.001 then, 0.01 now); --seq-len (32 then, 16 now)"),
        ([*target, "--zero-gpus", "1"], "--zero-gpus (2 then, 1 now)"),
    ):
        r = CliRunner().invoke(app, [*bench, "--grid", str(two), *flags])
        assert r.exit_code == 2 and len(started) == 2, r.output
        said = f"error: {tmp_path / 'b'} holds a sweep with other settings: {said}; give another --out for this one"
        assert r.output.startswith(said) and len(r.output.strip().splitlines()) == 1, r.output
    assert (tmp_path / "b" / "results.jsonl").read_text() == lines
