"""`ftopt plan --export`: every exported launcher starts its run with the CUDA allocator setting the plan's reserved
figure assumes (expandable segments, as `ftopt train` sets it), and keeps a value the user exported. The scripts
run here under stand-ins for the tools they start, which record the variable they were given."""

import os
import subprocess

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()
VAR = "PYTORCH_CUDA_ALLOC_CONF"
RECORD = f'#!/bin/sh\nprintf "%s" "${{{VAR}-unset}}" > "$CALLS"\n'  # what the started tool sees
SRUN = '#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n'  # runs the task once, here
TOOLS = {
    "torchrun.sh": {"torchrun": RECORD},
    "launch.sh": {"accelerate": RECORD},
    "slurm.sbatch": {"srun": SRUN, "scontrol": "#!/bin/sh\necho n0\n", "ftopt": RECORD},
}


def _export(tmp_path, *flags):
    folder = tmp_path / "export"
    r = runner.invoke(app, ["plan", "--method", "analytic", "--export", str(folder), *flags])
    assert r.exit_code == 0, r.output
    return folder


def _seen(folder, script, user_value=None) -> str:
    """Run `script` with stand-ins for its tools; the allocator setting the tool it starts received."""
    bin_dir = folder.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in TOOLS[script].items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = folder.parent / "calls.txt"
    env = {k: v for k, v in os.environ.items() if k != VAR} | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env |= {"CALLS": str(calls), "SLURM_JOB_NODELIST": "n0", "SLURM_SUBMIT_DIR": str(folder)}
    env |= {"FTOPT_MODEL": "m", "FTOPT_DATA": "d"} | ({VAR: user_value} if user_value is not None else {})
    subprocess.run([str(folder / script)], env=env, check=True, timeout=60)
    return calls.read_text()


@pytest.fixture(scope="module")
def gpu_export(tmp_path_factory):
    """A GPU plan on FSDP2: all three launchers (torchrun.sh, launch.sh, slurm.sbatch)."""
    tmp = tmp_path_factory.mktemp("gpu")
    return _export(tmp, "--model", "llama-2-7b", "--gpu", "h100-80g", "--gpus", "8", "--full-only", "--engine", "fsdp")


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_every_launcher_starts_its_run_with_expandable_segments(gpu_export, script):
    text = (gpu_export / script).read_text()
    assert "reserved memory per GPU assumes expandable_segments:True" in text  # the why, in the file
    assert _seen(gpu_export, script) == "expandable_segments:True"


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_a_value_the_user_exported_is_kept(gpu_export, script):
    assert _seen(gpu_export, script, "max_split_size_mb:128") == "max_split_size_mb:128"
    assert _seen(gpu_export, script, "") == ""  # set, though empty: still the user's choice, as ftopt train keeps it


def test_the_export_line_alone_under_bash_keeps_the_users_value(gpu_export):
    """The line as a user's shell runs it, apart from the script: the user's value wins, else expandable segments."""
    line = next(x for x in (gpu_export / "launch.sh").read_text().splitlines() if x.startswith(f"export {VAR}="))
    env = {k: v for k, v in os.environ.items() if k != VAR}
    show = f'{line}; printf "%s" "${VAR}"'
    assert (
        subprocess.run(["bash", "-c", show], env=env, capture_output=True, text=True).stdout
        == "expandable_segments:True"
    )
    mine = subprocess.run(
        ["bash", "-c", show], env=env | {VAR: "backend:cudaMallocAsync"}, capture_output=True, text=True
    )
    assert mine.stdout == "backend:cudaMallocAsync"


def test_a_cpu_plan_sets_no_cuda_allocator(tmp_path):
    """As `ftopt train` on a CPU: there is no CUDA allocator to configure."""
    folder = _export(tmp_path, "--model", "tiny-llama", "--gpu", "cpu")
    for script in ("launch.sh", "slurm.sbatch"):
        assert VAR not in (folder / script).read_text()
