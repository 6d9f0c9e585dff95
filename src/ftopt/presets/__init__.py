"""Data files: model architectures (Hugging Face config.json as published) and hardware numbers."""

from pathlib import Path

BASE_MODELS_DIR = Path(__file__).parent / "base"


def base_model_dir(name: str = "tiny-base") -> Path:
    """A shipped pretrained base model folder (config, safetensors weights, tokenizer); see scripts/build_base.py."""
    return BASE_MODELS_DIR / name
