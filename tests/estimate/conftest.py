import pytest

from ftopt.estimate import trace_cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty trace store, and nothing held in memory before or after the test."""
    monkeypatch.setenv("FTOPT_CACHE", str(tmp_path))
    trace_cache.forget()
    yield tmp_path
    trace_cache.forget()
