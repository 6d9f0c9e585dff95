"""Parameter counts must equal sum(p.numel()) of the real transformers model, for every family and preset."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ftopt.spec import from_hf_config, load_model, preset_names
from ftopt.spec.errors import FtoptError

TINY = {
    "llama": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    ),
    "llama-bias": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        attention_bias=True,
        mlp_bias=True,
    ),
    "mistral": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=100,
    ),
    "qwen2": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        tie_word_embeddings=True,
    ),
    "gemma": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=100,
    ),
    "gemma2": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=100,
    ),
    "phi3": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=100,
        pad_token_id=0,
    ),
    "gpt_neox": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=100),
    "falcon": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        vocab_size=100,
    ),
    "falcon-7b-style": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        parallel_attn=True,
        new_decoder_architecture=False,
        vocab_size=100,
    ),
    "opt": dict(
        hidden_size=64,
        ffn_dim=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        word_embed_proj_dim=64,
        max_position_embeddings=128,
    ),
    "opt-proj": dict(
        hidden_size=64,
        ffn_dim=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        do_layer_norm_before=False,
    ),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=128),
}


def meta_model(config: dict):
    kw = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    cfg = AutoConfig.for_model(config["model_type"], **kw)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("name", sorted(TINY))
def test_param_count_matches_transformers_tiny(name):
    family = name.split("-")[0] if name.split("-")[0] in ("llama", "falcon", "opt") else name
    cfg = {"model_type": family, **TINY[name]}
    spec = from_hf_config(cfg, name)
    model = meta_model(cfg)
    assert spec.param_count() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", [p for p in preset_names()])
def test_param_count_matches_transformers_presets(preset):
    spec = load_model(preset)
    model = meta_model(spec.hf_config)
    assert spec.param_count() == sum(p.numel() for p in model.parameters())


# Published parameter counts (model cards / safetensors index totals).
@pytest.mark.parametrize(
    "preset,count",
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-2-13b", 13_015_864_320),
        ("llama-2-70b", 68_976_648_192),
        ("llama-3.1-8b", 8_030_261_248),
        ("llama-3.1-70b", 70_553_706_496),
        ("mistral-7b", 7_241_732_096),
        ("qwen2.5-0.5b", 494_032_768),
        ("qwen2.5-7b", 7_615_616_512),
        ("gemma-2-9b", 9_241_705_984),
        ("phi-3-mini", 3_821_079_552),
    ],
)
def test_published_counts(preset, count):
    assert load_model(preset).param_count() == count


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gpt_neox", "opt", "gpt2", "falcon"])
def test_lora_params_match_peft(family):
    from peft import LoraConfig, get_peft_model

    cfg = {"model_type": family, **TINY[family]}
    spec = from_hf_config(cfg)
    targets = spec.attention_linear_names()
    model = get_peft_model(meta_model(cfg), LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert spec.lora_params(8, targets) == trainable


def test_model_folder_and_config_path(tmp_path):
    cfg = {"model_type": "llama", **TINY["llama"]}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert (
        load_model(str(tmp_path / "m")).param_count() == load_model(str(tmp_path / "m" / "config.json")).param_count()
    )


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"model_type": "bert", "hidden_size": 8}', "not a decoder-only"),
        ('{"model_type": "mamba"}', "not supported"),
        ('{"hidden_size": 8}', "no 'model_type'"),
        (
            '{"model_type": "llama", "hidden_size": 8}',
            "has no 'num_attention_heads' field; found: hidden_size, model_type",
        ),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_configs(tmp_path, content, fragment):
    p = tmp_path / "config.json"
    p.write_text(content)
    with pytest.raises(FtoptError, match=fragment):
        load_model(str(p))


def test_unknown_preset_suggests_names():
    with pytest.raises(FtoptError, match="Did you mean: llama-2-7b"):
        load_model("llama2-7b")


def test_missing_folder_config(tmp_path):
    with pytest.raises(FtoptError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_attention_heads", 0), ("num_attention_heads", -2), ("hidden_size", "AKIA-SECRET"), ("hidden_size", True)],
)
def test_a_config_size_the_readers_divide_by_is_one_sentence_naming_its_key(tmp_path, key, value):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", **TINY["llama"], key: value}))
    with pytest.raises(FtoptError, match=f"The model config's {key} must be a positive whole number") as e:
        load_model(str(p))
    assert "AKIA" not in str(e.value)


def test_a_config_breaking_the_spec_names_config_keys_not_values(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", **TINY["llama"], "num_hidden_layers": "AKIA-SECRET"}))
    with pytest.raises(FtoptError, match="num_hidden_layers: Input should be a valid integer") as e:
        load_model(str(p))
    assert "AKIA" not in str(e.value) and "--" not in str(e.value)
    p.write_text(json.dumps({"model_type": "AKIA-SECRET", **TINY["llama"]}))
    with pytest.raises(FtoptError, match="not supported") as e:
        load_model(str(p))
    assert "AKIA" not in str(e.value)


@pytest.mark.parametrize(
    ("family", "key"),
    [
        ("gpt2", "resid_pdrop"),
        ("gpt2", "attn_pdrop"),
        ("gpt_neox", "hidden_dropout"),
        ("phi3", "resid_pdrop"),
        ("opt", "dropout"),
        ("opt", "attention_dropout"),
    ],
)
def test_a_dropout_that_is_not_a_number_is_one_sentence_naming_its_key(tmp_path, family, key):
    """The readers decide from a dropout probability whether training keeps its masks (ModelSpec.layout)."""
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": family, **TINY[family], key: "AKIA-SECRET"}))
    with pytest.raises(FtoptError, match=f"The model config's {key} must be a number") as e:
        load_model(str(p))
    assert "AKIA" not in str(e.value)


def test_opt_reads_its_dropouts_and_activation():
    """OPT's `dropout` (0.1 when the config omits it) drops both branches before their residual adds; relu, its
    default activation, saves its output; do_layer_norm_before false normalizes each residual sum
    (modeling_opt.py). The saved bytes they imply: tests/estimate/test_saved_tensors.py."""
    from ftopt.spec import Branch

    default = from_hf_config({"model_type": "opt", **TINY["opt"]}, "opt").layout
    assert default.residual_dropouts == (Branch.ATTENTION, Branch.MLP) and default.mlp_act_saves_output
    assert not default.post_norm and not default.attention_dropout
    off = {
        "model_type": "opt",
        **TINY["opt-proj"],
        "dropout": 0.0,
        "attention_dropout": 0.1,
        "activation_function": "gelu",
    }
    layout = from_hf_config(off, "opt-off").layout
    assert layout.residual_dropouts == () and not layout.mlp_act_saves_output
    assert layout.post_norm and layout.attention_dropout
