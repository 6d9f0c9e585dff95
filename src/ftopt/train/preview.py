"""`ftopt preview`: the first examples exactly as the trainer will see them, trained tokens marked, and the data
summary, before any GPU hour is spent (as axolotl's preprocessing `--debug` view)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ftopt.spec.run import DataSpec, ModelRef
from ftopt.spec.training import Batching
from ftopt.train.prepare import DataSummary, prepare_run
from ftopt.train.sft import IGNORE_INDEX

TRAINED_MARKS = ("\u27e6", "\u27e7")  # ⟦ ⟧ around trained spans when the terminal shows no colours
DOC_MARK = " \u2016 "  # ‖ between the documents of a packed row


class PreviewExample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    input_ids: list[int]
    trained: list[bool]  # same length: True where the token is a loss target
    documents: list[int] | None = None  # packed rows: each document's token count, in order; None = not packed


class Preview(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tokenizer: str
    summary: DataSummary
    examples: list[PreviewExample]


def build_preview(
    model: ModelRef, data: DataSpec, vocab_size: int, seq_len: int, n: int, seed: int = 0, packing: bool = False
):
    """The preview and the tokenizer that made it (to render the tokens)."""
    batching = Batching.PACKED if packing else Batching.PADDED
    prep, tok = prepare_run(model, data, vocab_size, seq_len, batching=batching, seed=seed)
    rows = prep.train_dataset.select(range(min(n, len(prep.train_dataset))))
    examples = [
        PreviewExample(
            input_ids=r["input_ids"],
            trained=[lab != IGNORE_INDEX for lab in r["labels"]],
            documents=list(r["seq_lengths"]) if "seq_lengths" in r else None,
        )
        for r in rows
    ]
    return Preview(tokenizer=tok.source, summary=prep.summary, examples=examples), tok.tokenizer


def _document_starts(documents: list[int] | None) -> set[int]:
    """Token indices where a packed row's second and later documents begin."""
    if not documents:
        return set()
    starts, at = set(), 0
    for n in documents[:-1]:
        at += n
        starts.add(at)
    return starts


def render(preview: Preview, tokenizer, console) -> None:
    """Each example token by token: trained tokens bold green, the rest dim (without colours, e.g. in a file,
    trained spans are bracketed by TRAINED_MARKS); then the summary."""
    from rich.markup import escape
    from rich.text import Text

    plain = not console.is_terminal
    for i, ex in enumerate(preview.examples, 1):
        line = Text(f"[{i}] ", style="bold")
        prev = False
        starts = _document_starts(ex.documents)
        for t, (tid, trained) in enumerate(zip(ex.input_ids, ex.trained)):
            if t in starts:
                if plain and prev:
                    line.append(TRAINED_MARKS[1])
                    prev = False
                line.append(DOC_MARK, style="bold magenta")
            if plain and trained != prev:
                line.append(TRAINED_MARKS[0] if trained else TRAINED_MARKS[1])
            line.append(tokenizer.decode([tid]), style="bold green" if trained else "dim")
            prev = trained
        if plain and prev:
            line.append(TRAINED_MARKS[1])
        console.print(line)
        docs = f" in {len(ex.documents)} documents" if ex.documents else ""
        console.print(f"    {len(ex.input_ids)} tokens{docs}, {sum(ex.trained)} trained")
    s = preview.summary
    legend = f"{TRAINED_MARKS[0]}...{TRAINED_MARKS[1]}" if plain else "[bold green]green[/]"
    console.print(
        f"{legend} = trained (loss target), the rest is context only"
        + (f";{DOC_MARK.rstrip()} = next packed document" if any(e.documents for e in preview.examples) else "")
        + f". Tokenizer: {escape(preview.tokenizer)}"
    )
    console.print(
        f"{escape(s.source)}: {s.rows} training rows ({s.format}), {s.eval_rows} held out; "
        f"{s.truncated} truncated at {s.seq_len} tokens, {s.dropped} dropped; {s.tokens} tokens, "
        f"{s.trained_tokens} trained; unk_fraction {s.unk_fraction:.4f}"
        + (f"; {s.packed_rows} packed rows" if s.packed_rows is not None else "")
    )
