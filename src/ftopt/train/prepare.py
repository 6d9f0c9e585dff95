"""One call from a `DataSpec` to what the Trainer takes: datasets, collator, held-out rows and a data summary."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from ftopt.spec.combination import Attention
from ftopt.spec.errors import FtoptError
from ftopt.spec.run import DataSpec, ModelRef, RunSpec
from ftopt.spec.training import Batching
from ftopt.train import data as D
from ftopt.train.sft import SftCollator, Tokenized, to_dataset, tokenize
from ftopt.train.tokenizer import TokenizerChoice, check_unknown, load_tokenizer


class DataSummary(BaseModel):
    """What the trainer will see; printed by `ftopt preview` and stored in metrics.json as `data`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str
    format: str
    rows: int  # training rows read (after the eval split)
    eval_rows: int
    truncated: int  # training rows cut at seq_len
    dropped: int  # training rows with no trained token left after truncation
    tokens: int  # training tokens kept
    trained_tokens: int  # tokens with a loss label
    unk_fraction: float
    packed_rows: int | None  # training rows after packing; None = not packed
    seq_len: int
    skipped: list[str] = []  # chat rows without verifiable assistant spans ("line 7: why"), not trained


@dataclass
class Prepared:
    train_dataset: object  # datasets.Dataset: input_ids, labels (and seq_lengths when packed)
    eval_dataset: object | None
    collator: SftCollator
    eval_rows: list[dict]  # raw held-out rows (exact match generates from their prompts)
    format: str
    summary: DataSummary

    def steps_per_epoch(self, spec: RunSpec, world: int) -> int:
        """Optimizer steps in one pass over the training rows by `world` ranks."""
        s = spec.setup
        return max(1, -(-len(self.train_dataset) // (s.micro_batch * s.grad_accum * world)))


def read_data(data: DataSpec, seed: int) -> tuple[D.Records, D.Records | None, str]:
    """Training and evaluation rows and their format: the built-in task, --eval-data, or a held-out split."""
    if data.train is None:
        train = D.default_records(D.DEFAULT_TRAIN_EXAMPLES, seed)
        held = D.default_records(D.DEFAULT_EVAL_EXAMPLES, seed + D.DEFAULT_EVAL_SEED_OFFSET)
        return train, held, D.detect_format(train)
    # every row is checked before any split: a file of the wrong shape is named as such even when it is also too
    # short to hold rows out
    records = D.load_records(data.train)
    fmt = D.detect_format(records)
    if data.eval:
        held = D.load_records(data.eval)
        D.detect_format(held, expected=fmt)
        return records, held, fmt
    train, held = D.split_eval(records, data.eval_fraction, seed)
    return train, held, fmt


def summarize(
    train: D.Records, held: D.Records | None, fmt: str, tok: Tokenized, seq_len: int, packed_rows: int | None
) -> DataSummary:
    return DataSummary(
        source=train.source,
        format=fmt,
        rows=len(train),
        eval_rows=len(held) if held else 0,
        truncated=tok.truncated,
        dropped=tok.dropped,
        tokens=tok.tokens,
        trained_tokens=tok.trained_tokens,
        unk_fraction=round(tok.unk_fraction, 6),
        packed_rows=packed_rows,
        seq_len=seq_len,
        skipped=tok.unstable,
    )


def prepare(
    data: DataSpec,
    tokenizer,
    seq_len: int,
    *,
    batching: Batching = Batching.PADDED,
    seed: int = 0,
    attn: Attention = Attention.SDPA,
    records: tuple[D.Records, D.Records | None, str] | None = None,
) -> Prepared:
    """Tokenize (TRL's conventions, see ftopt.train.sft), pack if asked, and pick the collator for `attn` and the
    batching (padded-max pads every row to seq_len). `records` = read_data's result when the caller already read
    it (to train a tokenizer on the same rows)."""
    packing = batching is Batching.PACKED
    train, held, fmt = records or read_data(data, seed)
    tok = tokenize(train, tokenizer, seq_len, fmt, data.train_on)
    train_ds = to_dataset(tok.examples, seq_len, packing)
    eval_ds = None
    if held is not None:
        eval_ds = to_dataset(tokenize(held, tokenizer, seq_len, fmt, data.train_on).examples, seq_len, packing)
    pad_to = seq_len if batching is Batching.PADDED_MAX else None
    collator = SftCollator(pad_token_id=tokenizer.pad_token_id, flatten=attn is Attention.FLASH, pad_to=pad_to)
    summary = summarize(train, held, fmt, tok, seq_len, len(train_ds) if packing else None)
    return Prepared(train_ds, eval_ds, collator, held.rows if held else [], fmt, summary)


def prepare_run(
    model: ModelRef,
    data: DataSpec,
    vocab_size: int,
    seq_len: int,
    *,
    batching: Batching = Batching.PADDED,
    seed: int = 0,
    attn: Attention = Attention.SDPA,
    log=lambda m: None,
) -> tuple[Prepared, TokenizerChoice]:
    """What a run needs before the model is built: rows, the tokenizer (trained on the training rows when none
    fits a random-init model), tokenized datasets and the collator. Refuses a tokenizer that does not cover the
    data (unknown tokens above MAX_UNK_FRACTION)."""
    records = read_data(data, seed)
    choice = load_tokenizer(model, records[0] if data.train is not None else None, vocab_size)
    if len(choice.tokenizer) > vocab_size:
        raise FtoptError(
            f"The tokenizer ({choice.source}) has {len(choice.tokenizer)} tokens but the model's "
            f"vocabulary has {vocab_size}; give a matching --tokenizer."
        )
    prep = prepare(data, choice.tokenizer, seq_len, batching=batching, seed=seed, attn=attn, records=records)
    s = prep.summary
    check_unknown(s.unk_fraction, choice.source)
    log(
        f"data: {s.source} ({s.format}), {s.rows} training and {s.eval_rows} held-out rows, {s.tokens} tokens "
        f"({s.trained_tokens} trained); tokenizer: {choice.source}"
    )
    if s.skipped:
        log(
            f"note: {len(s.skipped)} conversations skipped, their assistant spans could not be verified with the "
            f"chat template: {'; '.join(s.skipped[:5])}{' and more' if len(s.skipped) > 5 else ''}"
        )
    if s.truncated or s.dropped:
        log(
            f"note: {s.truncated} of {s.rows} training rows were longer than --seq-len {seq_len} and were "
            f"truncated; {s.dropped} had no trained token left and were dropped"
        )
    _note_short_rows(prep, batching, seq_len, log)
    return prep, choice


def _note_short_rows(prep: Prepared, batching: Batching, seq_len: int, log) -> None:
    """--batching full states that no row is padded; say so when the data has rows the collator must pad."""
    if batching is not Batching.FULL:
        return
    short = sum(len(ids) < seq_len for ids in prep.train_dataset["input_ids"])
    if short:
        log(
            f"note: --batching full assumes every row is --seq-len {seq_len} tokens, but {short} training rows are "
            "shorter and are padded; SDPA then gets an attention mask the estimate left out (--batching padded "
            "counts it)"
        )


def prepare_for(spec: RunSpec, vocab_size: int, log=lambda m: None) -> tuple[Prepared, TokenizerChoice]:
    """`prepare_run` for one run's specification (what every training worker calls)."""
    s = spec.setup
    return prepare_run(
        spec.model,
        spec.data,
        vocab_size,
        s.seq_len,
        batching=s.batching,
        seed=spec.schedule.seed,
        attn=spec.combination.attn,
        log=log,
    )
