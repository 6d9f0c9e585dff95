"""The formulas' per-layer saved tensors against a real CPU forward: walk the autograd graph of the loss and count
each storage its nodes saved once (parameters aside), so two ops saving one tensor count it once, as the memory
does. One layer is the difference between a 3- and a 2-layer model."""

from collections import defaultdict

import pytest
import torch

from ftopt.estimate import attention_saved, layer_saved
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
_NEOX = {"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3}
_FALCON = {"model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 3}
_GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 64}
# Tiny configs of every layout spec/families.py tells apart (ModelSpec.layout), with transformers' defaults
# elsewhere: gpt2's dropouts are 0.1 and its activation gelu_new; Falcon's original layout is multi-query.
FAMILIES = {
    "llama": LLAMA,
    "gpt_neox": {**_NEOX, "num_attention_heads": 4},  # parallel residual: both norms read the layer input
    "gpt_neox-sequential": {**_NEOX, "num_attention_heads": 4, "use_parallel_residual": False},
    "phi3": {**LLAMA, "model_type": "phi3", "pad_token_id": 0},  # fused qkv_proj and gate_up_proj
    "falcon-multi-query": {**_FALCON, "num_attention_heads": 4},  # one norm; SDPA runs its math kernel
    "falcon-multi-head": {**_FALCON, "num_attention_heads": 4, "multi_query": False},
    "falcon-sequential": {**_FALCON, "num_attention_heads": 4, "multi_query": False, "parallel_attn": False},
    "falcon-new": {**_FALCON, "num_attention_heads": 4, "new_decoder_architecture": True, "num_kv_heads": 2},
    "gpt2": _GPT2,
    "gpt2-no-dropout": {**_GPT2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}


def _spec(family: str):
    return from_hf_config({"vocab_size": 100, **FAMILIES[family]}, f"tiny-{family}")


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


@pytest.mark.parametrize("family", FAMILIES)
def test_o_proj_reads_the_kernels_saved_output_where_the_formulas_say(family):
    """SDPA's saved output and the output projection's saved input are one storage exactly where
    attn_out_is_kernel_output says so: the fused kernel ran and the query was ordered (b, s, heads, d). A copy
    where rotary's torch.cat made it (b, heads, s, d) (gpt_neox, phi3) or SDPA fell back to its math kernel
    (Falcon's multi-query layout; gpt2's attention dropout on a CPU)."""
    spec = _spec(family)
    combo = Combination(attn="sdpa")
    saved, o_input = _saved(spec, combo, "fp32", 2)
    sdpa_output = any("ScaledDotProduct" in n for n in saved.get(o_input, (0, set()))[1])
    assert sdpa_output == attention_saved.attn_out_is_kernel_output(spec, combo, on_gpu=False)
    copied = ("gpt_neox", "gpt_neox-sequential", "phi3", "falcon-multi-query", "gpt2")
    assert attention_saved.attn_out_is_kernel_output(spec, combo, on_gpu=False) == (family not in copied)


@pytest.mark.parametrize(
    ("precision", "fields"),
    [
        ("fp32", {}),  # full: both norms' outputs (the product q/k/v and gate/up save) and o_proj sharing SDPA's
        ("fp32", {"lora_r": 8}),
        ("fp32", {"attn": "eager"}),  # eager: o_proj's input is a copy of its own
        ("bf16-true", {}),
        ("fp32", {"lora_r": 8, "lora_dropout": 0.1}),  # lora_A saves its dropped copy; SDPA keeps the input
        ("bf16-mixed", {}),
        ("bf16-mixed", {"lora_r": 8}),  # a bf16 base under autocast: LayerNorm computes in bf16 on a CPU
        ("bf16-true", {"attn": "eager"}),  # the softmax's own dtype: fp32, the scores' (gpt2), the input's (Falcon)
        ("bf16-mixed", {"attn": "eager"}),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_one_layers_saved_tensors_are_the_formulas(family, precision, fields):
    """The formulas' layer (layer_activation_bytes_per_token on a CPU, plus the casts matmuls save) against the
    storages one more layer adds in a real forward, to the byte, for every layout. What the formulas used to miss,
    per layer and token (fp32, sdpa, full fine-tuning unless said): each norm's statistics (RMSNorm's fp32 1/rms,
    4 B; LayerNorm's mean and rstd, 8 B); GPT-NeoX's fused qkv output, kept by the value's view (+512 B) while its
    two norms save the one layer input (-256 B); phi3's likewise (+384 B); Falcon's multi-query layout running
    SDPA's math kernel with fp32 probabilities (bf16-true +820 B), its always-materialized mask row, its one norm
    feeding both branches, its new architecture's k and v copied to every head; gpt2's gelu_new (three more
    intermediate-sized tensors), dropouts (masks, and the math kernel on a CPU) and o_proj reading the kernel's
    output (+4864 B in all)."""
    spec = _spec(family)
    combo = Combination(**{"attn": "sdpa", **fields})
    total = {n: sum(b for b, _ in _saved(spec, combo, precision, n)[0].values()) for n in (2, 3)}
    st = storage(Precision(precision), combo)
    per_token = layer_saved.layer_activation_bytes_per_token(spec, combo, st, S, on_gpu=False)
    formula = per_token * S * B + autocast_weight_cache_bytes(spec, combo, st)  # the casts matmuls save
    assert total[3] - total[2] == formula
