"""Atomic writes keep the user's umask (mkstemp alone would leave every result file private, mode 0600)."""

import os
import stat

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
