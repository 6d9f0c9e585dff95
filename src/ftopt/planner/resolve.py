"""From what the user gave to the typed specs: a `TrainingSetup`, a `Combination` and a `RunSpec`.

The CLI passes only the values a user actually gave (None = not given); defaults come from the spec classes, or
from the hardware where a CPU and a GPU need different ones (`TrainingSetup.for_hardware`). A run can also start
from a file: a plan written by `ftopt plan --out` (its `run`) or a run specification (`ftopt bench` writes one per
run). Then only the model may be overridden, with a line naming what was overridden; the plan's setup and
combination are what it predicted, so a flag that would change them is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from ftopt.spec import (
    AdapterDtype,
    Attention,
    Batching,
    Combination,
    DataSpec,
    Engine,
    Fsdp,
    HardwareSpec,
    LrSchedule,
    ModelRef,
    ModelSpec,
    Offload,
    Optim,
    OutputSpec,
    Precision,
    QloraRecipe,
    Quant,
    ReportTo,
    RunSpec,
    Schedule,
    TrainingSetup,
)
from ftopt.spec.errors import FtoptError, flag_of, validation_message
from ftopt.spec.run import TrainOn

# Enum-valued fields and the flag a user types for each (for one-line messages that name the flag).
_ENUM_FLAGS: dict[str, tuple[type[Enum], str]] = {
    "precision": (Precision, "--precision"),
    "batching": (Batching, "--batching"),
    "offload": (Offload, "--offload"),
    "attn": (Attention, "--attn"),
    "lr_schedule": (LrSchedule, "--lr-schedule"),
    "report_to": (ReportTo, "--report-to"),
    "quant": (Quant, "--quant"),
    "qlora_recipe": (QloraRecipe, "--qlora-recipe"),
    "optim": (Optim, "--optim"),
    "fsdp": (Fsdp, "--fsdp"),
    "adapter_dtype": (AdapterDtype, "--adapter-dtype"),
    "engine": (Engine, "--engine"),
    "train_on": (TrainOn, "--train-on"),
}


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """Drop what was not given; turn enum strings into enums with a message that names the flag."""
    out = {}
    for k, v in values.items():
        if v is None:
            continue
        if k in _ENUM_FLAGS and isinstance(v, str):
            enum_cls, flag = _ENUM_FLAGS[k]
            try:
                v = enum_cls(v)
            except ValueError:
                raise FtoptError(f"{flag} must be one of {', '.join(m.value for m in enum_cls)}, got '{v}'.") from None
        out[k] = v
    return out


def lora_target_list(s: str | None) -> tuple[str, ...] | None:
    if s is None:
        return None
    t = tuple(x.strip() for x in s.split(",") if x.strip())
    if not t:
        raise FtoptError("--lora-targets is empty; give a comma list of module names.")
    return t


def enum_value(field: str, value: str | None):
    """One enum field's value from its flag's string (None = not given), with a message that names the flag."""
    return _given({field: value}).get(field)


def enum_list(field: str, value: str | None) -> tuple | None:
    """A comma list of one enum field's values (`plan --quant nf4,int8`), each once, in the given order; None = not
    given."""
    if value is None:
        return None
    if not value.replace(",", "").strip():  # "" would silently mean "all"
        raise FtoptError(f"--{field} is empty; give a comma list of values, or leave it out to try them all.")
    return tuple(dict.fromkeys(_given({field: v.strip()})[field] for v in value.split(",") if v.strip()))


def setup(hw: HardwareSpec, **given) -> TrainingSetup:
    return TrainingSetup.for_hardware(hw.is_cpu, hw.peak_flops, **_given(given))


def plan_setup(model: ModelSpec, hw: HardwareSpec, **given) -> TrainingSetup:
    """The setup `plan` uses for `model` on `hw`: the hardware's defaults and what the user gave (`setup`), with a
    default sequence length no longer than the model's position limit (beyond it the model meets positions it
    never learned: estimate.check_setup's note). A length the user gives is kept, with that note."""
    s = setup(hw, **given)
    if given.get("seq_len") is None and s.seq_len > model.max_positions:
        return s.model_copy(update={"seq_len": model.max_positions})
    return s


def combination(**given) -> Combination:
    if isinstance(given.get("lora_targets"), str):
        given["lora_targets"] = lora_target_list(given["lora_targets"])
    return Combination(**_given(given))


def data_spec(**given) -> DataSpec:
    """A DataSpec from what the user gave (None = not given); an enum value names its flag when wrong."""
    return DataSpec.model_validate(_given(given))


def model_ref(ref: str, *, weights: bool, tokenizer: str | None = None, trust_remote_code: bool = False) -> ModelRef:
    return ModelRef(ref=ref, weights=weights, tokenizer=tokenizer, trust_remote_code=trust_remote_code)


def has_weights(ref: str, local: bool = True) -> bool:
    """A local folder with safetensors weights, or a Hub id: a planned model that `train` loads with its weights
    (a preset or a config.json has none: random init). Without `local` no path is looked at: Hub ids only."""
    from ftopt.spec.hub import parse_hub_id

    if not local:
        return parse_hub_id(ref, local=False) is not None
    p = Path(ref).expanduser()
    return (p.is_dir() and any(p.glob("*.safetensors"))) or (not p.exists() and parse_hub_id(ref) is not None)


def read_run_file(path: Path) -> RunSpec:
    """The run of a plan (`ftopt plan --out`) or a run specification file (`ftopt bench`, resolved_config.json)."""
    from ftopt.spec.io import read_json_object

    doc = read_json_object(path, "plan")
    if "candidates" in doc:
        if doc.get("run") is None:
            raise FtoptError(
                f"The plan {path} has no recommended run (nothing fit, or it was written by an older "
                "ftopt); run 'ftopt plan --out' again."
            )
        doc = doc["run"]
    if doc.get("schema") != "ftopt.run/1":
        raise FtoptError(f"{path} is neither a plan written by 'ftopt plan --out' nor a run specification.")
    from pydantic import ValidationError

    try:
        return RunSpec.model_validate(doc)
    except ValidationError as e:  # the file's own field names (setup.seq_len), not flags
        raise FtoptError(f"{path}: {validation_message(e)}.") from None


def run_from_file(
    path: Path, *, model: ModelRef | None, given_setup: dict, given_combination: dict, note: Callable[[str], None]
) -> RunSpec:
    """The file's run; `model` replaces its model (one line says so); setup/combination flags are refused."""
    spec = read_run_file(path)
    clash = [k for k, v in {**given_setup, **given_combination}.items() if v is not None]
    if clash:
        flags = ", ".join(flag_of(k) for k in clash)
        raise FtoptError(
            f"{flags} would change what the plan {path} predicted; edit the plan (or plan again) "
            "instead of overriding it."
        )
    if model is not None and model != spec.model:
        note(
            f"note: the plan's model {spec.model.ref} is overridden by {model.ref} "
            f"({'weights' if model.weights else 'random init'}); its predictions were made for {spec.model.ref}."
        )
        spec = spec.model_copy(update={"model": model})
    return spec


def finish_run(spec: RunSpec, *, data: dict, schedule: dict, output: dict, hostfile: str | None = None) -> RunSpec:
    """Apply the data/schedule/output values a user gave on top of `spec`, validated as a whole."""

    def merged(obj, given: dict):
        return type(obj).model_validate({**obj.model_dump(), **_given(given)})

    # resume/overwrite say what to do with the folder *now*: a run file's values (bench writes overwrite=True) never
    # carry over to another invocation
    output = {"resume": False, "overwrite": False, **{k: v for k, v in output.items() if v is not None}}
    doc = {
        "data": merged(spec.data, data),
        "schedule": merged(spec.schedule, schedule),
        "output": merged(spec.output, output),
    }
    if hostfile is not None:
        doc["hostfile"] = hostfile
    return RunSpec.model_validate({**spec.model_dump(by_alias=True), **doc})


def with_headroom(spec: RunSpec, headroom: float | None) -> RunSpec:
    """`spec` with the --headroom a user gave (None = keep its own); validated, so a bad value names the flag."""
    if headroom is None:
        return spec
    return spec.model_copy(
        update={"setup": TrainingSetup.model_validate({**spec.setup.model_dump(), "headroom": headroom})}
    )


def new_run(hw: HardwareSpec, model: ModelRef, setup_: TrainingSetup, combo: Combination) -> RunSpec:
    return RunSpec(
        model=model,
        hardware=hw,
        setup=setup_,
        combination=combo,
        data=DataSpec(),
        schedule=Schedule(),
        output=OutputSpec(),
    )


def check(spec: RunSpec):
    """Cross-object checks that need the model's architecture, before anything expensive: the model exists, its own
    code (auto_map) runs only with --trust-remote-code, the LoRA targets are its linears, and the hardware the
    predictions assume can run the setup (the prediction is made after training; it must not fail then). Returns
    the ModelSpec."""
    from ftopt.estimate import check_setup
    from ftopt.spec import load_model
    from ftopt.spec.hub import check_remote_code
    from ftopt.spec.policy import lora_targets, storage

    storage(spec.setup.precision, spec.combination)  # precision x combination rules (QLoRA recipe, fp16 adapters)
    m = load_model(spec.model.ref)
    check_remote_code(m.hf_config, spec.model.ref, spec.model.trust_remote_code)
    lora_targets(m, spec.combination)
    check_setup(m, spec.setup, spec.combination, spec.hardware)
    return m
