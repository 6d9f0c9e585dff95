"""The layer contract (pyproject.toml [tool.importlinter]) holds, and it is live: a wrong-way import breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "HOME": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_layer_contract(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "ftopt", src / "ftopt", ignore=shutil.ignore_patterns("__pycache__", "base"))
    ok = _lint(src)
    assert ok.returncode == 0, ok.stdout[-2000:]
    # a lazy, wrong-way import (the bottom layer reaching the CLI) must break the layers and the cycle contracts
    units = src / "ftopt" / "spec" / "units.py"
    units.write_text(units.read_text() + "\n\ndef _wrong_way():\n    from ftopt.cli import display  # noqa: F401\n")
    broken = _lint(src)
    assert broken.returncode != 0
    assert "ftopt.spec is not allowed to import ftopt.cli" in broken.stdout


def test_a_training_rank_loads_neither_the_planner_nor_the_cli():
    code = (
        "import sys, ftopt.train.worker, ftopt.train.fsdp_worker; "
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('ftopt.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(eval(out.stdout))  # a list literal of package names
    assert not loaded & {"planner", "sweep", "report", "serve", "cli", "export"}, loaded


def test_the_public_api_keeps_its_names():
    code = (
        "import ftopt.estimate.analytic\n"  # the subpackage first: `estimate` must still be the function
        "from ftopt import estimate, plan, load_model, load_hardware, TrainingSetup, Combination, FtoptError\n"
        "assert callable(estimate) and estimate.__module__ == 'ftopt.estimate', estimate\n"
        "assert plan.__module__ == 'ftopt.planner.plan'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
