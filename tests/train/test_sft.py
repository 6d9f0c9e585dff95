"""TRL-style data preparation with a real byte-level BPE tokenizer (trained here with `tokenizers`) and a chat
template: what is trained, special tokens, packing without cross-document attention."""

import pytest
import torch

from ftopt.spec.errors import FtoptError
from ftopt.train import data as D
from ftopt.train.sft import IGNORE_INDEX, SftCollator, to_dataset, tokenize
from ftopt.train.tokenizer import check_unknown, train_bpe

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there, how are you today?",
    "Fine-tuning a language model needs data and a tokenizer.",
    "Please answer the question briefly.",
]
# a Llama-3-like template: renders its own BOS and end-of-turn EOS; {% generation %} marks the assistant tokens
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "The quick fox."},
    ]
}


@pytest.fixture(scope="module")
def bpe():
    tok = train_bpe(ENGLISH * 20, 400)
    tok.chat_template = TEMPLATE
    return tok


def records(*rows):
    return D.Records(list(rows), [f"line {i}" for i in range(1, len(rows) + 1)], "t.jsonl")


def trained_text(tok, ex):
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])


def test_chat_trains_only_assistant_tokens(bpe):
    ex = tokenize(records(CHAT), bpe, 256, "messages").examples[0]
    assert trained_text(bpe, ex) == "The quick fox.</s>"  # the answer and its end-of-turn, nothing else
    untrained = bpe.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
    assert "Be brief." in untrained and "Hello there" in untrained
    assert ex.labels == [t if lab != IGNORE_INDEX else IGNORE_INDEX for t, lab in zip(ex.input_ids, ex.labels)]


def test_fallback_template_when_tokenizer_has_none():
    tok = train_bpe(ENGLISH * 20, 400)
    ex = tokenize(records(CHAT), tok, 256, "messages").examples[0]
    assert trained_text(tok, ex) == "The quick fox.</s>"
    assert tok.chat_template  # set on the tokenizer, so it is saved with the run


def test_prompt_completion_trains_only_the_completion(bpe):
    ex = tokenize(
        records({"prompt": "Please answer:", "completion": " Hello there"}), bpe, 256, "prompt+completion"
    ).examples[0]
    assert trained_text(bpe, ex) == " Hello there</s>"
    n_prompt = sum(lab == IGNORE_INDEX for lab in ex.labels)
    assert bpe.decode(ex.input_ids[:n_prompt], skip_special_tokens=True) == "Please answer:"


@pytest.mark.parametrize(
    "fmt,row",
    [
        ("text", {"text": "Hello there"}),
        ("prompt+completion", {"prompt": "Hello", "completion": " there"}),
        ("messages", CHAT),
    ],
)
def test_bos_exactly_once_and_one_final_eos(bpe, fmt, row):
    ids = tokenize(records(row), bpe, 256, fmt).examples[0].input_ids
    assert ids.count(bpe.bos_token_id) == 1 and ids[0] == bpe.bos_token_id
    assert ids[-1] == bpe.eos_token_id and ids[-2] != bpe.eos_token_id


def test_text_already_ending_with_eos_gets_no_second_one(bpe):
    ids = tokenize(records({"text": "Hello there</s>"}), bpe, 256, "text").examples[0].input_ids
    assert ids.count(bpe.eos_token_id) == 1


def test_truncation_and_fully_masked_rows_are_counted(bpe):
    long_prompt = {"prompt": " ".join(ENGLISH * 3), "completion": " yes"}
    t = tokenize(records({"text": " ".join(ENGLISH)}, {"text": "Hi"}), bpe, 16, "text")
    assert t.truncated == 1 and len(t.examples) == 2 and len(t.examples[0].input_ids) == 16
    t = tokenize(records(long_prompt, {"prompt": "Hi", "completion": " there"}), bpe, 16, "prompt+completion")
    assert (t.truncated, t.dropped, len(t.examples)) == (1, 1, 1)  # the prompt alone fills 16 tokens


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("flatten", [False, True])
def test_packed_documents_do_not_attend_to_each_other(bpe, flatten):
    """Each document's logits inside a packed batch equal its logits alone: no token saw another document."""
    docs = tokenize(records({"text": ENGLISH[0]}, {"text": ENGLISH[1]}, {"text": ENGLISH[2]}), bpe, 64, "text")
    ds = to_dataset(docs.examples, 64, packing=True)
    assert len(ds) == 1 and ds[0]["seq_lengths"] == sorted((len(e.input_ids) for e in docs.examples), reverse=True)
    batch = SftCollator(bpe.pad_token_id, flatten=flatten)([ds[0]])
    assert "attention_mask" not in batch
    pos = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0]
    assert starts == [0, ds[0]["seq_lengths"][0], sum(ds[0]["seq_lengths"][:2])]  # reset at each document
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)  # no target across a boundary
    model = _tiny_llama()
    with torch.no_grad():
        # use_cache=False as HF Trainer sets it (TrainingArguments.use_cache): with a cache, transformers would not
        # read document boundaries from the position ids
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for s, n in zip(starts, ds[0]["seq_lengths"]):
            alone = model(input_ids=batch["input_ids"][:, s : s + n]).logits[0]
            torch.testing.assert_close(packed[s : s + n], alone, atol=1e-5, rtol=1e-4)


def test_unpacked_batch_pads_with_a_mask(bpe):
    docs = tokenize(records({"text": ENGLISH[0]}, {"text": "Hi"}), bpe, 64, "text")
    ds = to_dataset(docs.examples, 64, packing=False)
    batch = SftCollator(bpe.pad_token_id)([ds[0], ds[1]])
    n = len(ds[1]["input_ids"])
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all()


def test_unknown_fraction(bpe):
    english = records(*({"text": s} for s in ENGLISH))
    assert tokenize(english, bpe, 256, "text").unk_fraction == 0  # byte-level: nothing is unknown
    word_level = tokenize(english, D.default_tokenizer(), 256, "text")
    assert word_level.unk_fraction > 0.5
    with pytest.raises(FtoptError, match="--tokenizer"):
        check_unknown(word_level.unk_fraction, "built-in word-level tokenizer")


def test_the_run_pads_as_its_batching_says(bpe):
    """`prepare` (what every training worker calls) picks the collator from TrainingSetup.batching: padded-max pads
    a micro-batch of short rows to --seq-len, padded to its longest row."""
    from ftopt.spec import Batching, DataSpec
    from ftopt.train.prepare import prepare

    recs = (records({"text": ENGLISH[0]}, {"text": "Hi"}), None, "text")
    widths = {}
    for batching in (Batching.PADDED_MAX, Batching.PADDED):
        prep = prepare(DataSpec(eval_fraction=0), bpe, 64, batching=batching, records=recs)
        rows = [prep.train_dataset[i] for i in range(2)]
        batch = prep.collator(rows)
        assert not batch["attention_mask"].all()  # the short row is padded either way
        widths[batching] = (batch["input_ids"].shape[1], max(len(r["input_ids"]) for r in rows))
    assert widths[Batching.PADDED_MAX][0] == 64 > widths[Batching.PADDED][1] == widths[Batching.PADDED][0]
