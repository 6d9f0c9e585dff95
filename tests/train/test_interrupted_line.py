"""Ctrl-C during `ftopt train`: the run's line (where its checkpoint is, how to go on) goes up as the command's one
line (ftopt.spec.errors.Interrupted), never printed beside the command's own 'interrupted'."""

import pytest

from ftopt.spec.errors import Interrupted


class _Stopped:
    def stop(self):
        pass


def test_a_one_process_run_raises_its_line_instead_of_printing_it(tmp_path):
    from ftopt.train import worker

    class Trainer:
        def train(self, resume_from_checkpoint=None):
            raise KeyboardInterrupt

    logged = []
    with pytest.raises(Interrupted, match="interrupted before the first checkpoint in .*--resume starts"):
        worker._train(Trainer(), None, 1, None, (_Stopped(), None), logged.append, tmp_path)
    assert logged == []
    with pytest.raises(KeyboardInterrupt) as e:  # a launched rank: its launcher says it for all ranks
        worker._train(Trainer(), None, 2, None, (_Stopped(), None), logged.append, tmp_path)
    assert not isinstance(e.value, Interrupted) and logged == []


def test_launched_ranks_raise_their_line_instead_of_printing_it(tmp_path, monkeypatch, capsys):
    from ftopt.train import engine, ranks

    spec = type("Spec", (), {"output_dir": tmp_path})()
    monkeypatch.setattr(ranks, "run_ranks", lambda *a: ({0: ranks.INTERRUPTED, 1: ranks.INTERRUPTED}, True))
    monkeypatch.setattr(engine, "_env", lambda spec: {})
    monkeypatch.setattr(engine, "worker_module", lambda spec: "ftopt.train.worker")
    with pytest.raises(Interrupted, match="interrupted"):
        engine._launch_ranks(spec, None, [])
    assert capsys.readouterr().err == ""
