"""Training data: load what people have (JSONL, CSV, Parquet, a `datasets` folder) in the formats they use
(`text`; `prompt` + `completion`; chat `messages`), tokenize with truncation, optionally pack.

Also the embedded default: a word-level tokenizer built locally with `tokenizers` and a generated instruction task
("shift every letter by one") that a tiny model learns measurably in about two minutes on two CPU cores.
"""
from __future__ import annotations

import csv
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

from ftopt.errors import FtoptError

IGNORE_INDEX = -100  # label value the loss skips (prompt tokens, padding)
FORMATS = ("text", "prompt+completion", "messages")


# ---- loading ------------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FtoptError(f"{path}, line {n}: not valid JSON ({e.msg}).") from None
            if not isinstance(row, dict):
                raise FtoptError(f"{path}, line {n}: each line must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def load_records(path: str | Path) -> list[dict]:
    """Rows of a JSONL/JSON, CSV, Parquet file or a `datasets` folder saved with save_to_disk."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FtoptError(f"The data file {p} does not exist.")
    try:
        if p.is_dir():
            from datasets import load_from_disk

            ds = load_from_disk(str(p))
            if hasattr(ds, "keys"):  # a DatasetDict: take the train split
                ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
            rows = list(ds)
        elif p.suffix in (".jsonl", ".json"):
            text = p.read_text(encoding="utf-8")
            if p.suffix == ".json" and text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = _read_jsonl(p)
        elif p.suffix == ".csv":
            with p.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        elif p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            raise FtoptError(f"Unsupported data file type '{p.suffix}' for {p}; use .jsonl, .json, .csv, .parquet "
                             "or a datasets folder.")
    except FtoptError:
        raise
    except (OSError, ValueError) as e:
        raise FtoptError(f"Cannot read the data {p}: {str(e).splitlines()[0]}.") from None
    if not rows:
        raise FtoptError(f"The data {p} is empty.")
    return rows


def detect_format(rows: list[dict], source: str = "data") -> str:
    keys = set(rows[0])
    if "messages" in keys:
        fmt = "messages"
    elif {"prompt", "completion"} <= keys:
        fmt = "prompt+completion"
    elif "text" in keys:
        fmt = "text"
    else:
        raise FtoptError(f"The {source} has none of the fields ftopt reads ('text'; 'prompt' and 'completion'; "
                         f"'messages'); found: {', '.join(sorted(keys))}.")
    need = {"messages": ["messages"], "prompt+completion": ["prompt", "completion"], "text": ["text"]}[fmt]
    for i, r in enumerate(rows, 1):
        missing = [k for k in need if r.get(k) in (None, "")]
        if missing:
            raise FtoptError(f"The {source}, record {i}: missing {', '.join(missing)} (found: {', '.join(sorted(r))}).")
    return fmt


# ---- tokenization ---------------------------------------------------------------------------------------------------
@dataclass
class Tokenized:
    examples: list[dict]  # input_ids, labels, attention_mask
    truncated: int  # how many examples were cut at seq_len
    fmt: str


def _render_messages(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def tokenize(rows: list[dict], tokenizer, seq_len: int, fmt: str) -> Tokenized:
    """Token ids and labels per example; prompt tokens are masked out of the loss for prompt+completion data."""
    eos = tokenizer.eos_token_id
    out, truncated = [], 0
    for r in rows:
        if fmt == "prompt+completion":
            p = tokenizer(str(r["prompt"]), add_special_tokens=True)["input_ids"]
            c = tokenizer(str(r["completion"]), add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            ids, labels = p + c, [IGNORE_INDEX] * len(p) + c
        else:
            text = str(r["text"]) if fmt == "text" else _render_messages(tokenizer, r["messages"])
            ids = tokenizer(text, add_special_tokens=True)["input_ids"] + ([eos] if eos is not None else [])
            labels = list(ids)
        if len(ids) > seq_len:
            truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        out.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return Tokenized(out, truncated, fmt)


def pack(examples: list[dict], seq_len: int) -> list[dict]:
    """Concatenate examples and cut into full seq_len blocks (no padding; the last partial block is dropped unless
    it is the only one). Labels keep their prompt masks."""
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        ids += e["input_ids"]
        labels += e["labels"]
    n = max(1, len(ids) // seq_len)
    blocks = [(ids[i * seq_len:(i + 1) * seq_len], labels[i * seq_len:(i + 1) * seq_len]) for i in range(n)]
    return [{"input_ids": b, "labels": lab, "attention_mask": [1] * len(b)} for b, lab in blocks if b]


def split_eval(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    if not 0 < fraction < 1:
        raise FtoptError(f"--eval-fraction must be between 0 and 1, got {fraction}.")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(len(rows) * fraction)))
    if k >= len(rows):
        raise FtoptError(f"The data has {len(rows)} records: too few to hold out {fraction:.0%} for evaluation.")
    ev = set(idx[:k])
    return [r for i, r in enumerate(rows) if i not in ev], [r for i, r in enumerate(rows) if i in ev]


# ---- the embedded default ---------------------------------------------------------------------------------------------
TASK_PREFIX = "shift"
LETTERS = string.ascii_lowercase


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


def default_tokenizer():
    """A word-level tokenizer over the default task's vocabulary (plus digits and punctuation), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    words = list(LETTERS) + list(LETTERS.upper()) + list(string.digits) + list(".,:;!?'\"()-+*/=<>") + \
        ["=>", TASK_PREFIX, "user", "assistant", "system"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]")
