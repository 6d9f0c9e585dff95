"""Why `train`'s measured peak can sit far below the prediction: the padding assumption, said in the summary.

With `--batching padded` (the default) the estimate is that of a micro-batch whose longest row is --seq-len tokens
(estimate.check_setup says so); the Trainer pads each micro-batch only to its longest row, so data shorter than --seq-len trains in shorter batches and needs less memory
for activations and logits. When the prediction exceeds the measurement by more than the analytic estimator's
stated worst-case error and the data's rows are on average clearly shorter than --seq-len, that is the cause.
"""

from __future__ import annotations

# The analytic estimator's worst-case error target (README "Estimate accuracy": analytic within 10% worst): a gap
# beyond it is not the estimator's error.
ESTIMATOR_WORST_ERROR = 0.10


def padding_gap_note(metrics: dict) -> str | None:
    """One sentence explaining a predicted-vs-measured peak gap caused by padding, or None."""
    setup = (metrics.get("run") or {}).get("setup") or {}
    if setup.get("batching", "packed" if metrics.get("packing") else "padded") != "padded":
        return None  # packed and padded-max rows have the predicted shape; full rows are not padded
    measured = (metrics.get("measured") or {}).get("peak_bytes_per_gpu")
    predicted = ((metrics.get("predicted") or {}).get("analytic") or {}).get("peak_bytes_per_gpu")
    data = metrics.get("data") or {}
    rows, tokens, seq_len = data.get("rows"), data.get("tokens"), metrics.get("seq_len")
    if not (measured and predicted and rows and tokens and seq_len):
        return None
    mean_len = tokens / rows
    if predicted <= measured * (1 + ESTIMATOR_WORST_ERROR) or mean_len >= seq_len * (1 - ESTIMATOR_WORST_ERROR):
        return None
    return (
        f"The predicted peak is {predicted / measured:.1f}x the measured one because the prediction assumes every "
        f"row is --seq-len {seq_len} tokens, while this data averages {mean_len:.0f} tokens per row and padded "
        f"batches are padded only to their longest row. Longer data would reach the prediction; --packing fills "
        f"every row to {seq_len} tokens, --batching padded-max pads every row to it."
    )
