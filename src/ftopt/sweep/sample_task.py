"""The built-in sample language: what the shipped base model (`presets/base/tiny-base`) was pretrained on, and
the fine-tuning task it has never seen.

The language is words of 3-6 letters under an operator: `OP : c a t =>` followed by the answer. Pretraining
teaches three operators (copy, shift every letter forward by one, reverse), so the base knows the format, the
letters and how to align an answer with its prompt. The fine-tuning task is a fourth operator, `back` (every
letter one step *backward*), whose word is in the vocabulary but never appeared in pretraining: the base scores
0% on it, and a run must learn a new letter-to-letter table within the demo's steps.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

LETTERS = string.ascii_lowercase
PRETRAIN_OPS = ("copy", "shift", "reverse")
FINETUNE_OP = "back"
WORDS = [*LETTERS, ":", "=>", *PRETRAIN_OPS, FINETUNE_OP]


def _shift(word: list[str], k: int) -> list[str]:
    return [LETTERS[(LETTERS.index(c) + k) % 26] for c in word]


RULES: dict[str, Callable[[list[str]], list[str]]] = {
    "copy": list,
    "shift": lambda w: _shift(w, 1),
    "reverse": lambda w: w[::-1],
    FINETUNE_OP: lambda w: _shift(w, -1),
}


def examples(op: str, n: int, seed: int, min_len: int = 3, max_len: int = 6) -> list[dict]:
    """n prompt+completion rows of one operator, e.g. {'prompt': 'back : c a t =>', 'completion': 'b z s'}."""
    rng = random.Random(f"{op}/{seed}")  # a string seed: the same rows on every Python and platform
    rows = []
    for _ in range(n):
        w = [rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))]
        rows.append({"prompt": f"{op} : {' '.join(w)} =>", "completion": " ".join(RULES[op](w))})
    return rows


def pretrain_corpus(n_per_op: int, seed: int = 0) -> list[dict]:
    """The pretraining rows: every pretraining operator, interleaved."""
    per_op = [examples(op, n_per_op, seed) for op in PRETRAIN_OPS]
    return [row for group in zip(*per_op) for row in group]


def finetune_task(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows of the unseen operator (different seeds: no overlap by construction of rng)."""
    return examples(FINETUNE_OP, n_train, seed), examples(FINETUNE_OP, n_eval, seed + 10_000)


def tokenizer():
    """A word-level tokenizer over the language (one id per letter and operator), built offline."""
    from ftopt.train.data import word_level_tokenizer

    return word_level_tokenizer(WORDS)
