"""Resuming a run whose model ties its LM head to its embedding: nothing is said to be missing that is not."""

import pytest


def test_a_resumed_model_with_a_tied_lm_head_is_not_said_to_miss_it(tmp_path):
    """tiny-llama ties its LM head to its embedding, so the checkpoint holds the shared tensor once and Trainer's
    resume would warn that 'lm_head.weight' is missing, which reads as a lost head. That warning is dropped only for
    tied keys; any other missing key still reaches the user."""
    import logging

    from ftopt.planner import resolve
    from ftopt.spec import load_hardware
    from ftopt.spec.quiet import MISSING_KEYS
    from ftopt.train.outputs import prepare_output
    from ftopt.train.worker import run_worker

    hw = load_hardware("cpu")
    spec = resolve.finish_run(
        resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw), resolve.combination()),
        data={"eval_max_examples": 0},
        schedule={"max_steps": 4, "save_steps": 2},
        output={"dir": str(tmp_path / "tied")},
    )
    prepare_output(spec)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_worker(spec, claim=False, fail_at_step=3)
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # records the logger's filters let through
    logger = logging.getLogger("transformers.trainer")
    logger.addHandler(handler)
    try:
        resumed = spec.model_copy(update={"output": spec.output.model_copy(update={"resume": True})})
        assert run_worker(resumed, claim=False)["measured"]["steps"] == 4
        assert not [m for m in said if m.startswith(MISSING_KEYS)]
        logger.warning(f"{MISSING_KEYS}['lm_head.weight', 'model.norm.weight'].")  # a key really missing
        assert said[-1].endswith("'model.norm.weight'].")
    finally:
        logger.removeHandler(handler)
