"""Which tokenizer a run uses, and the byte-level BPE ftopt trains when a random-init model meets user data.

Order: `--tokenizer` (folder or Hub id); the model's own (pretrained weights, or a local model folder that holds
tokenizer files); the built-in word-level tokenizer for the built-in task; otherwise a byte-level BPE trained on
the training rows with the `tokenizers` library, its vocabulary capped by the model's, cached under
$FTOPT_CACHE/tokenizers/<hash of the rows and the cap> and saved with the run like any tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ftopt.spec.errors import FtoptError, first_line
from ftopt.spec.hub import check_local_path, parse_hub_id
from ftopt.spec.run import ModelRef
from ftopt.train.data import Records, default_tokenizer

MAX_UNK_FRACTION = 0.05  # above this the tokenizer does not fit the data and the loss means little
BPE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3, as the built-in tokenizer and tiny-llama's config
BPE_CACHE_VERSION = "bpe/1"  # part of the cache key: bump when the trained tokenizer's recipe changes
BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte value


@dataclass
class TokenizerChoice:
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    source: str  # where it came from, for metrics.json and the log


def _cache_dir() -> Path:
    return Path(os.environ.get("FTOPT_CACHE", Path.home() / ".cache" / "ftopt")) / "tokenizers"


def _from_pretrained(src: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    check_local_path(src)
    hub = parse_hub_id(src)  # org/name@revision: the Hub's revision argument, through its cache
    try:
        if hub is not None:
            return AutoTokenizer.from_pretrained(
                hub.repo_id, revision=hub.revision, trust_remote_code=trust_remote_code
            )
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FtoptError(
            f"No tokenizer could be loaded from {src} ({first_line(e, 120)}); "
            "give --tokenizer with a tokenizer folder or Hub id."
        ) from None


def _has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any(
        (folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    )


def row_texts(records: Records) -> list[str]:
    """The text a tokenizer is trained on: every string field a format reads (roles included for chats)."""
    out = []
    for r in records.rows:
        if "messages" in r and isinstance(r["messages"], list):
            out += [f"{m.get('role', '')}: {m.get('content', '')}" for m in r["messages"] if isinstance(m, dict)]
        else:
            out += [str(r[k]) for k in ("text", "prompt", "completion") if r.get(k) not in (None, "")]
    return out


def train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2's pre-tokenization, no unknown tokens) trained on `texts`, at most vocab_size ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < BYTE_ALPHABET + len(BPE_SPECIALS):
        raise FtoptError(
            f"The model's vocabulary ({vocab_size}) is smaller than a byte-level tokenizer needs "
            f"({BYTE_ALPHABET + len(BPE_SPECIALS)}); give --tokenizer with one that fits."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIALS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    pad, bos, eos, unk = BPE_SPECIALS
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)


def cached_bpe(records: Records, vocab_size: int) -> TokenizerChoice:
    """train_bpe on the rows, reused from the cache when the same rows and cap were seen before."""
    from transformers import AutoTokenizer

    texts = row_texts(records)
    key = hashlib.sha256(json.dumps([BPE_CACHE_VERSION, vocab_size, texts]).encode()).hexdigest()[:16]
    folder = _cache_dir() / key
    if (folder / "tokenizer.json").exists():
        return TokenizerChoice(AutoTokenizer.from_pretrained(str(folder)), f"byte-level BPE (cached, {folder})")
    tok = train_bpe(texts, vocab_size)
    tmp = folder.with_name(f".{key}.{os.getpid()}.tmp")
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, folder)  # atomic: a concurrent run that got there first keeps its identical copy
    except OSError:
        pass
    return TokenizerChoice(tok, f"byte-level BPE trained on {records.source} (vocabulary {len(tok)}, {folder})")


def load_tokenizer(model: ModelRef, train: Records | None, vocab_size: int) -> TokenizerChoice:
    """The run's tokenizer (see the module docstring for the order); a pad token is always set."""
    local = Path(model.ref).expanduser()
    if model.tokenizer:
        choice = TokenizerChoice(_from_pretrained(model.tokenizer, model.trust_remote_code), model.tokenizer)
    elif model.weights or _has_tokenizer_files(local):
        choice = TokenizerChoice(_from_pretrained(model.ref, model.trust_remote_code), model.ref)
    elif train is None:
        choice = TokenizerChoice(default_tokenizer(), "built-in word-level tokenizer")
    else:
        choice = cached_bpe(train, vocab_size)
    tok = choice.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return choice


def check_unknown(unk_fraction: float, source: str) -> None:
    if unk_fraction > MAX_UNK_FRACTION:
        raise FtoptError(
            f"{unk_fraction:.1%} of the training tokens are unknown to the tokenizer ({source}); "
            "give a tokenizer that covers the data with --tokenizer."
        )
