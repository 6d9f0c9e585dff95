"""Count the operators of one training step per model family and write src/ftopt/presets/kernels.json, the data
the time model's per-operator overhead term uses (see src/ftopt/estimate/kernels.py). Run after upgrading torch,
transformers or peft; tests/estimate/test_kernels.py fails when the file no longer matches the code.

    .venv/bin/python benchmarks/count_kernels.py      # ~1 min on 2 cores

Each family is counted on a shrunken config (64-wide; counts depend on structure, not size) for every variant:
full / LoRA (the family's default attention targets) x gradient checkpointing x sdpa / eager attention.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "ftopt" / "presets" / "kernels.json"

# One structural representative per family (the layout of its presets), 64 wide, 4 heads; 2 layers (count_kernels
# builds it with 1 and with 2).
CONFIGS = {
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    "mistral": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=128,
    ),
    "qwen2": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=True,
    ),
    "gemma": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=128,
    ),
    "gemma2": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=128,
    ),
    "phi3": dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
        pad_token_id=0,
    ),
    "gpt_neox": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=4, vocab_size=128),
    "falcon": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        vocab_size=128,
    ),
    "opt": dict(
        num_hidden_layers=2,
        hidden_size=64,
        ffn_dim=256,
        num_attention_heads=4,
        vocab_size=128,
        word_embed_proj_dim=64,
        max_position_embeddings=128,
    ),
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=128),
}


def family_counts(family: str, config: dict) -> dict:
    from ftopt.estimate.kernels import count_kernels, variant
    from ftopt.spec import Attention, Combination, from_hf_config
    from ftopt.spec.errors import FtoptError

    spec = from_hf_config({"model_type": family, **config}, f"{family}-counting")
    counts = {}
    for lora in (0, 8):
        for gc in (False, True):
            for attn in (Attention.SDPA, Attention.EAGER):
                combo = Combination(lora_r=lora, gc=gc, attn=attn)
                try:
                    counts[variant(combo)] = count_kernels(spec, combo).model_dump()
                except FtoptError:
                    continue  # e.g. gemma2 has no sdpa in this transformers version
    return {"config": config, "default_lora_targets": len(spec.attention_linear_names()), "counts": counts}


def main() -> None:
    warnings.filterwarnings("ignore")
    import peft
    import torch
    import transformers

    families = {}
    for family, config in CONFIGS.items():
        families[family] = family_counts(family, config)
        c = families[family]["counts"]
        print(f"{family:9s} " + "  ".join(f"{k}: {v['per_layer']}/layer" for k, v in c.items()), file=sys.stderr)
    versions = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    doc = {
        "source": (
            f"benchmarks/count_kernels.py: aten operators dispatched in one steady-state training step "
            f"(torch {versions['torch']}, transformers {versions['transformers']}, "
            f"peft {versions['peft']}, fp32, CPU)"
        ),
        "versions": versions,  # the recount test skips under other versions (tests/estimate/test_kernels.py)
        "families": families,
    }
    from ftopt.spec.io import atomic_write_text

    atomic_write_text(OUT, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
