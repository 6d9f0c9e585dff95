"""`ftopt train` measures a pretrained base's weights on a CPU as a GPU would hold them."""

import torch

from ftopt.model.build import build_base
from ftopt.results.measure import track_memory
from ftopt.spec import Combination, Precision, from_hf_config
from tests.spec.test_model import TINY


def test_pretrained_bf16_base_counts_its_weights_on_cpu(tmp_path):
    """On a CPU, from_pretrained memory-maps safetensors whose dtype matches the requested one, so those weights
    never passed through the allocator and the measured peak left them out (a GPU holds them). A LoRA bf16-mixed
    run loads its base in bf16: a bf16 checkpoint is that case."""
    spec = from_hf_config({**TINY["llama"], "model_type": "llama", "tie_word_embeddings": True}, "tiny")
    combo = Combination(lora_r=8)
    saved = build_base(spec, combo, Precision.BF16_MIXED)
    assert saved.dtype == torch.bfloat16
    saved.save_pretrained(str(tmp_path), safe_serialization=True)
    weight_bytes = sum(p.numel() * p.element_size() for p in saved.parameters())
    with track_memory("cpu") as r:
        model = build_base(spec, combo, Precision.BF16_MIXED, weights_dir=str(tmp_path))
    assert r.peak_allocated_bytes >= weight_bytes
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # the tie survives
    for a, b in zip(saved.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
