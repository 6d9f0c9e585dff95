"""The formulas' per-layer saved tensors against a real CPU forward: walk the autograd graph of the loss and count
each storage its nodes saved once (parameters aside), so two ops saving one tensor count it once, as the memory
does. One layer is the difference between a 3- and a 2-layer model; the first layer, and the head, are the storages
saved while only it (or no layer) ran."""

from collections import defaultdict

import pytest
import torch

from ftopt.estimate import activations, attention_saved, layer_saved
from ftopt.estimate.autocast import head_cast_bytes
from ftopt.estimate.layer_grads import first_layer_grads
from ftopt.model.build import build_model
from ftopt.spec import Combination, LinearGroup, Precision, TrainingSetup, from_hf_config
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
_OPT = {"model_type": "opt", "hidden_size": 64, "ffn_dim": 96, "num_hidden_layers": 3, "num_attention_heads": 4}
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
    "gemma": {**LLAMA, "model_type": "gemma", "head_dim": 16},  # RMSNorm scales by (1 + weight) in fp32
    "opt": _OPT,  # dropout 0.1 before both residual adds; relu saves its output, which fc2 reads
    "opt-post-ln": {**_OPT, "do_layer_norm_before": False},  # each norm reads a residual sum
    "opt-projections": {**_OPT, "word_embed_proj_dim": 32},  # project_in and project_out beside the head
}


def _spec(family: str):
    return from_hf_config({"vocab_size": 100, **FAMILIES[family]}, f"tiny-{family}")


def _saved(spec, combo, precision, layers) -> tuple[dict[int, tuple[int, set[str], set]], int]:
    """{storage pointer: (bytes, the nodes that saved it, the layers running when it was saved: an index, or
    None outside every layer)} for one forward's loss of a `layers`-layer model, and the pointer of the first
    layer's attention output projection's input."""
    torch.manual_seed(0)
    model = build_model(spec, combo, Precision(precision), num_layers=layers)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    o_name = spec.linear_names["o"]
    seen_input: list[torch.Tensor] = []  # held, so no later tensor reuses its memory
    first = next(m for n, m in model.named_modules() if ".0." in n and n.endswith(o_name))
    first.register_forward_pre_hook(lambda mod, args: seen_input.append(args[0]))
    running, savers = _track_layers(model)
    ids = torch.zeros((B, S), dtype=torch.long)

    def pack(t: torch.Tensor) -> torch.Tensor:
        savers[t.untyped_storage().data_ptr()].add(running[0])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=storage(Precision(precision), combo).autocast):
            loss = model(input_ids=ids, labels=ids).loss
    out: dict[int, tuple[int, set[str], set]] = defaultdict(lambda: (0, set(), set()))
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
                    st, ptr = t.untyped_storage(), t.untyped_storage().data_ptr()
                    out[ptr] = (st.nbytes(), out[ptr][1] | {type(fn).__name__}, savers[ptr])
        stack.extend(f for f, _ in fn.next_functions)
    return dict(out), seen_input[0].untyped_storage().data_ptr()


def _track_layers(model) -> tuple[list, dict[int, set]]:
    """([the index of the decoder layer running, None outside them], an empty {storage: layers} to fill), with
    hooks on the model's decoder layers that keep the first up to date."""
    running: list = [None]
    layers = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: running.__setitem__(0, i))
        layer.register_forward_hook(lambda mod, args, out: running.__setitem__(0, None))
    return running, defaultdict(set)


def _bytes_saved_only_in(saved, where, skip: frozenset[str] = frozenset()) -> int:
    """Bytes of the storages saved while `where` ran and at no other time (a table every layer reads, such as
    rotary's cos and sin, is no one layer's), less those only `skip`'s nodes saved."""
    return sum(b for b, nodes, layers in saved.values() if layers == {where} and not nodes <= skip)


@pytest.mark.parametrize("family", FAMILIES)
def test_o_proj_reads_the_kernels_saved_output_where_the_formulas_say(family):
    """SDPA's saved output and the output projection's saved input are one storage exactly where
    attn_out_is_kernel_output says so: the fused kernel ran and the query was ordered (b, s, heads, d). A copy
    where rotary's torch.cat made it (b, heads, s, d) (gpt_neox, phi3) or SDPA fell back to its math kernel
    (Falcon's multi-query layout; gpt2's attention dropout on a CPU)."""
    spec = _spec(family)
    combo = Combination(attn="sdpa")
    saved, o_input = _saved(spec, combo, "fp32", 2)
    sdpa_output = any("ScaledDotProduct" in n for n in saved.get(o_input, (0, set(), set()))[1])
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
    total = {n: sum(b for b, _, _ in _saved(spec, combo, precision, n)[0].values()) for n in (2, 3)}
    st = storage(Precision(precision), combo)
    per_token = layer_saved.layer_activation_bytes_per_token(spec, combo, st, S, on_gpu=False)
    formula = per_token * S * B + layer_saved.layer_weight_bytes(spec, combo, st)  # casts, gemma's norm scales
    assert total[3] - total[2] == formula


# LoRA targets by where they sit: the linears of these groups, or of these roles (a case whose roles the family
# fuses is skipped)
_TARGETS = {
    "mlp": (LinearGroup.MLP_IN, LinearGroup.MLP_OUT),
    "q,v": ("q", "v"),
    "k": ("k",),
    "up": ("up",),
}


def _targets(spec, which: str | None) -> dict:
    if which is None:
        return {}
    if which == "all-linear":
        return {"lora_targets": ("all-linear",)}
    wanted = _TARGETS[which]
    if isinstance(wanted[0], LinearGroup):
        return {"lora_targets": tuple(lin.name for lin in spec.layer_linears() if lin.group in wanted)}
    if not all(role in spec.linear_names for role in wanted):
        pytest.skip(f"{spec.name} fuses {which}")
    return {"lora_targets": tuple(spec.linear_names[role] for role in wanted)}


@pytest.mark.parametrize(
    ("precision", "fields", "targets"),
    [
        ("fp32", {}, None),  # full fine-tuning: the embeddings train, so the first layer is like any other
        ("fp32", {"lora_r": 8}, None),  # the first norm(s); a parallel layer's frozen MLP
        ("fp32", {"lora_r": 8, "lora_dropout": 0.1}, None),  # q/k/v's masks; lora_A still keeps its dropped copy
        ("fp32", {"lora_r": 8}, "mlp"),  # a sequential layer's whole attention block and second norm
        ("fp32", {"lora_r": 8, "attn": "eager"}, "q,v"),  # the QK matmul keeps no q (k needs no gradient)
        ("fp32", {"lora_r": 8, "attn": "eager"}, "k"),  # nor k; the PV matmul keeps no probabilities
        ("fp32", {"lora_r": 8}, "up"),  # the activation keeps no gate output, the product no up output
        ("bf16-mixed", {"lora_r": 8, "lora_dropout": 0.1}, "all-linear"),  # lora_A's autocast casts
        ("bf16-true", {"lora_r": 8, "attn": "eager"}, None),
        ("bf16-true", {"lora_r": 8, "lora_dropout": 0.1}, "mlp"),  # gate/up's masks (sequential), not down's
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_layers_saved_tensors_are_the_formulas(family, precision, fields, targets):
    """The first layer's storages in a real forward (those saved while it alone ran) are the formulas' first layer
    (layer_activation_bytes_per_token given first_layer_grads, and layer_weight_bytes), for every layout. In a
    LoRA run without GC it reads the frozen embeddings' output, which needs no gradient, and keeps less than the
    other layers: per token, fp32, default targets, no first norm's input and statistics (llama 260 B; GPT-NeoX's
    two norms reading one input, 272 B) and no frozen MLP of a parallel layer (the activation's input: GPT-NeoX
    384 B, Falcon 1,024 B)."""
    spec = _spec(family)
    combo = Combination(**{"attn": "sdpa", **fields, **_targets(spec, targets)})
    saved, _ = _saved(spec, combo, precision, 2)
    st = storage(Precision(precision), combo)
    grads = first_layer_grads(spec, combo)
    per_token = layer_saved.layer_activation_bytes_per_token(spec, combo, st, S, on_gpu=False, grads=grads)
    assert _bytes_saved_only_in(saved, 0) == per_token * S * B + layer_saved.layer_weight_bytes(spec, combo, st, grads)
    if combo.lora:
        assert grads != first_layer_grads(spec, combo.model_copy(update={"gc": True}))  # GC: like any other layer


# the loss's own tensors (logits_loss_bytes counts them) and the token and position ids the lookups keep (the
# batch, held anyway)
_LOSS = frozenset({"LogSoftmaxBackward0", "NllLossBackward0", "EmbeddingBackward0"})


@pytest.mark.parametrize(
    ("precision", "fields"),
    [("fp32", {}), ("fp32", {"lora_r": 8}), ("bf16-true", {}), ("bf16-mixed", {}), ("bf16-mixed", {"lora_r": 8})],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_what_is_saved_outside_the_layers_is_the_formulas(family, precision, fields):
    """The storages saved outside every layer, the loss's aside, are the formulas' head: the final norm's; the LM
    head's input where the head trains (full fine-tuning: the final norm's output, 256 B per token here, or its
    bf16 cast under autocast); the embedding dropout's noise where the embeddings' output needs a gradient (gpt2:
    256 B per token, none in a LoRA run without GC); gemma's final norm scale."""
    spec = _spec(family)
    combo = Combination(attn="sdpa", **fields)
    saved, _ = _saved(spec, combo, precision, 2)
    setup = TrainingSetup(seq_len=S, micro_batch=B, precision=precision)
    st = storage(setup.precision, combo)
    _, head = activations.checkpoints_and_head_bytes(spec, setup, combo, st, False)
    assert _bytes_saved_only_in(saved, None, _LOSS) == head + head_cast_bytes(spec, combo, st)  # the head's cast
