"""Which tokens of a chat example are trained, for any chat template.

Two ways to find the assistant tokens:

- The template has `{% generation %}` markers: transformers' `return_assistant_tokens_mask` (TRL's path).
- It has none (most Hub templates: Llama 3, Mistral, Gemma, Qwen, Phi-3, ...): the conversation's prefixes are
  rendered with the tokenizer's own template. For assistant turn i, the rendering of turns 1..i-1 with the
  generation prompt ends where the turn's content starts, and the rendering of turns 1..i shares its text with the
  whole conversation up to where the turn ends (a template may append an end-of-conversation trailer, as Phi-3
  appends EOS, so the shared prefix is taken, not the whole rendering). The idea of axolotl's chat-template
  strategy (its `find_turn` compares token ids of renderings with a dummy turn); here text spans are compared
  and mapped to tokens by offsets, which verifies them too.

Trained per assistant turn: the content and the special tokens the template emits right after it (the end-of-turn:
Llama 3 `<|eot_id|>`, Mistral `</s>`, Gemma `<end_of_turn>`, Qwen `<|im_end|>`, Phi-3 `<|end|>`), so the model
learns to stop; the newline some templates write after that token is context.

Every example is verified: each token of the whole rendering (the fast tokenizer's character offsets) lies either
inside a turn's span or outside all of them, and the inside tokens cover exactly the span's text. A template that
is not prefix-stable (Mistral v0.3 moves the system message into the last user turn; templates that drop earlier
reasoning) fails this for some examples: they raise `Unstable` with the reason, and the caller names them by line.
"""

from __future__ import annotations

from ftopt.spec.errors import FtoptError, first_line
from ftopt.spec.run import TrainOn

__all__ = ["IGNORE_INDEX", "MAX_UNSTABLE_SHARE", "TrainOn", "Unstable", "labels_by_markers", "labels_by_rendering"]

IGNORE_INDEX = -100  # label the loss skips (prompt, user and system tokens, padding): torch cross_entropy default
# More than this share of a file's chat examples without verifiable spans refuses the file: below it they are
# skipped and named (a few odd rows should not stop a run; a template that fails most rows should).
MAX_UNSTABLE_SHARE = 0.05


class Unstable(ValueError):
    """An example whose assistant spans cannot be found or verified; the message says why."""


def _render(tokenizer, messages, template, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
    )


def _shared_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def char_spans(tokenizer, messages: list[dict], template: str) -> tuple[str, list[tuple[int, int, int]]]:
    """The whole rendering and, per assistant turn, (content start, content end, turn end) as character offsets
    in it (the turn end is where the rendering up to this turn stops agreeing with the whole)."""
    try:
        full = _render(tokenizer, messages, template, False)
    except Exception as e:  # noqa: BLE001 - jinja2's TemplateError (the template's raise_exception) and kin
        raise ValueError(f"the chat template refused it: {first_line(e, 120)}") from None
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        if i == 0:
            raise Unstable("the conversation starts with an assistant turn (no prompt to render before it)")
        try:
            before = _render(tokenizer, messages[:i], template, True)
            upto = _render(tokenizer, messages[: i + 1], template, False)
        except Exception as e:  # noqa: BLE001 - a template's raise_exception or a Jinja error on a prefix
            raise Unstable(f"the template refused the first {i} turns ({first_line(e, 120)})") from None
        if not full.startswith(before):
            raise Unstable(f"turn {i + 1}: the rendering of the turns before it is not a prefix of the whole")
        start, end = len(before), _shared_prefix(upto, full)
        content = str(m.get("content") or "").strip()
        at = full.find(content, start, end) if content else start
        if end <= start or at < 0:
            raise Unstable(f"turn {i + 1}: its content is not where the template renders the turn")
        spans.append((start, at + len(content), end))
    return full, spans


def _token_spans(offsets, special: list[bool], spans) -> list[list[int]]:
    """Token indices per span: the tokens inside [start, end), then the special tokens right after it that lie
    before the turn's end (its end-of-turn). A token crossing a span boundary makes the example unverifiable."""
    out = []
    for start, end, turn_end in spans:
        inside = []
        for t, (a, b) in enumerate(offsets):
            if a >= start and b <= end and b > a:
                inside.append(t)
            elif a < start < b or a < end < b:
                raise Unstable(f"a token crosses the assistant turn's boundary at character {start} or {end}")
        if not inside:
            raise Unstable("an assistant turn has no token of its own")
        t = inside[-1] + 1
        while t < len(offsets) and special[t] and offsets[t][0] >= end and offsets[t][1] <= turn_end:
            inside.append(t)
            t += 1
        covered = (offsets[inside[0]][0], offsets[inside[-1]][1])
        if covered[0] > start or covered[1] < end:
            raise Unstable("the tokens of an assistant turn do not cover its text")
        out.append(inside)
    return out


def labels_by_rendering(tokenizer, messages: list[dict], template: str, train_on: TrainOn) -> tuple[list, list]:
    """input_ids and labels of one conversation through prefix rendering (see the module docstring)."""
    if not getattr(tokenizer, "is_fast", False):
        raise FtoptError(
            f"The tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer: the assistant turns of a chat "
            "template without {% generation %} markers are found by character offsets, which only fast tokenizers "
            "give; give --tokenizer with a tokenizer.json."
        )
    full, spans = char_spans(tokenizer, messages, template)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)  # the template renders BOS itself
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    special_ids = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    turns = _token_spans(offsets, [t in special_ids for t in ids], spans)
    return ids, _labels(ids, turns, train_on)


def _labels(ids: list[int], turns: list[list[int]], train_on: TrainOn) -> list[int]:
    if train_on is TrainOn.ALL:
        return list(ids)
    chosen = turns[-1:] if train_on is TrainOn.LAST_ASSISTANT else turns
    keep = {t for turn in chosen for t in turn}
    return [tid if t in keep else IGNORE_INDEX for t, tid in enumerate(ids)]


def labels_by_markers(tokenizer, messages: list[dict], template: str, train_on: TrainOn) -> tuple[list, list]:
    """input_ids and labels from the template's `{% generation %}` markers (transformers' assistant mask)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=template
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    turns, run = [], []  # contiguous runs of masked tokens: one per assistant turn
    for t, m in enumerate(mask):
        if m:
            run.append(t)
        elif run:
            turns.append(run)
            run = []
    if run:
        turns.append(run)
    return ids, _labels(ids, turns, train_on)


def has_markers(template: str) -> bool:
    from trl.chat_template_utils import has_generation_markers

    return has_generation_markers(template)
