"""Atomic writes keep the user's umask (mkstemp alone would leave every result file private, mode 0600)."""

import os
import stat
from pathlib import Path

import pytest

from ftopt.spec.io import append_line_atomic, atomic_write_text


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umask_mode(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        append_line_atomic(tmp_path / "b.jsonl", "{}")
    finally:
        os.umask(old)
    for name in ("a.json", "b.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_writing_never_sets_the_process_umask(tmp_path, monkeypatch):
    """The umask is process-wide: a write in one thread of `ftopt serve` must not change it under another."""

    def refuse(mask):
        raise AssertionError(f"os.umask({mask:#o}) was called")

    monkeypatch.setattr(os, "umask", refuse)
    atomic_write_text(tmp_path / "a.json", "{}")
    append_line_atomic(tmp_path / "b.jsonl", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, where no folder can be made")
@pytest.mark.parametrize(
    "args",
    [
        ("plan", "--method", "analytic", "--model", "tiny-llama", "--gpu", "cpu", "--export", "/proc/ftopt-x/e"),
        ("bench", "--out", "/proc/ftopt-x/b"),
        ("demo", "--out", "/proc/ftopt-x/d"),
    ],
)
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(args):
    """The check makes a folder rather than asking os.access, which answers yes to root even under /proc."""
    from typer.testing import CliRunner

    from ftopt.cli.app import app

    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 2, r.output
    assert "/proc is not writable" in r.output and "Traceback" not in r.output


def test_the_output_folder_check_leaves_nothing_behind(tmp_path):
    from ftopt.spec.io import check_out_folder

    check_out_folder(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
