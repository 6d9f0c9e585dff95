"""Reading a ModelSpec from a Hugging Face `config.json`: a preset name, a path to the file, a local model folder, or
a Hub id. Each supported family's reader (ftopt.spec.families) maps its config keys onto ModelSpec's generic fields
(ftopt.spec.model).
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from ftopt.spec.errors import FtoptError
from ftopt.spec.families import FAMILIES, NOT_DECODER
from ftopt.spec.hub import check_local_path, hub_config, parse_hub_id
from ftopt.spec.model import ModelSpec

# ModelSpec fields by the config.json key most families name them with (for messages about a config)
_CONFIG_KEYS = {
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "num_layers": "num_hidden_layers",
    "max_positions": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings",
}


def _config_message(err: ValidationError) -> str:
    """A ModelSpec made from a config that breaks its rules, as one sentence naming config keys, not values."""
    parts = []
    for e in err.errors():
        key = ".".join(_CONFIG_KEYS.get(str(x), str(x)) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(msg if not key or e["type"] == "value_error" else f"{key}: {msg}")
    return f"The model config does not describe a model ftopt can plan: {'; '.join(parts)}."


def supported_families() -> list[str]:
    return sorted(FAMILIES)


def from_hf_config(config: dict, name: str = "custom") -> ModelSpec:
    """Read a ModelSpec from a Hugging Face config dict."""
    family = config.get("model_type")
    if not family:
        raise FtoptError(f"The model config '{name}' has no 'model_type' field, so its architecture is unknown.")
    if not isinstance(family, str):
        raise FtoptError(f"The model config '{name}' has a model_type that is not text.")
    if family in NOT_DECODER:
        raise FtoptError(
            f"'{family}' is not a decoder-only language model; ftopt plans causal-LM fine-tuning "
            f"({', '.join(supported_families())})."
        )
    if family not in FAMILIES:  # the config's own text is not repeated: a file given by mistake may hold anything
        raise FtoptError(
            f"The model config '{name}' has a model_type that is not supported yet; "
            f"supported: {', '.join(supported_families())}."
        )
    fields = FAMILIES[family](config)
    try:
        return ModelSpec(name=name, family=family, hf_config=dict(config), **fields)
    except ValidationError as e:
        raise FtoptError(_config_message(e)) from None


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files("ftopt.presets.models").iterdir()
        if p.name.endswith(".json")
    )


def _read_json(path: Path) -> dict:
    from ftopt.spec.io import read_json_object

    return read_json_object(path, "model config")


def load_model(ref: str, local: bool = True) -> ModelSpec:
    """A preset name, a config.json path, a local model folder containing config.json, or a Hub id
    `org/name[@revision]` (its config.json only, through the Hugging Face cache). Without `local` (a server not on
    loopback) no path is looked at: a preset or a Hub id only."""
    if not ref.strip():  # "" is the current folder as a path
        raise FtoptError("The model is empty; give a preset, a config.json, a model folder or a Hub id.")
    if local:
        return _load_local(ref) or _load_named(ref, local)
    return _load_named(ref, local)


def _load_local(ref: str) -> ModelSpec | None:
    """The model at a local path `ref`, or None when `ref` names no path (then it is a preset or a Hub id)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise FtoptError(f"The folder {path} has no config.json, so it is not a Hugging Face model folder.")
        return from_hf_config(_read_json(cfg_path), name=path.name)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise FtoptError(f"The model config {path} does not exist.")
        return from_hf_config(_read_json(path), name=path.stem if path.name != "config.json" else path.parent.name)
    check_local_path(ref)
    return None


def _load_named(ref: str, local: bool) -> ModelSpec:
    names = preset_names()
    hub = parse_hub_id(ref, local=local) if ref not in names else None
    if hub is not None:
        return from_hf_config(hub_config(hub, not_found_hint=f"; presets: {', '.join(names)}"), name=str(hub))
    if ref not in names:
        close = difflib.get_close_matches(ref, names, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Presets: {', '.join(names)}."
        raise FtoptError(
            f"Unknown model '{ref}': not a preset, a config.json, a model folder or a Hub id (org/name).{hint}"
        )
    text = resources.files("ftopt.presets.models").joinpath(f"{ref}.json").read_text()
    return from_hf_config(json.loads(text), name=ref)
