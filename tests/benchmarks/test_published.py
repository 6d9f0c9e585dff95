"""benchmarks/published.py's consistency check: a reserved peak can never be below the allocated one, so a row whose
predicted allocated peak exceeds its measured reserved peak is flagged (its setup overstates the run)."""

import pytest

from tests.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def pub():
    return load_benchmark("published")


def test_flags_reserved_rows_whose_allocated_prediction_is_larger(pub, monkeypatch):
    # predicted allocated bytes by the setup's seq_len; reserved is never read by the check
    monkeypatch.setattr(pub, "predict_both", lambda setup, method: (setup["seq_len"] * 10, 0))
    rows = [
        {"id": "over", "measured": "max_memory_reserved", "value_bytes": 7000, "setup": {"seq_len": 768}},
        {"id": "under", "measured": "max_memory_reserved", "value_bytes": 8000, "setup": {"seq_len": 768}},
        # an allocated measurement is compared directly, not by this check
        {"id": "alloc", "measured": "max_memory_allocated", "value_bytes": 1, "setup": {"seq_len": 768}},
        {"id": "missing", "measured": "max_memory_reserved", "value_bytes": 1, "missing": "a feature"},
    ]
    assert pub.overstated(rows, None) == [("over", 7680, 7000)]
    # at a shorter longest batch (the what-if) the same row is no longer flagged
    assert pub.overstated(rows, 650) == []
