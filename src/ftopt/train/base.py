"""What a saved adapter records as its base, so `AutoPeftModelForCausalLM.from_pretrained(run_dir)` loads it.

A Hub model: the Hub id and revision (the weights come from the Hugging Face cache, offline too). A local folder:
its path. A random-init model: the base itself (config + safetensors) in `run_dir/base`, since no one else has it.
"""
from __future__ import annotations

from pathlib import Path

from ftopt.spec.hub import parse_hub_id

BASE_FOLDER = "base"  # run_dir/base: the random-init base model of a LoRA run


def record_hub_base(model, ref: str) -> None:
    """Before saving: point the PEFT config at the Hub id (not the cache's snapshot folder it was loaded from)."""
    hub = parse_hub_id(ref)
    if hub is None or not hasattr(model, "peft_config"):
        return
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = hub.repo_id
        cfg.revision = hub.revision


def save_random_base(model, out: Path) -> Path | None:
    """After training a LoRA adapter on a random-init base: save the base (LoRA layers removed, frozen weights
    untouched by training) under out/base and point the adapter config at it. Returns the folder, or None."""
    import json

    if not hasattr(model, "peft_config"):
        return None
    folder = (out / BASE_FOLDER).resolve()
    base = model.unload()  # strips the LoRA layers without merging: the original frozen weights
    base.save_pretrained(str(folder), safe_serialization=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(folder)
    from ftopt.io import atomic_write_text

    atomic_write_text(cfg_path, json.dumps(cfg, indent=2))
    return folder
