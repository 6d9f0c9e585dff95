"""`ftopt train` from what the user gave to a run ready to launch: the run specification (from a plan file or from
the flags), then every check that can fail before a process starts. The CLI declares the flags, calls `prepare`,
then `engine.launch`; tests call them without the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from ftopt.planner import resolve
from ftopt.spec import RunSpec
from ftopt.spec.errors import FtoptError
from ftopt.spec.io import check_out_folder
from ftopt.spec.run import DEFAULT_MODEL
from ftopt.spec.trust import CommandLineTrust, admit

# the request's fields that name a model, a file, a folder or a host, and the flag each came from
_NAMED_FLAGS = {
    "model": "--model",
    "random_init": "--random-init",
    "tokenizer": "--tokenizer",
    "plan_file": "--plan",
    "gpu": "--gpu",
    "data": "--data",
    "eval_data": "--eval-data",
    "out": "--out",
    "hostfile": "--hostfile",
    "master_addr": "--master-addr",
}


class TrainRequest(BaseModel):
    """What `ftopt train` was given, flag by flag (None: not given; the spec classes hold the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None
    random_init: str | None
    tokenizer: str | None
    plan_file: Path | None
    gpu: str | None
    # the training setup and the combination: None = the spec's (or the plan's) value
    setup: dict
    combination: dict
    # data, schedule, output
    data: str | None
    eval_data: str | None
    eval_fraction: float | None
    eval_max_examples: int | None
    train_on: str | None
    metric: tuple[str, ...] | None
    headroom: float | None
    max_steps: int | None
    lr: float | None
    lr_schedule: str | None
    seed: int | None
    save_steps: int | None
    max_hours: float | None
    out: str | None
    resume: bool
    overwrite: bool
    report_to: str | None
    # several nodes
    hostfile: str | None
    node_rank: int | None
    master_addr: str | None
    master_port: int | None
    # trust: only ever from the command line
    trust_remote_code: bool
    allow_metric_module: bool

    @model_validator(mode="before")
    @classmethod
    def _no_empty_names(cls, given: dict) -> dict:
        """'' is falsy (read as not given: the default model) and as a path it is the current folder: refused."""
        for field, flag in _NAMED_FLAGS.items():
            value = given.get(field)
            if value is not None and not str(value).strip():
                raise FtoptError(f"{flag} is empty; give a value, or leave the flag out for its default.")
        return given

    def trust(self) -> CommandLineTrust:
        """What this command line allows (--metric names its own module); a --plan file adds nothing to it."""
        return CommandLineTrust(
            trust_remote_code=self.trust_remote_code, allow_metric_module=self.allow_metric_module or bool(self.metric)
        )


def _model_ref(r: TrainRequest):
    if r.model is not None and r.random_init is not None:
        raise FtoptError("give either --model (weights) or --random-init (a config), not both.")
    name = r.model if r.model is not None else r.random_init
    if name is None:
        return None
    return resolve.model_ref(
        name, weights=r.model is not None, tokenizer=r.tokenizer, trust_remote_code=r.trust_remote_code
    )


def _from_plan(r: TrainRequest, ref, note: Callable[[str], None]) -> RunSpec:
    if r.gpu is not None:
        raise FtoptError("--gpu would change the hardware the plan predicted for; plan again instead.")
    spec = resolve.run_from_file(
        r.plan_file, model=ref, given_setup=r.setup, given_combination=r.combination, note=note
    )
    return resolve.with_headroom(spec, r.headroom)  # the margin changes no prediction, only the verdict


def _from_flags(r: TrainRequest, ref) -> RunSpec:
    from ftopt.planner.calibration_store import calibrated_hardware
    from ftopt.planner.hardware import hardware

    hw = calibrated_hardware(hardware(r.gpu))  # the stored calibration for this hardware, if it matches
    return resolve.new_run(
        hw,
        ref or resolve.model_ref(DEFAULT_MODEL, weights=False, tokenizer=r.tokenizer),
        resolve.setup(hw, **r.setup, headroom=r.headroom),
        resolve.combination(**r.combination),
    )


def run_spec(r: TrainRequest, note: Callable[[str], None]) -> RunSpec:
    """The one run specification: a plan file's run (only the model may be replaced) or the flags'."""
    ref = _model_ref(r)
    spec = _from_plan(r, ref, note) if r.plan_file is not None else _from_flags(r, ref)
    return resolve.finish_run(
        spec,
        data=dict(
            train=r.data,
            eval=r.eval_data,
            eval_fraction=r.eval_fraction,
            eval_max_examples=r.eval_max_examples,
            metrics=r.metric,
            train_on=r.train_on,
        ),
        schedule=dict(
            max_steps=r.max_steps,
            learning_rate=r.lr,
            lr_schedule=r.lr_schedule,
            seed=r.seed,
            save_steps=r.save_steps,
            max_hours=r.max_hours,
        ),
        output=dict(dir=r.out, resume=r.resume or None, overwrite=r.overwrite or None, report_to=r.report_to),
        hostfile=r.hostfile,
    )


def prepare(r: TrainRequest, note: Callable[[str], None]):
    """(run specification, per-node rendezvous or None), after every check that needs no training process: the
    data paths, the model and LoRA targets, the rendezvous, user metrics, the output folder, and the weights (a folder, or the Hub
    download). The trust gate (ftopt.spec.trust.admit) comes first: the checks judge the model's own code by the
    flag it leaves, and import the metric modules."""
    spec = admit(run_spec(r, note), r.trust(), r.plan_file)
    _check_resume(spec, r.node_rank, note)
    from ftopt.train.data import check_data_path

    for flag, path in (("--data", spec.data.train), ("--eval-data", spec.data.eval)):
        if path is not None:
            check_data_path(path, flag)  # a missing file or a folder that is no saved dataset: before the model
    resolve.check(spec)  # an unknown model or LoRA target is one line now, not after the data is tokenized
    rdzv = rendezvous(spec, r.node_rank, r.master_addr, r.master_port)
    from ftopt.results.quality import load_user_metric

    for ref in spec.data.metrics:
        load_user_metric(ref)  # a typo or a missing module fails now, not after training and saving
    check_out_folder(spec.output_dir)
    if spec.model.weights:
        from ftopt.spec.hub import resolve_weights

        # a folder, or the Hub download (after the cheap checks), before any training process starts
        resolve_weights(spec.model.ref, spec.model.trust_remote_code)
    return spec, rdzv


def _check_resume(spec: RunSpec, node_rank: int | None, note: Callable[[str], None]) -> None:
    """--resume with an --out that holds no run (a mistyped folder) is refused first, before any download; another
    node's folder may be its own, so node 0 decides there, as its folder claim does (ftopt.train.engine.launch)."""
    from ftopt.train.outputs import check_resumable, resume_note

    if node_rank not in (None, 0):
        return
    check_resumable(spec)
    said = resume_note(spec)
    if said:
        note(said)


def rendezvous(spec: RunSpec, node_rank: int | None, master_addr: str | None, master_port: int | None):
    """Per-node mode (`--node-rank K --master-addr HOST`): how this node's ranks meet the others; None otherwise."""
    from ftopt.train.ranks import Rendezvous

    if node_rank is None:
        if master_addr is not None or master_port is not None:
            raise FtoptError("--master-addr and --master-port go with --node-rank (run once on each node).")
        return None
    if master_addr is None:
        raise FtoptError(f"--node-rank {node_rank} needs --master-addr, the address of the node with --node-rank 0.")
    given = {"master_port": master_port} if master_port is not None else {}
    rdzv = Rendezvous(
        nodes=spec.setup.nodes,
        node_rank=node_rank,
        procs_per_node=spec.setup.gpus_per_node,
        master_addr=master_addr,
        **given,
    )
    import socket

    try:  # a typo would otherwise wait for a master that cannot exist until the 30-minute collective timeout
        socket.getaddrinfo(master_addr, None)
    except (socket.gaierror, UnicodeError) as e:
        raise FtoptError(f"--master-addr {master_addr} cannot be resolved: {e}.") from None
    return rdzv
