"""The formulas' per-layer saved tensors against a real CPU forward: walk the autograd graph of the loss and count
each storage its nodes saved once (parameters aside), so two ops saving one tensor count it once, as the memory
does. One layer is the difference between a 3- and a 2-layer model."""

from collections import defaultdict

import pytest
import torch

from ftopt.estimate import layer_saved
from ftopt.estimate.autocast import autocast_weight_cache_bytes
from ftopt.model.build import build_model
from ftopt.spec import Combination, Precision, from_hf_config
from ftopt.spec.policy import storage

S, B = 32, 2
LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}
# the families whose query reaches the kernel otherwise (layer_saved.attn_out_is_kernel_output)
OTHERS = {
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4},
    "gpt2": {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 64},
    "falcon": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "new_decoder_architecture": True},
}


def _saved(spec, combo, precision, layers) -> tuple[dict[int, tuple[int, set[str]]], int]:
    """{storage pointer: (bytes, the nodes that saved it)} for one forward's loss of a `layers`-layer model, and
    the pointer of the first layer's attention output projection's input."""
    torch.manual_seed(0)
    model = build_model(spec, combo, Precision(precision), num_layers=layers)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    o_name = spec.linear_names["o"]
    seen_input: list[torch.Tensor] = []  # held, so no later tensor reuses its memory
    first = next(m for n, m in model.named_modules() if ".0." in n and n.endswith(o_name))
    first.register_forward_pre_hook(lambda mod, args: seen_input.append(args[0]))
    ids = torch.zeros((B, S), dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=storage(Precision(precision), combo).autocast):
        loss = model(input_ids=ids, labels=ids).loss
    out: dict[int, tuple[int, set[str]]] = defaultdict(lambda: (0, set()))
    stack, seen = [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for attr in (a for a in dir(fn) if a.startswith("_saved_")):
            value = getattr(fn, attr)
            for t in value if isinstance(value, tuple) else (value,):
                if isinstance(t, torch.Tensor) and t.numel() > 1 and t.untyped_storage().data_ptr() not in params:
                    st = t.untyped_storage()
                    out[st.data_ptr()] = (st.nbytes(), out[st.data_ptr()][1] | {type(fn).__name__})
        stack.extend(f for f, _ in fn.next_functions)
    return dict(out), seen_input[0].untyped_storage().data_ptr()


@pytest.mark.parametrize("family", ["llama", *OTHERS])
def test_o_proj_reads_the_kernels_saved_output_where_the_formulas_say(family):
    """SDPA's saved output and the output projection's saved input are one storage exactly where
    attn_out_is_kernel_output says so (llama, Falcon's new decoder architecture), a copy elsewhere."""
    cfg = LLAMA if family == "llama" else {"model_type": family, "vocab_size": 100, **OTHERS[family]}
    spec = from_hf_config(cfg, f"tiny-{family}")
    saved, o_input = _saved(spec, Combination(attn="sdpa"), "fp32", 2)
    sdpa_output = any("ScaledDotProduct" in n for n in saved.get(o_input, (0, set()))[1])
    assert sdpa_output == layer_saved.attn_out_is_kernel_output(spec)
    assert layer_saved.attn_out_is_kernel_output(spec) == (family in ("llama", "falcon"))


@pytest.mark.parametrize(
    ("precision", "fields"),
    [
        ("fp32", {}),  # full: both norms' outputs (the product q/k/v and gate/up save) and o_proj sharing SDPA's
        ("fp32", {"lora_r": 8}),
        ("fp32", {"attn": "eager"}),  # eager: o_proj's input is a copy of its own
        ("bf16-true", {}),
        ("fp32", {"lora_r": 8, "lora_dropout": 0.1}),  # lora_A saves its dropped copy; SDPA keeps the input
        ("bf16-mixed", {}),
    ],
)
def test_one_layers_saved_tensors_are_the_formulas(precision, fields):
    """llama, h 64: the formulas' layer (activations._per_layer_bytes, on a CPU) against the storages one more
    layer adds in a real forward. What the formulas leave out: each RMSNorm's fp32 1/rms per token (rsqrt's
    output, saved by it and the multiply), 4 B x 2 norms = 8 B per token. Before the formulas counted the trained
    norms' outputs and o_proj's input once, full fine-tuning in fp32 was 2 x 4 x 64 - 4 x 64 = 256 B per token
    short and LoRA 4 x 64 = 256 B per token over."""
    spec = from_hf_config(LLAMA, "tiny-llama-3")
    combo = Combination(**{"attn": "sdpa", **fields})
    total = {n: sum(b for b, _ in _saved(spec, combo, precision, n)[0].values()) for n in (2, 3)}
    st = storage(Precision(precision), combo)
    per_token = layer_saved.layer_activation_bytes_per_token(spec, combo, st, S, on_gpu=False)
    formula = per_token * S * B + autocast_weight_cache_bytes(spec, combo, st)  # the casts matmuls save
    assert total[3] - total[2] == formula + 8 * S * B
