"""`ftopt plan --export DIR`, the cluster files: what starts the planned run on several nodes with ftopt itself.

- `run.json`: the run specification (`ftopt train --plan run.json` runs exactly the plan).
- `hostfile`: a DeepSpeed host file template (`host slots=GPUs` per node) for hostfile mode: `ftopt train
  --plan run.json --hostfile hostfile` from one host, over ssh (pdsh).
- `slurm.sbatch`: a Slurm batch script for per-node mode: one `srun` task per node, each running
  `ftopt train --plan run.json --node-rank $SLURM_NODEID --master-addr <first host of the job>`, which starts
  that node's ranks (ftopt.train.ranks), as torchrun and `deepspeed --no_ssh` do. The script's own arguments
  (`sbatch slurm.sbatch --trust-remote-code`) reach every node's `ftopt train`: trust comes from that command line,
  never from run.json (ftopt.spec.trust).

Every exported launcher (slurm.sbatch, launch.sh, torchrun.sh) exports PYTORCH_CUDA_ALLOC_CONF as `ftopt train`
sets it (allocator_lines): the plan's reserved memory assumes expandable segments.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from ftopt.spec import RunSpec
from ftopt.spec.io import atomic_write_text
from ftopt.train.allocator import ALLOC_ENV, EXPANDABLE
from ftopt.train.ranks import Rendezvous

RUN_FILE = "run.json"
MASTER_PORT = Rendezvous.model_fields["master_port"].default  # torchrun's default, overridable in the job's env


def hostfile_text(run: RunSpec) -> str:
    s = run.setup
    hosts = "".join(f"node-{k} slots={s.gpus_per_node}\n" for k in range(s.nodes))
    return f"# DeepSpeed host file: replace node-K with your {s.nodes} host name(s), reachable by ssh from this one\n{hosts}"


def allocator_lines(run: RunSpec) -> str:
    """A launcher's own start of a run gets the CUDA allocator setting `ftopt train` gives its runs
    (ftopt.train.allocator): a value already in the user's environment is kept, as there, even an empty one
    (`${VAR-default}`, not `:-`: allocator_env keeps any value that is set). Nothing for a CPU run, which has no
    CUDA allocator (ftopt train sets nothing there either)."""
    if run.hardware.is_cpu:
        return ""
    return (
        f"# the plan's reserved memory per GPU assumes {EXPANDABLE}, as ftopt train sets it: the default allocator\n"
        "# can reserve up to 1 GiB more, several GiB at a full fine-tune's first optimizer step (ftopt's\n"
        "# docs/accuracy.md). A value you exported yourself is kept.\n"
        f'export {ALLOC_ENV}="${{{ALLOC_ENV}-{EXPANDABLE}}}"\n'
    )


def node_command(run: RunSpec, spec_file: str) -> str:
    """What each Slurm task runs on its node; the variables are expanded there, per task."""
    train = shlex.join(["ftopt", "train", "--plan", spec_file])
    given = ' --model "$FTOPT_MODEL"' if not run.model.weights else ""
    given += ' --data "$FTOPT_DATA"' if run.data.train is None else ""
    rdzv = '--node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"'
    return f'exec {train}{given} {rdzv} "$@"'  # "$@": the batch script's own arguments (slurm_text)


def slurm_text(run: RunSpec, spec_file: str) -> str:
    s = run.setup
    gpus = "" if run.hardware.is_cpu else f"#SBATCH --gpus-per-node={s.gpus_per_node}\n"
    return (
        "#!/bin/bash\n"
        f"# the planned run ({run.combination.label()}) on {s.nodes} node(s) x {s.gpus_per_node} GPU(s)\n"
        "#SBATCH --job-name=ftopt\n"
        f"#SBATCH --nodes={s.nodes}\n"
        "#SBATCH --ntasks-per-node=1\n"
        f"{gpus}"
        "#SBATCH --exclusive\n"
        "set -eu\n"
        "# submit from this folder (sbatch slurm.sbatch): run.json is read from the submit directory\n"
        'cd "$SLURM_SUBMIT_DIR"\n'
        f"{_needs(run)}"
        f"{allocator_lines(run)}"
        "# node rank 0 is the job's first host; every task reaches it there\n"
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        f"MASTER_PORT=${{MASTER_PORT:-{MASTER_PORT}}}\n"
        "export MASTER_ADDR MASTER_PORT\n"
        "# one task per node; ftopt starts the node's ranks; one failing node ends the job\n"
        "# trust comes from this command line, never from run.json: sbatch slurm.sbatch --trust-remote-code\n"
        "# (also --allow-metric-module, --resume, --overwrite); each task's ftopt train gets these arguments\n"
        f"srun --nodes={s.nodes} --ntasks={s.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
        f'bash -c {shlex.quote(node_command(run, spec_file))} ftopt-node "$@"\n'
    )


def _needs(run: RunSpec) -> str:
    """What the plan cannot know: a planned preset has no weights (train would initialise it at random), and a plan
    names no data (train would use the built-in toy task). The job stops at once without them."""
    out = ""
    if not run.model.weights:
        out += ': "${FTOPT_MODEL:?set FTOPT_MODEL to the model folder or Hub id to fine-tune}"\n'
    if run.data.train is None:
        out += ': "${FTOPT_DATA:?set FTOPT_DATA to the training data (JSONL, CSV, Parquet or a datasets folder)}"\n'
    return (
        out
        + ("export FTOPT_MODEL\n" if not run.model.weights else "")
        + ("export FTOPT_DATA\n" if run.data.train is None else "")
    )


RECORD = ".ftopt-export.json"  # what this folder's templates held when ftopt last wrote them (sha256 per name)


def write_template(folder: Path, name: str, text: str) -> Path:
    """A file a user edits (host names, #SBATCH lines for their partition and account, the dataset and model of
    sft_config.yaml, DeepSpeed or accelerate settings, launch scripts): a rerun replaces it
    only when it is still what ftopt wrote; an edited one is kept and the new text goes to NAME.new."""
    path, record_path = folder / name, folder / RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    if path.exists():
        current = path.read_text()
        if current != text and hashlib.sha256(current.encode()).hexdigest() != record.get(name):
            path = folder / f"{name}.new"
    atomic_write_text(path, text)
    if path.name == name:
        record[name] = hashlib.sha256(text.encode()).hexdigest()
        atomic_write_text(record_path, json.dumps(record, indent=2))
    return path


def export_cluster(run: RunSpec, folder: Path) -> list[Path]:
    spec = folder / RUN_FILE
    atomic_write_text(spec, json.dumps(run.to_json(), indent=2))
    hostfile = write_template(folder, "hostfile", hostfile_text(run))
    slurm = write_template(folder, "slurm.sbatch", slurm_text(run, spec.name))
    slurm.chmod(0o755)
    return [spec, hostfile, slurm]
