"""Hub ids through huggingface_hub against a stand-in Hub on 127.0.0.1 (tests/hubserver.py); no network."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.spec import load_model
from ftopt.spec.errors import FtoptError
from ftopt.spec.hub import HubRef, hub_snapshot, parse_hub_id
from tests.hubserver import FakeHub

runner = CliRunner()
TINY = dict(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def make_model(folder, **extra):
    """A tiny llama with a byte-level BPE tokenizer, saved as a Hub repo would hold it (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftopt.train.tokenizer import train_bpe

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY, **extra)).save_pretrained(str(folder))
    train_bpe(["Hello there, how are you today?"] * 10, 300).save_pretrained(str(folder))
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    fake = FakeHub()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    # huggingface_hub reads these at import: set what the environment would have set before the process started
    monkeypatch.setattr(C, "ENDPOINT", fake.url)
    monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    fake.add("org/tiny", make_model(tmp_path / "tiny"))
    yield fake
    fake.close()


def test_parse_hub_id(tmp_path):
    assert parse_hub_id("Qwen/Qwen2.5-7B") == HubRef("Qwen/Qwen2.5-7B", None)
    assert parse_hub_id("org/name@v1.0") == HubRef("org/name", "v1.0")
    assert parse_hub_id("llama-2-7b") is None and parse_hub_id(str(tmp_path)) is None


def test_estimate_and_plan_read_only_config_json(hub):
    spec = load_model("org/tiny")
    assert (spec.family, spec.num_layers, spec.vocab_size, spec.name) == ("llama", 2, 320, "org/tiny")
    for cmd in (["estimate", "--gpu", "a100-80g"], ["plan", "--gpu", "a100-80g", "--json"]):
        r = runner.invoke(app, [*cmd, "--model", "org/tiny"])
        assert r.exit_code == 0, r.output
    fetched = {q.split("/resolve/")[-1] for q in hub.requests if "/resolve/" in q}
    assert fetched == {"main/config.json"}  # never the weights


def add_bert(hub, tmp):
    (tmp / "bert").mkdir()
    (tmp / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    hub.add("org/bert", tmp / "bert")


@pytest.mark.parametrize(
    "setup,ref,fragment",
    [
        (lambda hub, tmp: None, "org/missing", "No model org/missing on the Hub"),
        (lambda hub, tmp: hub.add("org/gated", tmp / "tiny", gated=True), "org/gated", "is gated"),
        (lambda hub, tmp: hub.add("org/empty", tmp / "empty-repo"), "org/empty", "has no config.json"),
        (lambda hub, tmp: add_bert(hub, tmp), "org/bert", "not a decoder-only language model"),
    ],
)
def test_hub_errors_are_one_line_exit_2(hub, tmp_path, setup, ref, fragment):
    (tmp_path / "empty-repo").mkdir(exist_ok=True)
    (tmp_path / "empty-repo" / "README.md").write_text("no config")
    setup(hub, tmp_path)
    r = runner.invoke(app, ["estimate", "--model", ref])
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_unknown_repo_suggests_presets(hub):
    with pytest.raises(FtoptError, match="presets: .*llama-2-7b"):
        load_model("org/missing")


def test_gated_with_token(hub, tmp_path, monkeypatch):
    hub.add("org/gated", tmp_path / "tiny", gated=True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert load_model("org/gated").family == "llama"


def test_offline_uses_the_cache_and_says_when_it_cannot(hub, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    with pytest.raises(FtoptError, match="not in the Hugging Face cache"):
        load_model("org/tiny")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    load_model("org/tiny")  # cached now
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    assert load_model("org/tiny").family == "llama" and len(hub.requests) == n  # no request offline


def _no_name_service(*args, **kwargs):
    import socket

    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_where_the_hub_has_no_address_the_cache_answers_at_once(hub, monkeypatch):
    """No network (the Hub's name does not resolve), HF_HUB_OFFLINE unset: a cached model loads and an uncached
    one is refused without a request retried. Old: huggingface_hub retried, sleeping 1+2+4+8+8 = 23 s first."""
    import socket

    import huggingface_hub.utils._http as http

    from ftopt.spec.hub import hub_config

    hub_snapshot(HubRef("org/tiny"))  # in the cache now: config, weights, tokenizer
    monkeypatch.setattr(socket, "getaddrinfo", _no_name_service)
    slept = []
    monkeypatch.setattr(http.time, "sleep", slept.append)
    n = len(hub.requests)
    assert hub_config(HubRef("org/tiny"))["num_hidden_layers"] == 2
    assert (hub_snapshot(HubRef("org/tiny")) / "model.safetensors").exists()
    with pytest.raises(FtoptError, match="org/other is not in the Hugging Face cache"):
        load_model("org/other")
    assert slept == [] and len(hub.requests) == n


def test_behind_a_proxy_the_hub_is_asked_though_its_name_has_no_address_here(hub, monkeypatch):
    """The proxy looks the name up, so no address here says nothing about the network."""
    import socket

    from ftopt.spec import hub as H

    monkeypatch.setattr(socket, "getaddrinfo", _no_name_service)
    assert H._cache_only()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert not H._cache_only()


def test_a_snapshot_probes_the_hubs_address_once_for_config_and_weights(hub, monkeypatch):
    """hub_snapshot downloads config.json, then the weights: one probe's answer serves both (with no name service
    every probe can wait out the resolver's timeout)."""
    from ftopt.spec import hub as H

    answers = []

    def probe(answer):
        def once():
            answers.append(answer)
            return answer

        return once

    monkeypatch.setattr(H, "_cache_only", probe(False))
    assert (hub_snapshot(HubRef("org/tiny")) / "model.safetensors").exists()
    assert answers == [False]
    # the answer is the one both requests follow: "cache only" for a cached model asks the Hub nothing
    monkeypatch.setattr(H, "_cache_only", probe(True))
    n = len(hub.requests)
    assert (hub_snapshot(HubRef("org/tiny")) / "model.safetensors").exists()
    assert answers == [False, True] and len(hub.requests) == n


def test_snapshot_takes_safetensors_and_tokenizer_only(hub, tmp_path):
    (tmp_path / "tiny" / "pytorch_model.bin").write_bytes(b"pickle")  # never downloaded
    folder = hub_snapshot(HubRef("org/tiny"))
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names and "pytorch_model.bin" not in names


def test_remote_code_needs_the_flag(hub, tmp_path):
    make_model(tmp_path / "remote", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    hub.add("org/remote", tmp_path / "remote")
    assert load_model("org/remote").family == "llama"  # reading the config runs nothing
    with pytest.raises(FtoptError, match="--trust-remote-code"):
        hub_snapshot(HubRef("org/remote"))


@pytest.mark.slow
def test_train_from_hub_id_and_reload_adapter_offline(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as C
    import torch
    from peft import AutoPeftModelForCausalLM

    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": "Hello there,", "completion": " how are you?"}) + "\n" for _ in range(16))
    )
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--model",
            "org/tiny",
            "--data",
            str(data),
            "--lora-r",
            "4",
            "--max-steps",
            "2",
            "--out",
            str(out),
            "--seq-len",
            "32",
            "--micro-batch",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "org/tiny"
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    assert len(hub.requests) == n  # loaded from the cache alone
    assert model.peft_config["default"].base_model_name_or_path == "org/tiny"
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.shape == (1, 3, 320)


@pytest.mark.parametrize(
    "ref",
    ["./mymodel", "../models/foo", "/no/such/model", "~/no-such-ftopt-model", "org/tiny.safetensors", "./org/tiny"],
)
def test_path_like_model_that_does_not_exist_is_one_line_without_hub_lookup(hub, ref):
    assert parse_hub_id(ref) is None
    for cmd in (["estimate"], ["plan", "--gpu", "a100-80g"], ["train", "--max-steps", "1"]):
        r = runner.invoke(app, [*cmd, "--model", ref])
        assert r.exit_code == 2, r.output
        assert "No such folder" in r.output and ref in r.output and len(r.output.strip().splitlines()) == 1
    assert hub.requests == []  # never looked up on the Hub (./org/tiny exists there)


def test_org_name_is_local_when_that_folder_exists_else_hub(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "org" / "tiny"
    local.mkdir(parents=True)
    (local / "config.json").write_text(
        json.dumps({**TINY, "model_type": "llama", "num_hidden_layers": 3, "architectures": ["LlamaForCausalLM"]})
    )
    assert parse_hub_id("org/tiny") is None and load_model("org/tiny").num_layers == 3  # the local folder
    assert hub.requests == []
    local.joinpath("config.json").unlink()
    local.rmdir()
    assert load_model("org/tiny").num_layers == 2  # no such folder now: the Hub id
    r = runner.invoke(app, ["estimate", "--model", "models/foo"])  # ambiguous and in neither place
    assert r.exit_code == 2 and "No model models/foo on the Hub" in r.output and "no local folder" in r.output


def test_a_local_model_folder_without_safetensors_is_one_line_before_any_work(tmp_path, monkeypatch):
    """A folder with config.json and tokenizer but only pickled weights (or none) passed every check; transformers
    then failed on it with an OSError traceback after the data was tokenized."""
    import ftopt.train.engine

    folder = make_model(tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    monkeypatch.setattr(ftopt.train.engine, "launch", lambda *a, **k: pytest.fail("the run started"))
    r = runner.invoke(app, ["train", "--model", str(folder), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert r.exit_code == 2 and f"--model {folder} has no safetensors weights" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


REMOTE_CODE = '''import os

from transformers import LlamaForCausalLM


class XForCausalLM(LlamaForCausalLM):
    """A repo's own model class: a llama that says it ran (and leaves a mark where the test asks)."""
    ftopt_remote_code_ran = True

    def __init__(self, config):
        super().__init__(config)
        if os.environ.get("FTOPT_TEST_REMOTE_MARK"):
            with open(os.environ["FTOPT_TEST_REMOTE_MARK"], "a") as f:
                f.write("built\\n")
'''


@pytest.fixture
def remote_folder(tmp_path, monkeypatch):
    """A local model folder whose config maps AutoModelForCausalLM to its own modeling_x.py; transformers copies
    such code into HF_MODULES_CACHE, kept inside the test."""
    import sys

    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = make_model(tmp_path / "remote", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (folder / "modeling_x.py").write_text(REMOTE_CODE)
    return folder


def test_local_remote_code_is_refused_without_the_flag(remote_folder, tmp_path):
    for cmd in (
        ["train", "--model", str(remote_folder)],
        ["train", "--random-init", str(remote_folder / "config.json")],
        ["bench", "--model", str(remote_folder), "--out", str(tmp_path / "b")],
    ):
        r = runner.invoke(app, [*cmd, "--max-steps", "1"])
        assert r.exit_code == 2, r.output
        assert "--trust-remote-code" in r.output and "auto_map" in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "results.jsonl").exists()  # refused before any run


def test_trusted_remote_code_builds_the_model_weights_and_random_init(remote_folder):
    from ftopt.model.build import build_model
    from ftopt.spec import Combination, Precision

    spec, combo = load_model(str(remote_folder)), Combination(lora_r=4)
    for kw in (dict(weights_dir=str(remote_folder)), {}):
        trusted = build_model(spec, combo, Precision.FP32, code_dir=str(remote_folder), **kw)
        plain = build_model(spec, combo, Precision.FP32, **kw) if not kw else None
        assert type(trusted.get_base_model()).__name__ == "XForCausalLM"
        assert trusted.get_base_model().ftopt_remote_code_ran
        if plain is not None:  # without the flag transformers' own llama class builds it (the CLI refuses first)
            assert type(plain.get_base_model()).__name__ == "LlamaForCausalLM"


def test_hub_remote_code_folder_has_the_code_and_no_weights(hub, tmp_path):
    from ftopt.spec.hub import remote_code_folder

    make_model(tmp_path / "remote", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (tmp_path / "remote" / "modeling_x.py").write_text(REMOTE_CODE)
    hub.add("org/remote", tmp_path / "remote")
    names = {p.name for p in Path(remote_code_folder("org/remote")).iterdir()}
    assert names == {"config.json", "modeling_x.py"}
    assert "modeling_x.py" in {p.name for p in hub_snapshot(HubRef("org/remote"), trust_remote_code=True).iterdir()}


@pytest.mark.slow
def test_train_with_trust_remote_code_runs_the_repo_code(remote_folder, tmp_path, monkeypatch):
    mark = tmp_path / "built.txt"
    monkeypatch.setenv("FTOPT_TEST_REMOTE_MARK", str(mark))
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": "Hello there,", "completion": " how are you?"}) + "\n" for _ in range(16))
    )
    r = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(remote_folder),
            "--trust-remote-code",
            "--data",
            str(data),
            "--lora-r",
            "4",
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--seq-len",
            "32",
            "--micro-batch",
            "4",
            "--eval-max-examples",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert mark.read_text().startswith("built")  # the repo's own class built the trained model
