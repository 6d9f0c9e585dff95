"""Training data: load what people have (JSONL, CSV, Parquet, a `datasets` folder) in the formats they use
(`text`; `prompt` + `completion`; chat `messages`), detect the format and hold out an evaluation split.
Tokenization, loss masks and packing follow TRL's supervised fine-tuning: see `ftopt.train.sft`.

Also the embedded default: a word-level tokenizer built locally with `tokenizers` and a generated instruction task
("shift every letter by one") that a tiny model learns measurably in about two minutes on two CPU cores.
"""

from __future__ import annotations

import csv
import io
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

from ftopt.spec.errors import FtoptError, first_line
from ftopt.spec.io import read_text

FORMATS = ("text", "prompt+completion", "messages")


# ---- loading ------------------------------------------------------------------------------------------------------
@dataclass
class Records:
    """Rows of one data file, each with where it came from ("line 7" of a JSONL/CSV file, "record 3" of a JSON
    array, Parquet file or datasets folder), so that an error names the file's own line, whatever split follows."""

    rows: list[dict]
    where: list[str]
    source: str  # the file or folder, as given

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: list[int]) -> Records:
        return Records([self.rows[i] for i in indices], [self.where[i] for i in indices], self.source)


def _read_jsonl(path: Path, text: str) -> Records:
    rows, where = [], []
    for n, line in enumerate(io.StringIO(text), 1):  # lines end at \n only, as a file's do (not at U+2028)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FtoptError(f"{path}, line {n}: not valid JSON ({e.msg}).") from None
        if not isinstance(row, dict):
            raise FtoptError(f"{path}, line {n}: each line must be a JSON object, got {type(row).__name__}.")
        rows.append(row)
        where.append(f"line {n}")
    return Records(rows, where, str(path))


def _numbered(rows: list, path: Path) -> Records:
    return Records(list(rows), [f"record {i}" for i in range(1, len(rows) + 1)], str(path))


def _read_csv(path: Path) -> Records:
    reader = csv.DictReader(io.StringIO(read_text(path, "data", newline=""), newline=""))
    rows, where = [], []
    for row in reader:
        rows.append(row)
        where.append(f"line {reader.line_num}")  # the physical line the row ended on (header is line 1)
    return Records(rows, where, str(path))


# the data files ftopt reads, by suffix; a folder must be a saved dataset (_SAVED_DATASET_FILES)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# the files `datasets.load_from_disk` looks for before it reads anything (datasets 5.2, load.py; the names are
# datasets.config's DATASET_INFO_FILENAME, DATASET_STATE_JSON_FILENAME and DATASETDICT_JSON_FILENAME): a Dataset
# folder holds the first two, a DatasetDict folder the third
_SAVED_DATASET_FILES = (("dataset_info.json", "state.json"), ("dataset_dict.json",))
_EXPECTED = "a .jsonl, .json, .csv or .parquet file, or a folder written by datasets' save_to_disk"


def check_data_path(path: str | Path, flag: str = "--data") -> None:
    """What `flag` names can be read, judged from its name and (a folder) the files that mark a saved dataset,
    without reading it: one sentence before the model is built, not the datasets library's after it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FtoptError(f"{flag} {path} does not exist.")
    if p.is_dir():
        if not any(all((p / f).is_file() for f in files) for files in _SAVED_DATASET_FILES):
            raise FtoptError(
                f"{flag} {path} is a folder but not a saved dataset (neither dataset_info.json with state.json nor "
                f"dataset_dict.json in it); give {_EXPECTED}."
            )
    elif p.suffix not in DATA_SUFFIXES:
        raise FtoptError(f"{flag} {path}: unsupported data file type '{p.suffix}'; give {_EXPECTED}.")


def _read_any(p: Path) -> Records:
    if p.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        if hasattr(ds, "keys"):  # a DatasetDict: take the train split
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        return _numbered(list(ds), p)
    if p.suffix in (".jsonl", ".json"):
        text = read_text(p, "data")  # one wording for a file that is not UTF-8, as for every other file
        if p.suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
            bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
            if bad is not None:
                raise FtoptError(f"{p}, record {bad}: each record must be a JSON object.")
            return _numbered(rows, p)
        return _read_jsonl(p, text)
    if p.suffix == ".csv":
        return _read_csv(p)
    import pyarrow.parquet as pq  # .parquet, the last of DATA_SUFFIXES (check_data_path refused any other)

    return _numbered(pq.read_table(p).to_pylist(), p)


def load_records(path: str | Path) -> Records:
    """Rows of a JSONL/JSON, CSV, Parquet file or a `datasets` folder saved with save_to_disk."""
    p = Path(path).expanduser()
    check_data_path(p, "The data")
    try:
        records = _read_any(p)
    except FtoptError:
        raise
    except (OSError, ValueError) as e:
        raise FtoptError(f"Cannot read the data {p}: {first_line(e).rstrip('.')}.") from None
    if not records.rows:
        raise FtoptError(f"The data {p} is empty.")
    return records


_NEEDS = {"messages": ("messages",), "prompt+completion": ("prompt", "completion"), "text": ("text",)}


def _format_of(keys) -> str | None:
    if "messages" in keys:
        return "messages"
    if {"prompt", "completion"} <= set(keys):
        return "prompt+completion"
    return "text" if "text" in keys else None


def detect_format(records: Records, expected: str | None = None) -> str:
    """The format of the first row; every row must carry its fields. With `expected` (the training data's format),
    evaluation data in another format is refused in one line."""
    fmt = _format_of(records.rows[0])
    if fmt is None:
        raise FtoptError(
            f"{records.source} has none of the fields ftopt reads ('text'; 'prompt' and 'completion'; "
            f"'messages'); found: {', '.join(sorted(records.rows[0]))}."
        )
    if expected is not None and fmt != expected:
        raise FtoptError(
            f"{records.source} is in the '{fmt}' format but the training data is '{expected}'; "
            "give evaluation data in the same format."
        )
    for row, where in zip(records.rows, records.where):
        missing = [k for k in _NEEDS[fmt] if row.get(k) in (None, "", [])]
        if missing:
            raise FtoptError(
                f"{records.source}, {where}: missing {', '.join(missing)} (found: {', '.join(sorted(row))})."
            )
        if fmt == "messages" and not _valid_messages(row["messages"]):
            raise FtoptError(
                f"{records.source}, {where}: 'messages' must be a list of objects with 'role' and 'content'."
            )
        wrong = _not_text(row, fmt)
        if wrong is not None:  # would otherwise train as str(value): "1", "['b']"
            name, value = wrong
            raise FtoptError(
                f"{records.source}, {where}: {name} must be text, got {type(value).__name__} {str(value)[:40]!r}."
            )
    return fmt


def _valid_messages(messages) -> bool:
    return isinstance(messages, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)


def _not_text(row: dict, fmt: str) -> tuple[str, object] | None:
    """The first field the format reads that is not a string, as (its name, its value); None when all are."""
    if fmt == "messages":
        fields = [(f"messages[{i}].{k}", m[k]) for i, m in enumerate(row["messages"]) for k in ("role", "content")]
    else:
        fields = [(f"'{k}'", row[k]) for k in _NEEDS[fmt]]
    return next(((name, v) for name, v in fields if not isinstance(v, str)), None)


def split_eval(records: Records, fraction: float, seed: int) -> tuple[Records, Records | None]:
    """Hold out `fraction` of the rows (seeded shuffle) for evaluation; 0 = train on everything, no eval split."""
    if not 0 <= fraction < 1:
        raise FtoptError(f"--eval-fraction must be at least 0 and below 1, got {fraction}.")
    if fraction == 0:
        return records, None
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(len(records) * fraction)))
    if k >= len(records):
        n = len(records)
        raise FtoptError(
            f"{records.source} has {n} record{'' if n == 1 else 's'}: too few to hold out {fraction:.0%} for "
            "evaluation (--eval-fraction)."
        )
    held = set(idx[:k])
    return (
        records.subset([i for i in range(len(records)) if i not in held]),
        records.subset([i for i in range(len(records)) if i in held]),
    )


# ---- the embedded default ---------------------------------------------------------------------------------------------
TASK_PREFIX = "shift"
LETTERS = string.ascii_lowercase
DEFAULT_TRAIN_EXAMPLES = 4000
DEFAULT_EVAL_EXAMPLES = 64
DEFAULT_EVAL_SEED_OFFSET = 10_000  # held-out words come from another seed than the training words


def default_examples(n: int, seed: int = 0, min_len: int = 3, max_len: int = 6) -> list[dict]:
    """'shift : c a t =>' -> 'd b u': every letter replaced by the next one (z wraps to a). A position-aligned rule
    a tiny transformer learns quickly; exact match on held-out words measures it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = [rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))]
        shifted = [LETTERS[(LETTERS.index(c) + 1) % 26] for c in w]
        rows.append({"prompt": f"{TASK_PREFIX} : {' '.join(w)} =>", "completion": " ".join(shifted)})
    return rows


def default_records(n: int, seed: int) -> Records:
    rows = default_examples(n, seed=seed)
    return Records(rows, [f"example {i}" for i in range(1, n + 1)], "the built-in task")


SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]  # ids 0-3 in every built-in word-level tokenizer


def word_level_tokenizer(words: list[str]):
    """A word-level tokenizer over `words` (after SPECIAL_TOKENS), built offline. Whitespace() splits runs of
    punctuation from words, so "=>a" is "=>" and "a" (TRL-style preparation tokenizes prompt + completion as one
    string); every row starts with [BOS]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )


def default_tokenizer():
    """The default task's vocabulary (plus digits and punctuation) as a word-level tokenizer."""
    return word_level_tokenizer(
        list(LETTERS)
        + list(LETTERS.upper())
        + list(string.digits)
        + list(".,:;!?'\"()-+*/=<>")
        + ["=>", TASK_PREFIX, "user", "assistant", "system"]
    )
