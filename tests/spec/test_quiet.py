"""Quiet, honest output: third-party notices are filtered by their exact text at their source; one save bar."""

import logging
import warnings

import pytest
from typer.testing import CliRunner

from ftopt.spec import quiet


@pytest.fixture
def restore_filters():
    names = ["DeepSpeed", "huggingface_hub.utils._http", "bitsandbytes.backends.cpu.ops"]
    saved = {n: list(logging.getLogger(n).filters) for n in names}
    with warnings.catch_warnings():
        # start from no ftopt filter: a command run earlier in this process (a CLI test) installed them already
        warnings.filters[:] = [f for f in warnings.filters if "is_gradient_checkpointing" not in str(f[1])]
        for n in names:
            logging.getLogger(n).filters = [f for f in saved[n] if not isinstance(f, quiet._DropMatching)]
        yield
    for n, f in saved.items():
        logging.getLogger(n).filters = f


def _peft_warnings():
    from ftopt.model.build import apply_optimizations, build_model
    from ftopt.spec import Combination, Precision, load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_now = [f for f in warnings.filters if "is_gradient_checkpointing" in str(f[1])]
        if quiet_now:
            warnings.filters[:0] = quiet_now  # keep ftopt's filter ahead of "always"
        spec = load_model("tiny-llama")
        model = build_model(spec, Combination(), Precision.FP32, device="cpu", seed=0)
        apply_optimizations(model, spec, Combination(lora_r=4))
    return [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_peft_future_warning_is_filtered(restore_filters):
    assert _peft_warnings()  # PEFT does warn (so the filter below is tested against the real message)
    quiet.install()
    assert _peft_warnings() == []


def test_logged_notices_are_filtered_only_where_they_are_noise(restore_filters, caplog):
    caplog.set_level(logging.INFO)
    quiet.install(uses_deepspeed=False)
    logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU. If you have GPU ...")
    logging.getLogger("huggingface_hub.utils._http").warning(
        "'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/x/y/config.json"
    )
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    logging.getLogger("DeepSpeed").warning("ZeRO stage 3 is on")  # anything else still shows
    assert [r.getMessage() for r in caplog.records] == ["ZeRO stage 3 is on"]
    logging.getLogger("DeepSpeed").filters = []
    quiet.install(uses_deepspeed=True)  # a DeepSpeed run keeps DeepSpeed's notices
    logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU.")
    assert caplog.records[-1].getMessage() == "Setting accelerator to CPU."


def test_one_save_bar_per_run(tmp_path):
    from ftopt.cli.app import app

    r = CliRunner().invoke(
        app,
        ["train", "--out", str(tmp_path / "r"), "--max-steps", "2", "--save-steps", "1", "--eval-max-examples", "0"],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "checkpoint-2").is_dir()  # two checkpoint saves and the final one: one bar
    assert r.output.count("Writing model shards: 100%") == 1
