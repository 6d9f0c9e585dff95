"""benchmarks/published.py's consistency check: a reserved peak can never be below the allocated one, so a row whose
predicted allocated peak exceeds its measured reserved peak is flagged (its setup overstates the run)."""

import pytest

from tests.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def pub():
    return load_benchmark("published")


def test_flags_reserved_rows_whose_allocated_prediction_is_larger(pub):
    rows = [
        {"id": "over", "measured": "max_memory_reserved", "value_bytes": 7000, "setup": {"seq_len": 768}},
        {"id": "under", "measured": "max_memory_reserved", "value_bytes": 8000, "setup": {"seq_len": 768}},
        # an allocated measurement is compared directly, not by this check
        {"id": "alloc", "measured": "max_memory_allocated", "value_bytes": 1, "setup": {"seq_len": 768}},
        {"id": "missing", "measured": "max_memory_reserved", "value_bytes": 1, "missing": "a feature"},
    ]
    # traced allocated peaks as predicted at 768 tokens (10 bytes a token here); a row not predicted has none
    at_768 = {"over": 7680, "under": 7680, "alloc": 7680}
    assert pub.overstated(rows, at_768) == [("over", 7680, 7000)]
    # at a shorter longest batch (the what-if) the same row is no longer flagged
    assert pub.overstated(rows, {k: 6500 for k in at_768}) == []
