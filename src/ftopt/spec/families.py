"""The decoder families ftopt reads from a Hugging Face `config.json`: one small reader per `model_type` that maps
its config keys, with the defaults transformers uses for that family, onto ModelSpec's generic fields
(ftopt.spec.model); spec/hf_config.py finds the config and calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftopt.spec.errors import FtoptError
from ftopt.spec.model import Branch, LayerLayout, MlpKind, NormKind, SoftmaxDtype

# ---- family readers ------------------------------------------------------------------------------------------
# Each returns the generic fields for one model_type, with transformers' defaults for keys a config may omit.
_LLAMA_NAMES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}


# Intermediate-sized tensors a plain MLP's activation keeps for backward, by transformers' activation name
# (activations.ACT2CLS): F.gelu and its tanh form save their input; gelu_new (NewGELUActivation) is written out in
# Python, 0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3))), and pow, tanh and the last product keep x, the tanh,
# 0.5 * x and 1 + tanh; relu saves its output (ReluBackward0 keeps `result`), the tensor the down projection reads.
# Names not listed are counted as F.gelu.
_ACT_SAVED = {"gelu": 1, "gelu_pytorch_tanh": 1, "gelu_new": 4, "relu": 1}
_ACT_SAVES_OUTPUT = {"relu"}


def _plain_act(name: str) -> dict:
    """The LayerLayout fields of a plain MLP's activation, by its transformers name (_ACT_SAVED)."""
    return dict(mlp_act_saved=_ACT_SAVED.get(name, 1), mlp_act_saves_output=name in _ACT_SAVES_OUTPUT)


def _branches(c: dict, key: str, default: float = 0.0) -> tuple[Branch, ...]:
    """Both branches' residual dropouts, where one probability the config gives drops each (_positive)."""
    return (Branch.ATTENTION, Branch.MLP) if _positive(c, key, default) else ()


def _positive(c: dict, key: str, default: float = 0.0) -> bool:
    """Whether a dropout probability the config gives (or transformers' default) is above 0: what it keeps in
    training does not depend on how large it is."""
    value = c.get(key) if c.get(key) is not None else default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FtoptError(f"The model config's {key} must be a number (a dropout probability).")
    return value > 0


def _common(c: dict, *, tie_default: bool) -> dict:
    h, heads = _count(c, "hidden_size"), _count(c, "num_attention_heads")
    return dict(
        vocab_size=_req(c, "vocab_size"),
        hidden_size=h,
        num_layers=_req(c, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or h // heads,
        intermediate_size=_req(c, "intermediate_size"),
        max_positions=c.get("max_position_embeddings", 2048),
        tie_embeddings=c.get("tie_word_embeddings", tie_default),
    )


def _llama_like(c: dict) -> dict:
    bias = c.get("attention_bias", False)
    return dict(
        _common(c, tie_default=False),
        mlp=MlpKind.GATED,
        norm=NormKind.RMS,
        norms_per_layer=2,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=c.get("mlp_bias", False),
        linear_names=_LLAMA_NAMES,
    )


def _qwen2(c: dict) -> dict:
    return dict(
        _common(c, tie_default=False),
        mlp=MlpKind.GATED,
        norm=NormKind.RMS,
        norms_per_layer=2,
        qkv_bias=True,
        linear_names=_LLAMA_NAMES,
    )


def _gemma(c: dict, norms: int) -> dict:
    d = _common(c, tie_default=True)
    d["head_dim"] = c.get("head_dim", 256)
    # modeling_gemma.py GemmaRMSNorm.forward: `output * (1.0 + self.weight.float())` on the fp32 normalized input,
    # then .type_as(x) (llama's multiplies the weight into the input's dtype)
    layout = LayerLayout(norm_scale_fp32=True)
    return dict(
        d, mlp=MlpKind.GATED, norm=NormKind.RMS, norms_per_layer=norms, linear_names=_LLAMA_NAMES, layout=layout
    )


def _phi3(c: dict) -> dict:
    return dict(
        _common(c, tie_default=False),
        mlp=MlpKind.GATED,
        norm=NormKind.RMS,
        norms_per_layer=2,
        linear_names={"qkv": "qkv_proj", "o": "o_proj", "gate_up": "gate_up_proj", "down": "down_proj"},
        # modeling_phi3.py: q, k, v are slices of qkv_proj's output (Phi3Attention.forward, qkv[..., :query_pos]);
        # apply_rotary_pos_emb joins the rotated and pass-through halves with torch.cat; resid_attn_dropout and
        # resid_mlp_dropout (Phi3DecoderLayer) drop each branch with resid_pdrop. gate_up_proj's output is chunked
        # into gate and up views: SiLU keeps the fused output, as a gated MLP's gate and up outputs would be.
        layout=LayerLayout(
            qkv_views=True,
            query_bhsd=True,
            residual_dropouts=_branches(c, "resid_pdrop"),
            attention_dropout=_positive(c, "attention_dropout"),
        ),
    )


def _gpt_neox(c: dict) -> dict:
    bias = c.get("attention_bias", True)
    return dict(
        _common(c, tie_default=False),
        mlp=MlpKind.PLAIN,
        norm=NormKind.LAYER,
        norms_per_layer=2,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=True,
        parallel_residual=c.get("use_parallel_residual", True),
        linear_names={"qkv": "query_key_value", "o": "dense", "fc1": "dense_h_to_4h", "fc2": "dense_4h_to_h"},
        # modeling_gpt_neox.py: GPTNeoXAttention.forward chunks q, k, v out of query_key_value's output;
        # apply_rotary_pos_emb joins the halves with torch.cat; post_attention_dropout, post_mlp_dropout and the
        # model's emb_dropout all drop with hidden_dropout.
        layout=LayerLayout(
            qkv_views=True,
            query_bhsd=True,
            **_plain_act(c.get("hidden_act", "gelu")),
            residual_dropouts=_branches(c, "hidden_dropout"),
            attention_dropout=_positive(c, "attention_dropout"),
            embedding_dropout=_positive(c, "hidden_dropout"),
        ),
    )


def _falcon(c: dict) -> dict:
    h, heads = _count(c, "hidden_size"), _count(c, "num_attention_heads")
    new_arch = c.get("new_decoder_architecture", False)
    if new_arch:
        kv = c.get("num_kv_heads") or heads
        norms = c.get("num_ln_in_parallel_attn") or 2
    else:
        kv = 1 if c.get("multi_query", True) else heads
        norms = 1 if c.get("parallel_attn", True) else 2
    if c.get("alibi", False):
        raise FtoptError("Falcon with ALiBi positions is not supported; use a rotary Falcon config (alibi: false).")
    bias = c.get("bias", False)
    return dict(
        vocab_size=_req(c, "vocab_size"),
        hidden_size=h,
        num_layers=_req(c, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=h // heads,
        intermediate_size=c.get("ffn_hidden_size") or 4 * h,
        max_positions=c.get("max_position_embeddings", 2048),
        tie_embeddings=c.get("tie_word_embeddings", True),
        mlp=MlpKind.PLAIN,
        norm=NormKind.LAYER,
        norms_per_layer=norms,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        parallel_residual=new_arch or c.get("parallel_attn", True),
        linear_names={"qkv": "query_key_value", "o": "dense", "fc1": "dense_h_to_4h", "fc2": "dense_4h_to_h"},
        layout=_falcon_layout(c, new_arch, kv, heads),
    )


def _falcon_layout(c: dict, new_arch: bool, kv: int, heads: int) -> LayerLayout:
    """modeling_falcon.py. FalconAttention._split_heads: the new decoder architecture indexes k and v out of the
    fused output and broadcasts them to every query head (flatten copies all three); the original layout views q,
    k, v out of it with multi-head attention, and with multi-query indexes out one k and v head, which it hands to
    torch's SDPA un-repeated and without enable_gqa. FalconModel.forward always materializes the mask
    (create_causal_mask(allow_is_causal_skip=False)) and FalconAttention calls SDPA with it; its eager path runs
    softmax(dtype=hidden_states.dtype) and drops no probability on the rotary path. FalconDecoderLayer's
    dropout_add drops the MLP branch (with the attention branch added in) with hidden_dropout and, in the
    sequential original layout, the attention branch with attention_dropout."""
    sequential = not new_arch and not c.get("parallel_attn", True)
    attention = (Branch.ATTENTION,) if sequential and _positive(c, "attention_dropout") else ()
    hidden = ((Branch.MLP if sequential else Branch.BOTH),) if _positive(c, "hidden_dropout") else ()
    return LayerLayout(
        qkv_views=not new_arch and kv == heads,
        kv_repeated=new_arch,
        sdpa_always_masked=True,
        sdpa_kv_broadcast=not new_arch and kv < heads,
        eager_softmax=SoftmaxDtype.NORM_OUT,
        **_plain_act(c.get("activation", "gelu")),
        residual_dropouts=attention + hidden,
    )


def _opt(c: dict) -> dict:
    h, heads = _count(c, "hidden_size"), _count(c, "num_attention_heads")
    bias = c.get("enable_bias", True)
    proj = c.get("word_embed_proj_dim") or h
    maxpos = c.get("max_position_embeddings", 2048)
    return dict(
        vocab_size=_req(c, "vocab_size"),
        hidden_size=h,
        num_layers=_req(c, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=_req(c, "ffn_dim"),
        max_positions=maxpos,
        tie_embeddings=c.get("tie_word_embeddings", True),
        mlp=MlpKind.PLAIN,
        norm=NormKind.LAYER,
        norms_per_layer=2,
        final_norm=c.get("do_layer_norm_before", True),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        learned_positions=maxpos + 2,  # OPTLearnedPositionalEmbedding keeps an offset of 2 rows
        embed_dim=proj if proj != h else None,
        linear_names={"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "fc1": "fc1", "fc2": "fc2"},
        # modeling_opt.py: OPTDecoderLayer drops the attention output and fc2's output with `dropout` (0.1 by
        # default) before each residual add, applies activation_function (relu by default) between fc1 and fc2,
        # and with do_layer_norm_before false (opt-350m) normalizes each residual sum instead of each branch's
        # input; OPTAttention hands attention_dropout to the attention function. OPTDecoder drops no embedding.
        layout=LayerLayout(
            post_norm=not c.get("do_layer_norm_before", True),
            **_plain_act(c.get("activation_function", "relu")),
            residual_dropouts=_branches(c, "dropout", 0.1),
            attention_dropout=_positive(c, "attention_dropout"),
        ),
    )


def _gpt2(c: dict) -> dict:
    h, heads = _count(c, "n_embd", 768), _count(c, "n_head", 12)
    return dict(
        vocab_size=c.get("vocab_size", 50257),
        hidden_size=h,
        num_layers=c.get("n_layer", 12),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=c.get("n_inner") or 4 * h,
        max_positions=c.get("n_positions", 1024),
        tie_embeddings=c.get("tie_word_embeddings", True),
        mlp=MlpKind.PLAIN,
        norm=NormKind.LAYER,
        norms_per_layer=2,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        learned_positions=c.get("n_positions", 1024),
        # GPT-2 names the attention output and the MLP output both "c_proj"; PEFT matches both with that name.
        linear_names={"qkv": "c_attn", "o": "attn.c_proj", "fc1": "c_fc", "fc2": "mlp.c_proj"},
        # modeling_gpt2.py: GPT2Attention.forward splits q, k, v out of c_attn's output (views; learned positions,
        # no rotary); its eager_attention_forward runs softmax in the scores' dtype; attn_dropout (attn_pdrop),
        # resid_dropout and GPT2MLP.dropout (resid_pdrop) and GPT2Model.drop (embd_pdrop) drop in training; the
        # MLP's activation is activation_function (gelu_new by default). Conv1D computes addmm(bias, x, weight):
        # it saves its input as nn.Linear does.
        layout=LayerLayout(
            qkv_views=True,
            rotary=False,
            eager_softmax=SoftmaxDtype.SCORES,
            **_plain_act(c.get("activation_function", "gelu_new")),
            residual_dropouts=_branches(c, "resid_pdrop", 0.1),
            attention_dropout=_positive(c, "attn_pdrop", 0.1),
            embedding_dropout=_positive(c, "embd_pdrop", 0.1),
        ),
    )


FAMILIES: dict[str, Callable[[dict], dict]] = {
    "llama": _llama_like,
    "mistral": _llama_like,
    "qwen2": _qwen2,
    "gemma": lambda c: _gemma(c, norms=2),
    "gemma2": lambda c: _gemma(c, norms=4),
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "opt": _opt,
    "gpt2": _gpt2,
}
# Architectures we recognise but cannot plan for: encoders and encoder-decoders.
NOT_DECODER = {
    "bert",
    "roberta",
    "distilbert",
    "deberta",
    "deberta-v2",
    "electra",
    "albert",
    "t5",
    "mt5",
    "bart",
    "mbart",
    "pegasus",
    "whisper",
    "vit",
    "clip",
    "xlm-roberta",
    "longformer",
}


def _req(c: dict, key: str) -> Any:
    if key not in c or c[key] is None:
        raise FtoptError(f"The model config has no '{key}' field; found: {', '.join(sorted(c)) or 'nothing'}.")
    return c[key]


def _count(c: dict, key: str, default: int | None = None) -> int:
    """A size or count the readers compute with (head_dim = hidden_size // num_attention_heads): a positive whole
    number, checked here so that a bad one is a sentence naming its key, not a ZeroDivisionError or TypeError."""
    value = c.get(key) if default is not None else _req(c, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FtoptError(f"The model config's {key} must be a positive whole number.")
    return value
