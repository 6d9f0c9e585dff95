import json

import pytest

from ftopt.errors import FtoptError
from ftopt.train import data as D


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_formats_and_loaders(tmp_path):
    j = write(tmp_path, "a.jsonl", '{"prompt": "shift : a =>", "completion": "b"}\n\n{"prompt": "x", "completion": "y"}\n')
    c = write(tmp_path, "a.csv", "text\nhello world\nsecond row\n")
    m = write(tmp_path, "m.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert D.detect_format(D.load_records(j)) == "prompt+completion"
    assert D.detect_format(D.load_records(c)) == "text"
    assert D.detect_format(D.load_records(m)) == "messages"
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a b", "c d"]}), tmp_path / "t.parquet")
    assert len(D.load_records(tmp_path / "t.parquet")) == 2


def test_prompt_tokens_are_masked_and_truncation_counted():
    tok = D.default_tokenizer()
    rows = [{"prompt": "shift : a b =>", "completion": "b c"}, {"prompt": "shift : " + "a " * 50 + "=>", "completion": "b"}]
    t = D.tokenize(rows, tok, 16, "prompt+completion")
    ex = t.examples[0]
    n_prompt = len(tok("shift : a b =>")["input_ids"])
    assert ex["labels"][:n_prompt] == [D.IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert t.truncated == 1 and len(t.examples[1]["input_ids"]) == 16


def test_packing_fills_blocks():
    ex = [{"input_ids": list(range(10)), "labels": list(range(10))} for _ in range(5)]
    packed = D.pack(ex, 16)
    assert len(packed) == 3 and all(len(p["input_ids"]) == 16 for p in packed)


@pytest.mark.parametrize("content,fragment", [
    ("", "is empty"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", broken\n', "line 2: not valid JSON"),
    ('{"question": "a", "answer": "b"}\n', "found: answer, question"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "record 2: missing completion"),
    ("[1, 2]\n", "line 1: each line must be a JSON object"),
])
def test_bad_data(tmp_path, content, fragment):
    p = write(tmp_path, "d.jsonl", content)
    with pytest.raises(FtoptError, match=fragment):
        D.detect_format(D.load_records(p))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(FtoptError, match="does not exist"):
        D.load_records(tmp_path / "nope.jsonl")
    with pytest.raises(FtoptError, match="Unsupported data file type"):
        D.load_records(write(tmp_path, "x.txt", "hi"))


def test_default_task_is_learnable_rule():
    rows = D.default_examples(5, seed=1)
    for r in rows:
        src = r["prompt"].split(":")[1].replace("=>", "").split()
        assert r["completion"].split() == [chr((ord(c) - 97 + 1) % 26 + 97) for c in src]
