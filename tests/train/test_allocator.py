"""`train` runs CUDA with expandable segments unless the user set PYTORCH_CUDA_ALLOC_CONF."""

from ftopt.train.allocator import ALLOC_ENV, allocator_env, allocator_note


def test_cuda_runs_get_expandable_segments_unless_the_user_chose():
    assert allocator_env({}, on_cuda=True) == {ALLOC_ENV: "expandable_segments:True"}
    assert allocator_env({ALLOC_ENV: "max_split_size_mb:128"}, on_cuda=True) == {}  # the user's own is kept
    assert allocator_env({}, on_cuda=False) == {}  # CPU runs: no CUDA allocator to configure


def test_a_user_setting_without_expandable_segments_gets_a_note():
    assert allocator_note({}, on_cuda=True) is None
    assert allocator_note({ALLOC_ENV: "expandable_segments:True,max_split_size_mb:64"}, on_cuda=True) is None
    note = allocator_note({ALLOC_ENV: "max_split_size_mb:128"}, on_cuda=True)
    assert note and "max_split_size_mb:128" in note and "expandable_segments:True" in note
    assert allocator_note({ALLOC_ENV: "max_split_size_mb:128"}, on_cuda=False) is None


def test_launcher_ranks_get_the_setting(monkeypatch, tmp_path):
    """The launched ranks' environment carries it (captured instead of running ranks)."""
    from ftopt.planner.resolve import new_run, setup
    from ftopt.spec import Combination, ModelRef, load_hardware
    from ftopt.train import engine, ranks

    seen = {}

    def fake_run_ranks(cmd, rdzv, log_dir, env):
        seen.update(env)
        return {0: 0}, False

    monkeypatch.delenv(ALLOC_ENV, raising=False)
    monkeypatch.setattr(engine.ranks, "run_ranks", fake_run_ranks)
    hw = load_hardware("a100-80g")
    spec = new_run(hw, ModelRef(), setup(hw), Combination(zero=2)).model_copy(
        update={
            "output": new_run(hw, ModelRef(), setup(hw), Combination()).output.model_copy(update={"dir": str(tmp_path)})
        }
    )
    try:
        engine._launch_ranks(spec, ranks.Rendezvous(procs_per_node=1, master_port=29500))
    except Exception:
        pass  # the fake rank wrote no metrics: only the environment matters here
    assert seen[ALLOC_ENV] == "expandable_segments:True"
