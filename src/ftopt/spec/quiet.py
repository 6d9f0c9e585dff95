"""Third-party messages that are not the user's concern, filtered where they arise: each filter names one
library's logger or warning and matches its exact text, so everything else still reaches the user.

- PEFT reads transformers' deprecated `is_gradient_checkpointing` alias in `PeftModel.__init__` (peft_model.py),
  a FutureWarning about PEFT's code, printed by every LoRA build (train and the traced estimate).
- DeepSpeed logs "Setting accelerator to CPU" when it is imported on a machine without a GPU
  (accelerator/real_accelerator.py): noise in a run that does not use DeepSpeed.
- huggingface_hub logs each failed attempt of a request ("'[Errno -2] Name or service not known' thrown while
  requesting HEAD https://...", then "Retrying in 1s") before the error that ftopt turns into one sentence.
- bitsandbytes logs that an optional CPU kernel package (`kernels`) is missing, on import.
- transformers' Trainer, resuming a full fine-tune of a model whose LM head is tied to its embedding, warns
  "There were missing keys in the checkpoint model loaded: ['lm_head.weight']" (`tied_keys_quiet`).
"""

from __future__ import annotations

import ast
import logging
import warnings
from contextlib import contextmanager


class _DropMatching(logging.Filter):
    """Drops the records whose message contains any of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


def _add(logger_name: str, *fragments: str) -> None:
    logger = logging.getLogger(logger_name)  # the library's own logger: created now if it is not imported yet
    if not any(isinstance(f, _DropMatching) and f.fragments == fragments for f in logger.filters):
        logger.addFilter(_DropMatching(*fragments))


def install(uses_deepspeed: bool = False) -> None:
    """Install the filters (idempotent). `uses_deepspeed`: the run uses DeepSpeed, so its notices stay."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if not uses_deepspeed:
        _add("DeepSpeed", "Setting accelerator to CPU")
    _add("huggingface_hub.utils._http", "' thrown while requesting ", "Retrying in ")
    _add("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")


@contextmanager
def no_checkpoint_bars():
    """transformers' "Writing model shards" bar off while the Trainer runs: its checkpoint saves are ftopt's
    bookkeeping (the step progress goes on meanwhile); the final save, which the user waits for, keeps its bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


MISSING_KEYS = "There were missing keys in the checkpoint model loaded: "  # transformers trainer.py


class _DropTiedMissing(logging.Filter):
    """Drops the missing-keys warning when each key it lists names a parameter that another, loaded name shares."""

    def __init__(self, names_of: dict[str, list[str]]):
        super().__init__()
        self.names_of = names_of  # parameter name -> every name of the same tensor

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not msg.startswith(MISSING_KEYS):
            return True
        try:
            missing = set(ast.literal_eval(msg[len(MISSING_KEYS) :].rstrip(".")))
        except (ValueError, SyntaxError):
            return True
        filled = lambda k: any(n not in missing for n in self.names_of.get(k, []) if n != k)  # noqa: E731
        return not all(filled(k) for k in missing)


def tied_keys_quiet(model) -> None:
    """Before a resume: the checkpoint stores a tied LM head once, under its embedding's name (save_pretrained drops
    the duplicate), and loading that name fills the one tensor both names hold, so the key Trainer calls missing
    is not (Trainer._issue_warnings_after_load only recognises _keys_to_ignore_on_save, which llama leaves empty).
    Any other missing key still reaches the user."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    names_of = {n: g for g in groups.values() if len(g) > 1 for n in g}
    logger = logging.getLogger("transformers.trainer")
    for f in [f for f in logger.filters if isinstance(f, _DropTiedMissing)]:
        logger.removeFilter(f)
    if names_of:
        logger.addFilter(_DropTiedMissing(names_of))
