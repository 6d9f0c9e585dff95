"""The CUDA caching allocator's setting for a run: expandable segments, unless the user chose their own.

PyTorch CUDA memory-management notes ("Optimizing memory usage with PYTORCH_CUDA_ALLOC_CONF",
https://pytorch.org/docs/stable/notes/cuda.html): by default the allocator cudaMallocs one segment per large
request and reuses it for smaller ones, so requests whose sizes change a little from step to step (unpacked
batches padded to each micro-batch's longest sequence) leave unusable slivers at the end of segments, and a run can
fail with memory "reserved but unallocated". `expandable_segments:True` makes one segment per stream that grows as
needed, so such requests tile into it. The estimators' reserved peak (estimate/allocator.py) assumes this setting
(TrainingSetup.expandable_segments); a user's own PYTORCH_CUDA_ALLOC_CONF is kept, with a note.
"""

from __future__ import annotations

from collections.abc import Mapping

ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"


def allocator_env(environ: Mapping[str, str], on_cuda: bool) -> dict[str, str]:
    """Variables to add to a run's environment: expandable segments on CUDA unless the user set the variable."""
    if not on_cuda or ALLOC_ENV in environ:
        return {}
    return {ALLOC_ENV: EXPANDABLE}


def allocator_note(environ: Mapping[str, str], on_cuda: bool) -> str | None:
    """A note when the user's own allocator setting lacks expandable segments, which the prediction assumes."""
    value = environ.get(ALLOC_ENV)
    if not on_cuda or value is None:
        return None
    opts = {k.strip(): v.strip() for k, _, v in (o.partition(":") for o in value.split(","))}
    if opts.get("expandable_segments", "").lower() == "true":
        return None
    return (
        f"note: {ALLOC_ENV}={value} is kept as you set it; the memory prediction assumes {EXPANDABLE}, "
        "so fragmentation may take more than the reserved memory it predicts."
    )
