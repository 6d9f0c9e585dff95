"""Every way a run starts passes one trust gate (ftopt.spec.trust.admit) and one folder claim
(ftopt.train.outputs.prepare_output): `train`, `train --plan`, per-node, hostfile, bench's runs, a launched or
torchrun-started rank of either worker, and the scripts `plan --export` writes. The ways in are enumerated from the
source, so a new one fails here until it is listed and shown to pass both gates. Each is driven in-process up to
its refusal: nothing trains."""

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ftopt
from ftopt.cli.app import app
from ftopt.planner import resolve
from ftopt.spec import Combination, TrainingSetup, load_hardware
from ftopt.train import manifest
from ftopt.train.ranks import free_port

runner = CliRunner()
TRUST_REFUSED = "model.trust_remote_code is true, but a file cannot allow"
FOLDER_REFUSED = "holds files ftopt did not write"
NOTES = "my_notes.txt"


def _spec(out: Path, *, trust: bool = False, fsdp: bool = False, nodes: int = 1):
    hw = load_hardware("cpu")
    ref = resolve.model_ref("tiny-llama", weights=False, trust_remote_code=trust)
    setup = TrainingSetup(seq_len=32, micro_batch=1, precision="fp32", nodes=nodes)
    spec = resolve.new_run(hw, ref, setup, Combination(fsdp="full") if fsdp else Combination())
    return resolve.finish_run(spec, data={"eval_max_examples": 0}, schedule={"max_steps": 1}, output={"dir": str(out)})


def _run_json(tmp_path: Path, **kw) -> tuple[Path, Path]:
    """A run file and its output folder; `trust` puts trust_remote_code: true in the file."""
    out = tmp_path / "run"
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_spec(out, **kw).to_json()))
    return path, out


def _user_folder(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / NOTES).write_text("mine\n")


def _untouched(out: Path) -> bool:
    """The user's folder as it was: the notes kept, no manifest, nothing written."""
    return (out / NOTES).read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == [NOTES]


# ---- the ways in, each driven up to its gates -------------------------------------------------------------------
def _cli(args) -> tuple[int, str]:
    r = runner.invoke(app, ["train", *map(str, args)])
    return r.exit_code, r.output


def _hostfile_cli(tmp_path, monkeypatch, args):
    """Hostfile mode, with stand-ins for pdsh and ssh (checked before the claim; never reached here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("pdsh", "ssh"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    hosts = tmp_path / "hostfile"
    hosts.write_text("node-0 slots=1\nnode-1 slots=1\n")
    return _cli([*args, "--hostfile", hosts])


def _rank(module: str, argv, monkeypatch, capsys) -> tuple[int, str]:
    """One rank's entry function in this process, as torchrun or a launcher starts it (one rank: world size 1)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setattr(sys, "argv", [module, *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main()
    return e.value.code, capsys.readouterr().err


def _bench_child(tmp_path, monkeypatch, trust_in_file: bool, user_files: bool) -> tuple[int, str, Path]:
    """bench runs each point as `ftopt train --plan RUN.json` (its own flags after it); that command, in-process."""
    from ftopt.sweep import bench
    from ftopt.sweep.bench import sweep_runs

    class Started(Exception):
        pass

    seen = []

    def fake(cmd, env, timeout, procs):
        seen.append(cmd)
        raise Started

    monkeypatch.setattr(bench, "_run_with_timeout", fake)
    (run,) = sweep_runs(_spec(tmp_path / "unused"), [Combination()], tmp_path / "sweep" / "runs")
    with pytest.raises(Started):
        bench._run_one(run, run.key(), None, {}, set())
    (cmd,) = seen
    assert cmd[1:6] == ["-m", "ftopt", "train", "--plan", cmd[5]] and "--trust-remote-code" not in cmd
    if trust_in_file:  # the run file now asks for the model's code, as any file could
        doc = json.loads(Path(cmd[5]).read_text())
        doc["model"]["trust_remote_code"] = True
        Path(cmd[5]).write_text(json.dumps(doc))
    if user_files:
        _user_folder(run.spec.output_dir)
    code, output = _cli(cmd[4:])
    return code, output, run.spec.output_dir


def _per_node(path):
    return ["--plan", path, "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", free_port()]


WAYS = ["train", "train --plan", "per-node", "hostfile", "bench", "worker", "fsdp worker"]


def _start(way, tmp_path, monkeypatch, capsys, *, trust: bool, user_files: bool) -> tuple[int, str, Path]:
    """`way` started on a run file (trust_remote_code: true in it with `trust`) into an output folder (holding the
    user's my_notes.txt with `user_files`), up to its gates; (exit code, output, that folder)."""
    nodes = 2 if way in ("per-node", "hostfile") else 1
    path, out = _run_json(tmp_path, trust=trust, fsdp=way == "fsdp worker", nodes=nodes)
    if way == "bench":
        return _bench_child(tmp_path, monkeypatch, trust_in_file=trust, user_files=user_files)
    if user_files:
        _user_folder(out)
    if way in ("worker", "fsdp worker"):
        module = "ftopt.train.worker" if way == "worker" else "ftopt.train.fsdp_worker"
        return (*_rank(module, [path], monkeypatch, capsys), out)
    if way == "hostfile":
        return (*_hostfile_cli(tmp_path, monkeypatch, ["--plan", path]), out)
    args = {"train": ["--out", out, "--max-steps", "1"], "train --plan": ["--plan", path], "per-node": _per_node(path)}
    return (*_cli(args[way]), out)


@pytest.mark.parametrize("way", [w for w in WAYS if w != "train"])  # `train` alone reads no file
def test_a_file_asking_for_remote_code_is_refused_on_every_way_in(way, tmp_path, monkeypatch, capsys):
    code, output, out = _start(way, tmp_path, monkeypatch, capsys, trust=True, user_files=False)
    assert code == 2 and TRUST_REFUSED in output and "--trust-remote-code" in output, output
    assert not out.exists()  # refused before the folder was claimed


@pytest.mark.parametrize("way", WAYS)
def test_a_folder_of_the_users_files_is_refused_on_every_way_in(way, tmp_path, monkeypatch, capsys):
    code, output, out = _start(way, tmp_path, monkeypatch, capsys, trust=False, user_files=True)
    assert code == 2 and FOLDER_REFUSED in output and NOTES in output, output
    assert _untouched(out)


# ---- the enumeration: every way a run starts, found in the source -----------------------------------------------
# (module, top-level function) -> the ways above that exercise it. In-process starts: calls of the functions that
# run training. Started processes: the worker modules and `ftopt train` named as a command.
STARTS = {
    ("ftopt.cli.run", "_train"): {"train", "train --plan", "per-node", "hostfile"},  # engine.launch
    ("ftopt.train.engine", "launch"): {"train"},  # run_worker in this process, behind launch's gates
    ("ftopt.train.engine", "worker_module"): {"worker", "fsdp worker"},  # the launched ranks
    ("ftopt.train.worker", "main"): {"worker"},
    ("ftopt.train.fsdp_worker", "main"): {"fsdp worker"},
    ("ftopt.sweep.bench", "_run_one"): {"bench"},  # `ftopt train --plan`
    ("ftopt.export.fsdp", "torchrun_command"): {"fsdp worker"},  # torchrun.sh
    ("ftopt.export.cluster", "node_command"): {"per-node"},  # slurm.sbatch
}
RUNS_TRAINING = {"run_worker", "run_fsdp_worker", "launch"}  # launch: ftopt.train.engine's
WORKER_MODULES = {"ftopt.train.worker", "ftopt.train.fsdp_worker"}


def _starts_in(tree: ast.Module, module: str) -> set[tuple[str, str]]:
    engine_launch = module == "ftopt.train.engine" or any(
        isinstance(n, ast.ImportFrom) and n.module == "ftopt.train.engine" and any(a.name == "launch" for a in n.names)
        for n in ast.walk(tree)
    )
    found = set()
    for top in tree.body:
        if not isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for n in ast.walk(top):
            called = n.func.id if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) else None
            if called in RUNS_TRAINING and (called != "launch" or engine_launch):
                found.add((module, top.name))
            if isinstance(n, ast.Constant) and n.value in WORKER_MODULES:
                found.add((module, top.name))
            if isinstance(n, ast.List | ast.Tuple):  # a command line naming `ftopt train`
                words = [e.value for e in n.elts if isinstance(e, ast.Constant)]
                if any(words[i : i + 2] == ["ftopt", "train"] for i in range(len(words))):
                    found.add((module, top.name))
    return found


def test_every_way_a_run_starts_is_listed_and_exercised():
    root = Path(ftopt.__file__).parent
    found, mains = set(), set()
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("ftopt", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        found |= _starts_in(tree, module)
        if '__name__ == "__main__"' in path.read_text() or path.name == "__main__.py":
            mains.add(module)
    assert found == set(STARTS), "a new way to start a run: pass it through ftopt.spec.trust.admit and the folder claim"
    assert set().union(*STARTS.values()) == set(WAYS)
    assert mains == {"ftopt.__main__", *WORKER_MODULES}  # what `python -m` can start (`ftopt` is __main__'s entry)


# ---- the exported scripts -----------------------------------------------------------------------------------------
RECORD = '#!/bin/sh\nprintf "%s\\n" "$@" > "$CALLS"\n'  # a stand-in that records its arguments, one per line


def _export(tmp_path, spec) -> Path:
    from ftopt.export.configs import export_run
    from ftopt.spec import load_model

    folder = tmp_path / "export"
    export_run(spec, load_model(spec.model.ref), folder)
    return folder


def _script_args(folder: Path, script: str, tools: dict[str, str], *args: str) -> list[str]:
    """Run `script` with stand-ins for the tools it calls; the arguments the last of them received."""
    bin_dir = folder.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = folder.parent / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls)}
    env |= {"SLURM_JOB_NODELIST": "n0", "SLURM_SUBMIT_DIR": str(folder), "FTOPT_MODEL": "m", "FTOPT_DATA": "d"}
    subprocess.run([str(folder / script), *args], env=env, check=True, timeout=60)
    return calls.read_text().splitlines()


def test_every_exported_script_takes_trust_from_its_own_command_line(tmp_path):
    spec = _spec(tmp_path / "run", trust=True, fsdp=True)
    folder = _export(tmp_path, spec)
    scripts = {p.name for p in folder.iterdir() if p.is_file() and os.access(p, os.X_OK)}
    assert scripts == {"torchrun.sh", "launch.sh", "slurm.sbatch"}  # a new one is checked here first
    assert json.loads((folder / "run.json").read_text())["model"]["trust_remote_code"] is True  # data, not trust
    torchrun = _script_args(folder, "torchrun.sh", {"torchrun": RECORD}, "--trust-remote-code")
    assert torchrun[-4:] == ["-m", "ftopt.train.fsdp_worker", "run.json", "--trust-remote-code"]
    srun = '#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n'  # runs the task once
    tools = {"srun": srun, "scontrol": "#!/bin/sh\necho n0\n", "ftopt": RECORD}
    sbatch = _script_args(folder, "slurm.sbatch", tools, "--trust-remote-code")
    assert sbatch[:3] == ["train", "--plan", "run.json"] and sbatch[-1] == "--trust-remote-code"
    assert "--node-rank" in sbatch  # per-node mode
    accelerate = _script_args(folder, "launch.sh", {"accelerate": RECORD}, "--trust-remote-code")
    assert accelerate[-3:] == ["--config", "sft_config.yaml", "--trust-remote-code"]
    import yaml

    assert yaml.safe_load((folder / "sft_config.yaml").read_text())["trust_remote_code"] is False


def test_trl_takes_trust_from_launch_sh_and_not_from_the_config(tmp_path):
    """TRL's parser, as launch.sh's `accelerate launch -m trl.scripts.sft --config sft_config.yaml "$@"` calls it:
    the command line's flag overrides the file's false."""
    trl = pytest.importorskip("trl")
    spec = _spec(tmp_path / "run", trust=True)
    folder = _export(tmp_path, spec)
    parser = trl.TrlParser((trl.ScriptArguments, trl.SFTConfig, trl.ModelConfig))
    config = ["--config", str(folder / "sft_config.yaml"), "--output_dir", str(tmp_path / "trl")]
    for extra, trusted in (([], False), (["--trust-remote-code"], True)):
        _, training_args, _ = parser.parse_args_and_config(config + extra)
        assert training_args.trust_remote_code is trusted  # what trl/scripts/sft.py loads the model with


# ---- the torchrun path end to end, and the user's files ---------------------------------------------------------
def test_a_run_json_asking_for_remote_code_runs_under_torchrun_only_when_its_command_line_allows_it(
    tmp_path, monkeypatch, capsys
):
    """torchrun.sh hands each rank run.json; the rank's own command line (torchrun.sh's arguments) decides."""
    from ftopt.train import fsdp_worker

    spec = _spec(tmp_path / "run", trust=True, fsdp=True)
    folder = _export(tmp_path, spec)
    monkeypatch.chdir(folder)  # torchrun.sh runs from its folder

    def rank_argv(*script_args):
        args = _script_args(folder, "torchrun.sh", {"torchrun": RECORD}, *script_args)
        return args[args.index("-m") + 2 :]

    code, err = _rank("ftopt.train.fsdp_worker", rank_argv(), monkeypatch, capsys)
    assert code == 2 and TRUST_REFUSED in err and "run.json" in err
    assert not spec.output_dir.exists()
    started = []
    monkeypatch.setattr(fsdp_worker, "run_fsdp_worker", lambda s, claim: started.append((s, claim)) or {})
    monkeypatch.setattr(sys, "argv", ["ftopt.train.fsdp_worker", *rank_argv("--trust-remote-code")])
    fsdp_worker.main()
    ((run, claim),) = started
    assert run.model.trust_remote_code and claim  # allowed; and no launcher claimed the folder: rank 0 will


def test_a_file_the_user_adds_during_a_run_is_never_listed_nor_removed_by_overwrite(tmp_path, monkeypatch):
    """The manifest lists what the run wrote, exactly: a my_notes.txt that appears while the run goes on is the
    user's (the end of the run listed every entry present, and a later --overwrite deleted it)."""
    from ftopt.train import metrics

    out = tmp_path / "run"
    finish = metrics.finish

    def user_writes_notes(*a, **kw):  # while the run goes on, before it records its files
        (out / NOTES).write_text("mine\n")
        return finish(*a, **kw)

    monkeypatch.setattr(metrics, "finish", user_writes_notes)
    code, output = _cli(["--out", out, "--max-steps", "1", "--eval-max-examples", "0", "--lora-r", "4"])
    assert code == 0, output
    doc = manifest.read(out)
    assert NOTES not in doc["files"] and NOTES in doc["foreign"]
    assert set(doc["files"]) == {p.name for p in out.iterdir()} - {NOTES, manifest.MANIFEST_NAME}  # all the rest
    manifest.claim(out, resume=False, overwrite=True)  # what --overwrite does first
    assert sorted(p.name for p in out.iterdir()) == sorted([NOTES, manifest.MANIFEST_NAME])
    assert (out / NOTES).read_text() == "mine\n"
