"""Assistant-only loss for templates without `{% generation %}` markers: five families' real chat templates
(tests/fixtures/chat_templates, rebuilt by its build.py), multi-turn, --train-on modes, templates that are not
prefix-stable, and a marker-less template trained end to end."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftopt.spec.errors import FtoptError
from ftopt.spec.run import TrainOn
from ftopt.train import data as D
from ftopt.train.chat_spans import MAX_UNSTABLE_SHARE
from ftopt.train.sft import IGNORE_INDEX, tokenize

FIXTURES = Path(__file__).parent.parent / "fixtures" / "chat_templates"
# family -> the end-of-turn token its template writes after an assistant turn; renders BOS itself
FAMILIES = {
    "llama3": ("<|eot_id|>", True),
    "mistral": ("</s>", True),
    "gemma2": ("<end_of_turn>", True),
    "qwen2_5": ("<|im_end|>", False),
    "phi3": ("<|end|>", False),
}
TURNS = [
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]


def _tok(family):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(FIXTURES / family))


def records(*rows):
    return D.Records(list(rows), [f"line {i}" for i in range(1, len(rows) + 1)], "chat.jsonl")


def trained_runs(tok, ex) -> list[str]:
    """The trained stretches of an example, decoded, one per contiguous run of labelled tokens."""
    runs, cur = [], []
    for t, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            assert lab == t  # a label is the token itself (the model shifts)
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return [tok.decode(r).strip() for r in runs + ([cur] if cur else [])]


@pytest.mark.parametrize("family", FAMILIES)
def test_exactly_the_assistant_turns_are_trained(family):
    tok = _tok(family)
    eot, renders_bos = FAMILIES[family]
    assert "{% generation %}" not in tok.chat_template  # the real template: no markers
    ex = tokenize(records({"messages": TURNS}), tok, 512, "messages").examples[0]
    assert trained_runs(tok, ex) == [f"Four.{eot}", f"Blue.{eot}"]
    # the whole rendering, unchanged: the template's own text, BOS once where it renders one, none doubled
    full = tok.apply_chat_template(TURNS, tokenize=False)
    assert tok.decode(ex.input_ids) == tok.decode(tok(full, add_special_tokens=False)["input_ids"])
    if tok.bos_token_id is not None:
        assert ex.input_ids.count(tok.bos_token_id) == (1 if renders_bos else 0)
        assert ex.input_ids[0] == tok.bos_token_id or not renders_bos


@pytest.mark.parametrize("family", FAMILIES)
def test_train_on_last_assistant_and_all(family):
    tok = _tok(family)
    eot = FAMILIES[family][0]
    last = tokenize(records({"messages": TURNS}), tok, 512, "messages", TrainOn.LAST_ASSISTANT).examples[0]
    assert trained_runs(tok, last) == [f"Blue.{eot}"]
    every = tokenize(records({"messages": TURNS}), tok, 512, "messages", TrainOn.ALL).examples[0]
    assert every.labels == every.input_ids


@pytest.mark.parametrize("family", ["llama3", "qwen2_5", "gemma2", "phi3"])
def test_same_tokens_as_trls_marked_training_template(family):
    """Where TRL ships a {% generation %}-marked version of the template, both ways train the same tokens, except
    that TRL's versions of Qwen 2.5 and Gemma also train the newlines around a turn, and Phi-3's the EOS the
    template appends after the last turn (a conversation trailer after `<|end|>`): context here."""
    from trl.chat_template_utils import get_training_chat_template

    tok = _tok(family)
    ours = tokenize(records({"messages": TURNS}), tok, 512, "messages").examples[0]
    tok.chat_template = get_training_chat_template(tok)
    marked = tokenize(records({"messages": TURNS}), tok, 512, "messages").examples[0]
    assert ours.input_ids == marked.input_ids
    only_ours = [t for t, a, b in zip(ours.input_ids, ours.labels, marked.labels) if a != IGNORE_INDEX == b]
    only_trl = [t for t, a, b in zip(ours.input_ids, ours.labels, marked.labels) if b != IGNORE_INDEX == a]
    assert only_ours == [] and tok.decode(only_trl).replace(tok.eos_token, "").strip() == ""


def test_mistral_system_message_is_not_prefix_stable_and_is_named():
    """Mistral v0.3 renders the system message inside the *last* user turn only: with an assistant turn after it
    the rendering of the first turns is not a prefix of the whole, so that row is skipped and named."""
    tok = _tok("mistral")
    with_system = {"messages": [{"role": "system", "content": "Be brief."}, *TURNS]}
    rows = [{"messages": TURNS}] * 30 + [with_system]
    t = tokenize(records(*rows), tok, 512, "messages")
    assert len(t.examples) == 30 and len(t.unstable) == 1 and t.unstable[0].startswith("line 31: ")
    assert len(rows) * MAX_UNSTABLE_SHARE < 2  # so two such rows would refuse the file
    with pytest.raises(FtoptError, match=r"2 of 32 conversations .* e\.g\. line 31: turn 3"):
        tokenize(records(*rows, with_system), tok, 512, "messages")


ISSUE_TEMPLATE = (  # a llama repo whose template has no generation markers
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
    "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [
    {"role": "user", "content": "Hello there, how are you?"},
    {"role": "assistant", "content": "Fine, thanks."},
]


@pytest.fixture(scope="module")
def marker_less_repo(tmp_path_factory):
    from tests.spec.test_hub import make_model

    folder = make_model(tmp_path_factory.mktemp("repo") / "tiny-chat")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ISSUE_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def test_train_and_preview_a_marker_less_template(tmp_path, marker_less_repo):
    from ftopt.cli.app import app

    runner = CliRunner()
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(40)))
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", "--model", str(marker_less_repo), "--data", str(data), "--lora-r", "4", "--max-steps", "3"]
        + ["--out", str(out), "--json"],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["format"] == "messages" and m["measured"]["steps"] == 3
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"messages": CHAT}) + "\n")  # one record: nothing to hold out, as train would say
    args = ["preview", "--model", str(marker_less_repo), "--data", str(one), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "too few to hold out" in r.output
    r = runner.invoke(app, [*args, "--eval-fraction", "0"])
    assert r.exit_code == 0, r.output
    ex = json.loads(r.output)["examples"][0]
    tok = _tok_from(marker_less_repo)
    assert tok.decode([t for t, on in zip(ex["input_ids"], ex["trained"]) if on]) == "Fine, thanks.</s>"
    assert ex["input_ids"].count(tok.bos_token_id) == 1


def _tok_from(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_a_conversation_the_template_refuses_names_its_line():
    """Gemma's template raises on a system turn: one line naming the row, not a traceback."""
    tok = _tok("gemma2")
    rows = [{"messages": TURNS}, {"messages": [{"role": "system", "content": "Be brief."}, *TURNS]}]
    with pytest.raises(FtoptError, match="line 2: cannot be tokenized .*System role not supported"):
        tokenize(records(*rows), tok, 512, "messages")
