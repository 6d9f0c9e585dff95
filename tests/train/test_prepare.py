"""prepare_run: rows -> tokenizer -> datasets, as the worker and `ftopt preview` call it."""

import json

import pytest

from ftopt.spec.errors import FtoptError
from ftopt.spec.run import DataSpec, ModelRef
from ftopt.train.prepare import prepare_run

ENGLISH = (
    "Fine-tuning adapts a pretrained language model to a task with a small amount of labelled data. "
    "The tokenizer splits text into pieces the model has embeddings for; words it has never seen must "
    "still be representable, or the loss is computed on unknown tokens and means little."
)


def english_file(tmp_path, n=40):
    words = ENGLISH.split()
    p = tmp_path / "en.jsonl"
    p.write_text("".join(json.dumps({"text": " ".join(words[i % 7 : i % 7 + 20])}) + "\n" for i in range(n)))
    return p


def test_random_init_on_english_trains_a_bpe_with_few_unknowns(tmp_path):
    data = DataSpec(train=str(english_file(tmp_path)), eval_fraction=0)
    prep, tok = prepare_run(ModelRef(ref="tiny-llama"), data, vocab_size=512, seq_len=64)
    assert "byte-level BPE trained" in tok.source
    assert prep.summary.unk_fraction < 0.05 and prep.summary.eval_rows == 0 and prep.eval_dataset is None
    assert len(tok.tokenizer) <= 512
    text_bytes = sum(len(json.loads(line)["text"].encode()) for line in open(data.train))
    assert prep.summary.tokens < 0.5 * text_bytes  # merges learnt: well under one token per byte
    again, tok2 = prepare_run(ModelRef(ref="tiny-llama"), data, vocab_size=512, seq_len=64)
    assert "cached" in tok2.source and tok2.tokenizer.get_vocab() == tok.tokenizer.get_vocab()


def test_a_word_level_tokenizer_that_misses_the_data_is_refused(tmp_path):
    from ftopt.train.data import default_tokenizer

    folder = tmp_path / "wordlevel"
    default_tokenizer().save_pretrained(str(folder))
    data = DataSpec(train=str(english_file(tmp_path)))
    with pytest.raises(FtoptError, match=r"unknown to the tokenizer.*--tokenizer"):
        prepare_run(ModelRef(ref="tiny-llama", tokenizer=str(folder)), data, vocab_size=512, seq_len=64)


def test_model_vocabulary_too_small_for_bytes(tmp_path):
    with pytest.raises(FtoptError, match="smaller than a byte-level tokenizer needs"):
        prepare_run(ModelRef(ref="tiny-llama"), DataSpec(train=str(english_file(tmp_path))), vocab_size=100, seq_len=64)


def test_built_in_task_keeps_its_tokenizer_and_counts():
    prep, tok = prepare_run(ModelRef(), DataSpec(), vocab_size=512, seq_len=64)
    s = prep.summary
    assert tok.source == "built-in word-level tokenizer" and s.format == "prompt+completion"
    assert (s.rows, s.eval_rows, s.unk_fraction, s.truncated) == (4000, 64, 0.0, 0)
    assert 0 < s.trained_tokens < s.tokens and len(prep.eval_rows) == 64
