"""Supervised fine-tuning data as TRL prepares it: token ids, loss labels, packing and the batch collator.

The conventions are TRL 1.16's `SFTTrainer._prepare_dataset`, applied row by row so that every error names the
file's line and truncation, dropped rows and unknown tokens are counted:

- `text`: the tokenizer's own special tokens (BOS where it adds one), then EOS unless the tokenizer already ended
  with it. All tokens are trained.
- `prompt` + `completion`: prompt and prompt+completion+EOS are tokenized; the completion starts where the two
  diverge (`trl.data_utils.common_prefix_length`); only completion tokens are trained (completion-only loss).
- `messages`: the tokenizer's own chat template renders the conversation, its own BOS/EOS included, and nothing
  is added to it (no doubled special tokens). Which tokens are trained (`--train-on`: all, every assistant turn,
  the last one) comes from the template's `{% generation %}` markers where it has them, else from rendering the
  conversation's prefixes (ftopt.train.chat_spans, any template). A tokenizer without a template gets
  `FALLBACK_CHAT_TEMPLATE`, saved with the run. Examples whose spans cannot be verified are skipped and named;
  above chat_spans.MAX_UNSTABLE_SHARE of the file they refuse it.

Packing is TRL's best-fit-decreasing `pack_dataset` (documents are never split, each keeps its `seq_lengths`), and
the collator is TRL's `DataCollatorForLanguageModeling`: position ids restart at 0 for every document and the
first token of each document is not predicted from the one before. With FlashAttention the micro-batch is
flattened into one padding-free row (varlen kernels read `cu_seq_lens`); with SDPA/eager each packed row stays a
row and no attention mask is passed, so transformers builds a block-diagonal causal mask from the position ids.
HF `Trainer` stays the trainer (our DeepSpeed config, callbacks and memory probes); TRL supplies the data side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftopt.spec.errors import FtoptError, first_line
from ftopt.train.chat_spans import IGNORE_INDEX, MAX_UNSTABLE_SHARE, TrainOn, Unstable
from ftopt.train.data import Records

__all__ = ["IGNORE_INDEX", "Example", "SftCollator", "Tokenized", "to_dataset", "tokenize"]

# Used only when the tokenizer has no chat template. `{% generation %}` marks the assistant tokens
# (transformers' return_assistant_tokens_mask); the assistant turn's EOS is inside, so the model learns to stop.
# The role line ends in a newline, not a space: byte-level BPE glues a space to the next word (" Low"), and that
# token would straddle the generation boundary and count as trained.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}{{ m['role'] + ':\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + (eos_token if eos_token else '') }}"
    "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class Tokenized:
    examples: list[Example]
    truncated: int = 0  # rows longer than seq_len, cut at seq_len (keep the start, as TRL's default)
    dropped: int = 0  # rows with no trained token left after truncation (TRL drops them too)
    tokens: int = 0  # tokens kept, all rows
    trained_tokens: int = 0
    unk_tokens: int = 0
    unstable: list[str] = field(default_factory=list)  # "line 7: why": chat rows skipped, spans not verifiable

    @property
    def unk_fraction(self) -> float:
        return self.unk_tokens / self.tokens if self.tokens else 0.0


def chat_template(tokenizer) -> str:
    """The tokenizer's chat template; the fallback (saved with the run) when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE  # saved with the run, so inference renders the same
    return tokenizer.chat_template


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids if eos is None or (ids and ids[-1] == eos) else ids + [eos]


def _text(tokenizer, row: dict) -> Example:
    ids = _with_eos(_ids(tokenizer, str(row["text"])), tokenizer.eos_token_id)
    return Example(ids, list(ids))


def _prompt_completion(tokenizer, row: dict) -> Example:
    from trl.data_utils import common_prefix_length

    prompt = str(row["prompt"])
    prompt_ids = _ids(tokenizer, prompt)
    ids = _with_eos(_ids(tokenizer, prompt + str(row["completion"])), tokenizer.eos_token_id)
    start = common_prefix_length(prompt_ids, ids)
    return Example(ids, [IGNORE_INDEX] * start + ids[start:])


def _messages(tokenizer, row: dict, template: str, train_on: TrainOn) -> Example:
    from ftopt.train.chat_spans import has_markers, labels_by_markers, labels_by_rendering

    find = labels_by_markers if has_markers(template) else labels_by_rendering
    return Example(*find(tokenizer, row["messages"], template, train_on))


def _example(tokenizer, row: dict, fmt: str, template: str | None, train_on: TrainOn) -> Example:
    if fmt == "messages":
        return _messages(tokenizer, row, template, train_on)
    return _prompt_completion(tokenizer, row) if fmt == "prompt+completion" else _text(tokenizer, row)


def tokenize(records: Records, tokenizer, seq_len: int, fmt: str, train_on: TrainOn = TrainOn.ASSISTANT) -> Tokenized:
    """Ids and labels per row, truncated to seq_len (keeping the start); fully masked rows are dropped."""
    template = chat_template(tokenizer) if fmt == "messages" else None
    unk = tokenizer.unk_token_id
    out = Tokenized([])
    for row, where in zip(records.rows, records.where):
        try:
            ex = _example(tokenizer, row, fmt, template, train_on)
        except Unstable as e:
            out.unstable.append(f"{where}: {e}")
            continue
        except (TypeError, ValueError, KeyError) as e:  # a malformed row the template or tokenizer refused
            raise FtoptError(f"{records.source}, {where}: cannot be tokenized ({first_line(e, 160)}).") from None
        if fmt == "messages" and all(lab == IGNORE_INDEX for lab in ex.labels):
            raise FtoptError(f"{records.source}, {where}: the conversation has no assistant message to train on.")
        if len(ex.input_ids) > seq_len:
            out.truncated += 1
            ex = Example(ex.input_ids[:seq_len], ex.labels[:seq_len])
        if all(lab == IGNORE_INDEX for lab in ex.labels):
            out.dropped += 1
            continue
        out.examples.append(ex)
        out.tokens += len(ex.input_ids)
        out.trained_tokens += sum(lab != IGNORE_INDEX for lab in ex.labels)
        if unk is not None:
            out.unk_tokens += sum(t == unk for t in ex.input_ids)
    _check_unstable(out.unstable, len(records), records.source)
    if not out.examples:
        raise FtoptError(f"{records.source}: no row has a trained token left within --seq-len {seq_len}.")
    return out


def _check_unstable(unstable: list[str], rows: int, source: str) -> None:
    """Above MAX_UNSTABLE_SHARE of the rows without verifiable assistant spans, the template does not fit the data."""
    if len(unstable) > MAX_UNSTABLE_SHARE * rows:
        raise FtoptError(
            f"{source}: {len(unstable)} of {rows} conversations have no verifiable assistant spans with this chat "
            f"template (more than {MAX_UNSTABLE_SHARE:.0%}), e.g. {unstable[0]}; fix the data or give --tokenizer "
            "with a template whose rendering of a conversation starts with the rendering of its first turns."
        )


def to_dataset(examples: list[Example], seq_len: int, packing: bool):
    """A `datasets.Dataset` of input_ids/labels; packed by TRL's best-fit decreasing into rows of <= seq_len
    tokens with each document's length in `seq_lengths` (documents are not split: they are already truncated)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # the Map bars of a few thousand rows are noise in a training log
    ds = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    if not packing:
        return ds
    from trl.data_utils import pack_dataset

    return pack_dataset(ds, seq_len, strategy="bfd")


@dataclass
class SftCollator:
    """TRL's `DataCollatorForLanguageModeling`, in one of two layouts (see the module docstring).

    `flatten=True` (FlashAttention, packed or not): the micro-batch becomes one row [1, sum of lengths] with position ids,
    cu_seq_lens and no padding. `flatten=False`: rows [micro_batch, longest row]; for packed rows the position ids
    restart per document and the attention mask is left out so transformers masks across documents; for unpacked
    rows the usual attention mask marks the padding. `pad_to` (rows only): pad every micro-batch to this many
    tokens (TRL's pad_to_multiple_of; rows are already truncated to it) rather than to its longest row."""

    pad_token_id: int
    flatten: bool = False
    pad_to: int | None = None
    _inner: object = field(default=None, repr=False)

    def __post_init__(self):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._inner = DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id,
            padding_free=self.flatten,
            return_position_ids=not self.flatten,
            pad_to_multiple_of=None if self.flatten else self.pad_to,
        )

    def __call__(self, examples: list[dict]) -> dict:
        batch = self._inner(examples)
        if self.flatten:
            return batch
        if "seq_lengths" not in examples[0]:  # unpacked: one document per row, padding needs the mask
            batch.pop("position_ids")
            return batch
        batch.pop("attention_mask")
        # as TRL's padding-free mode: a document's first token (and padding, position 0) is never a target
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX
        return batch
