import json

import pytest

from ftopt.spec.errors import FtoptError
from ftopt.train import data as D


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_formats_and_loaders(tmp_path):
    j = write(
        tmp_path, "a.jsonl", '{"prompt": "shift : a =>", "completion": "b"}\n\n{"prompt": "x", "completion": "y"}\n'
    )
    c = write(tmp_path, "a.csv", "text\nhello world\nsecond row\n")
    m = write(tmp_path, "m.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert D.detect_format(D.load_records(j)) == "prompt+completion"
    assert D.detect_format(D.load_records(c)) == "text"
    assert D.detect_format(D.load_records(m)) == "messages"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", "c d"]}), tmp_path / "t.parquet")
    assert len(D.load_records(tmp_path / "t.parquet")) == 2


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("", "is empty"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", broken\n', "line 2: not valid JSON"),
        ('{"question": "a", "answer": "b"}\n', "found: answer, question"),
        ('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n', "line 3: missing completion"),
        ("[1, 2]\n", "line 1: each line must be a JSON object"),
    ],
)
def test_bad_data(tmp_path, content, fragment):
    p = write(tmp_path, "d.jsonl", content)
    with pytest.raises(FtoptError, match=fragment):
        D.detect_format(D.load_records(p))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(FtoptError, match="does not exist"):
        D.load_records(tmp_path / "nope.jsonl")
    with pytest.raises(FtoptError, match="unsupported data file type '.txt'"):
        D.load_records(write(tmp_path, "x.txt", "hi"))


def test_a_saved_dataset_folder_passes_the_check_and_loads_any_other_folder_is_one_sentence(tmp_path):
    """The check mirrors the files datasets.load_from_disk looks for: what save_to_disk writes passes it and loads;
    a folder without them is refused naming the folder, where load_from_disk's own message came after the model."""
    from datasets import Dataset, DatasetDict

    rows = {"prompt": ["a", "b"], "completion": ["c", "d"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    for saved in ("ds", "dd"):
        D.check_data_path(tmp_path / saved)
        assert D.detect_format(D.load_records(tmp_path / saved)) == "prompt+completion"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(FtoptError) as e:
        D.check_data_path(tmp_path / "notes", "--eval-data")
    said = str(e.value)
    assert said.startswith(f"--eval-data {tmp_path / 'notes'} is a folder but not a saved dataset")
    assert "save_to_disk" in said and ".jsonl" in said and "\n" not in said


def test_default_task_is_learnable_rule():
    rows = D.default_examples(5, seed=1)
    for r in rows:
        src = r["prompt"].split(":")[1].replace("=>", "").split()
        assert r["completion"].split() == [chr((ord(c) - 97 + 1) % 26 + 97) for c in src]


def test_errors_name_the_file_line_whatever_the_eval_split(tmp_path):
    """The bad row is line 15 of the file, wherever the split puts it."""
    rows = [json.dumps({"prompt": f"p{i}", "completion": "c"}) for i in range(20)]
    rows[14] = json.dumps({"prompt": "p14"})
    p = write(tmp_path, "d.jsonl", "\n".join(rows) + "\n")
    for fraction in (0.0, 0.1, 0.3):
        train, held = D.split_eval(D.load_records(p), fraction, seed=0)
        with pytest.raises(FtoptError, match=r"d.jsonl, line 15: missing completion"):
            for part in (train, held):
                if part is not None:
                    D.detect_format(part)


def test_csv_rows_report_their_line(tmp_path):
    p = write(tmp_path, "d.csv", 'text\n"two\nlines"\n\nok\n')
    r = D.load_records(p)
    assert r.where == ["line 3", "line 5"] and r.rows[0]["text"] == "two\nlines"


def test_eval_fraction_zero_keeps_every_row(tmp_path):
    p = write(tmp_path, "d.jsonl", "".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(5)))
    train, held = D.split_eval(D.load_records(p), 0.0, seed=0)
    assert len(train) == 5 and held is None


def test_mismatched_eval_format_is_one_line(tmp_path):
    train = D.load_records(write(tmp_path, "t.jsonl", '{"text": "a"}\n'))
    ev = D.load_records(write(tmp_path, "e.jsonl", '{"prompt": "a", "completion": "b"}\n'))
    with pytest.raises(
        FtoptError, match="e.jsonl is in the 'prompt\\+completion' format but the training data is 'text'"
    ) as e:
        D.detect_format(ev, expected=D.detect_format(train))
    assert "\n" not in str(e.value)


def test_max_steps_zero_is_refused():
    from pydantic import ValidationError

    from ftopt.spec.run import Schedule

    with pytest.raises(ValidationError, match="max_steps must be positive"):
        Schedule(max_steps=0)
    assert Schedule(max_steps=1).max_steps == 1


def test_a_file_of_the_wrong_shape_is_named_as_such_even_when_too_short_to_split(tmp_path):
    """A one-row CSV without the fields ftopt reads is refused for its fields, not as too short to hold rows out:
    the fields are checked before the split, so the user meets the real problem first."""
    from ftopt.spec.run import DataSpec
    from ftopt.train.prepare import read_data

    p = write(tmp_path, "x.csv", "a,b\n1,2\n")
    with pytest.raises(FtoptError, match=r"x.csv has none of the fields ftopt reads .*found: a, b\.$"):
        read_data(DataSpec(train=str(p)), seed=0)
    one = write(tmp_path, "one.jsonl", '{"text": "a"}\n')
    with pytest.raises(FtoptError, match=r"one.jsonl has 1 record: too few to hold out 10% for evaluation"):
        read_data(DataSpec(train=str(one)), seed=0)


def test_a_reader_error_ending_in_a_period_gets_one_period(tmp_path):
    p = write(tmp_path, "x.parquet", "PAR1garbage")  # pyarrow: "... this is not a parquet file."
    with pytest.raises(FtoptError) as e:
        D.load_records(p)
    assert str(e.value).startswith("Cannot read the data") and not str(e.value).endswith("..")


@pytest.mark.parametrize("name", ["bin.json", "bin.jsonl", "bin.csv"])
def test_a_data_file_that_is_not_utf8_is_worded_as_every_other_file(tmp_path, name):
    """The data said "'utf-8' codec can't decode byte 0xff in position 0: ...", where every other file ftopt
    reads says it is not a UTF-8 text file and which byte (ftopt.spec.io.read_text)."""
    p = tmp_path / name
    p.write_bytes(b'{"text": "a"}\n\xff\n')
    with pytest.raises(FtoptError) as e:
        D.load_records(p)
    assert str(e.value) == f"The data {p} is not a UTF-8 text file (byte 14 cannot be decoded)."


def test_line_endings_and_line_numbers_are_kept(tmp_path):
    """A CRLF file's quoted line break stays in its cell; JSONL lines are numbered as the file's."""
    p = tmp_path / "d.csv"
    p.write_bytes(b'text\r\n"two\r\nlines"\r\nok\r\n')
    r = D.load_records(p)
    assert r.rows[0]["text"] == "two\r\nlines" and r.where == ["line 3", "line 4"]
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "a\\u2028b"}\r\n\r\n{"text": "c\xe2\x80\xa8d"}\n')  # U+2028 raw inside a string
    r = D.load_records(p)
    assert r.where == ["line 1", "line 3"] and r.rows[1]["text"] == "c\u2028d"


def test_a_reader_error_with_no_message_is_still_one_sentence(tmp_path, monkeypatch):
    """A reader that raises a bare ValueError() (no first line to quote) is named by its type, not an IndexError."""
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n')

    def bare(path):
        raise ValueError()

    monkeypatch.setattr(D, "_read_any", bare)
    with pytest.raises(FtoptError, match=r"^Cannot read the data .*rows\.jsonl: ValueError\.$"):
        D.load_records(f)
