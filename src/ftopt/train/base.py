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


def save_random_base(trainer, out: Path, rank: int, zero3: bool) -> Path | None:
    """After training a LoRA adapter on a random-init base: save the base (LoRA layers removed, frozen weights
    untouched by training) under out/base and point the adapter config at it. Returns the folder, or None.

    Under ZeRO-3 each rank holds a partition only: every rank joins DeepSpeed's gather
    (`_zero3_consolidated_16bit_state_dict`, through accelerate), then rank 0 writes the config and the gathered
    weights itself. It must not call into the partitioned model there: PEFT's unload and transformers'
    save_pretrained start their own gathers under ZeRO-3, which the other rank would never join (a hang)."""
    model = trainer.model
    if not hasattr(model, "peft_config"):
        return None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if zero3 else None  # collective
    if rank != 0:
        return None
    folder = (out / BASE_FOLDER).resolve()
    if state is None:
        base = model.unload()  # strips the LoRA layers without merging: the original frozen weights
        base.save_pretrained(str(folder), safe_serialization=True)
    else:
        _save_gathered(model.get_base_model().config, state, folder)
    _point_adapter_at(out, folder)
    return folder


def _save_gathered(config, state: dict, folder: Path) -> None:
    """The base's config and weights from a gathered PEFT state dict (adapters dropped, names the base's own)."""
    from safetensors.torch import save_file

    weights = {_base_name(k): v.contiguous() for k, v in state.items() if ".lora_" not in k}
    if getattr(config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)  # tied: stored once, as transformers saves it
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _point_adapter_at(out: Path, folder: Path) -> None:
    import json

    from ftopt.spec.io import atomic_write_text

    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(folder)
    atomic_write_text(cfg_path, json.dumps(cfg, indent=2))


PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the transformers model


def _base_name(key: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight` -> `model.layers.0.self_attn.q_proj.weight`."""
    key = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
    return key.replace(".base_layer.", ".")
