import os

import pytest

# No test reaches the Hugging Face Hub (tests/hubserver.py stands in for it). huggingface_hub reads HF_HUB_OFFLINE
# once, when it is imported, and a test module that imports transformers at its top imports it while pytest
# collects, before any fixture runs; set here, before collection, it holds for every test of the session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


# Keep caches (cpu probe, calibration) inside the test session, never in the user's home.
@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FTOPT_CACHE", str(tmp_path_factory.getbasetemp() / "ftopt-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
