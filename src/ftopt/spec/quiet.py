"""Third-party messages that are not the user's concern, filtered where they arise: each filter names one
library's logger or warning and matches its exact text, so everything else still reaches the user.

- PEFT reads transformers' deprecated `is_gradient_checkpointing` alias in `PeftModel.__init__` (peft_model.py),
  a FutureWarning about PEFT's code, printed by every LoRA build (train and the traced estimate).
- DeepSpeed logs "Setting accelerator to CPU" when it is imported on a machine without a GPU
  (accelerator/real_accelerator.py): noise in a run that does not use DeepSpeed.
- huggingface_hub logs each failed attempt of a request ("'[Errno -2] Name or service not known' thrown while
  requesting HEAD https://...", then "Retrying in 1s") before the error that ftopt turns into one sentence.
- bitsandbytes logs that an optional CPU kernel package (`kernels`) is missing, on import.
"""

from __future__ import annotations

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
