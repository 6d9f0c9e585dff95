"""The caching allocator's reserved peak, torch AdamW's foreach temporaries and a loop that keeps its outputs."""

from __future__ import annotations

import pytest

from ftopt.estimate import estimate
from ftopt.estimate.allocator import LARGE_BUFFER, SMALL_BUFFER, Replay, round_size, segment_size
from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model

MIB = 2**20


def test_replay_small_requests_share_one_2mib_segment():
    r = Replay(expandable=False)
    for k in range(4):
        r.malloc(k, 1000)  # 1024-byte blocks [round]
    assert r.allocated == 4 * 1024
    assert r.reserved == SMALL_BUFFER


def test_replay_reuses_a_freed_block_and_splits_large_segments():
    r = Replay(expandable=False)
    r.malloc(1, 3 * MIB)  # under 10 MiB: a 20 MiB segment, split [segment] [split]
    assert r.reserved == LARGE_BUFFER
    r.malloc(2, 3 * MIB)  # fits the split remainder: no new segment
    assert r.reserved == LARGE_BUFFER
    r.free(1)
    r.free(2)
    r.malloc(3, 15 * MIB)  # the merged 20 MiB block takes it [merge]
    assert r.reserved == LARGE_BUFFER


def test_replay_growing_requests_leave_slivers_unless_segments_expand():
    """Note [Expandable Segments]: requests a little larger each time cannot reuse the freed, smaller segments;
    one expandable segment takes them with a page or so of slack."""
    sizes = [100 * MIB + k * 2 * MIB for k in range(5)]
    default, expandable = Replay(expandable=False), Replay(expandable=True)
    for r in (default, expandable):
        for k, n in enumerate(sizes):
            r.malloc(k, n)
            r.free(k)
    assert default.peak_reserved == sum(segment_size(round_size(n)) for n in sizes)
    assert expandable.peak_reserved < max(sizes) + LARGE_BUFFER


def _l40s(setup: TrainingSetup, combo: Combination, method: str = "analytic"):
    return estimate(load_model("llama-3.2-3b"), load_hardware("l40s"), setup, combo, method)


BF16 = TrainingSetup(seq_len=768, micro_batch=4, precision="bf16-true")


def test_fits_is_decided_on_reserved_plus_context():
    e = _l40s(BF16, Combination())
    assert e.reserved_bytes_per_gpu > e.peak_bytes_per_gpu
    assert e.device_bytes_per_gpu - e.reserved_bytes_per_gpu == 600 * MIB  # the CUDA context, nothing else
    assert e.to_json()["reserved_bytes_per_gpu"] == e.reserved_bytes_per_gpu
    cpu = estimate(load_model("tiny-llama"), load_hardware("cpu"), TrainingSetup(seq_len=64), Combination())
    assert cpu.reserved_bytes_per_gpu == cpu.peak_bytes_per_gpu == cpu.device_bytes_per_gpu


def test_foreach_adamw_step_holds_a_copy_of_the_second_moments():
    """Full fine-tuning with GC: foreach adds half the Adam states at the step, which becomes the peak."""
    gc = Combination(gc=True)
    fused = _l40s(BF16, gc)
    foreach = _l40s(BF16.model_copy(update={"adamw_kernel": "foreach"}), gc)
    assert foreach.peak_phase == "optimizer step"
    assert foreach.breakdown.temporaries == foreach.breakdown.optimizer_states // 2
    assert foreach.peak_bytes_per_gpu > fused.peak_bytes_per_gpu


def test_traced_foreach_step_matches_the_analytic_temporary():
    """The trace runs on CPU, where torch would pick the per-tensor loop: it names the kernel, so it sees the
    same _foreach_sqrt copy as CUDA would."""
    from ftopt.estimate.traced import traced_memory

    spec, gc = load_model("tiny-llama"), Combination(gc=True, attn="eager")
    setup = TrainingSetup(seq_len=16, micro_batch=1, precision="fp32")
    fused, _, _ = traced_memory(spec, setup, gc, target="cpu", layers=None)
    foreach, phase, _ = traced_memory(
        spec, setup.model_copy(update={"adamw_kernel": "foreach"}), gc, target="cpu", layers=None
    )
    assert phase == "optimizer step"
    # weights, their gradients, both moments and the second moments' copy (fp32: 4 + 4 + 8 + 4 bytes a parameter)
    assert foreach.total() == pytest.approx(fused.weights * 5, rel=1e-3)
    assert fused.total() < 0.9 * foreach.total()


def test_a_loop_that_keeps_outputs_holds_the_logits():
    combo = Combination(lora_r=8, lora_targets=("q_proj", "v_proj"))
    drop, keep = _l40s(BF16, combo), _l40s(BF16.model_copy(update={"keeps_outputs": True}), combo)
    logits = 768 * 4 * 128256 * 2
    assert keep.peak_bytes_per_gpu - drop.peak_bytes_per_gpu == logits


def test_closed_form_is_within_a_page_of_the_replayed_trace():
    """The trace's mallocs and frees through the allocator's rules (Replay, expandable segments) leave the slack
    the closed form predicts, to within one 20 MiB page, on a model small enough to trace whole."""
    from ftopt.estimate.allocator import reserved_slack_bytes
    from ftopt.estimate.traced import _run_trace
    from ftopt.spec.policy import storage

    spec, combo = load_model("tiny-llama"), Combination()
    setup = TrainingSetup(seq_len=1024, micro_batch=4, precision="bf16-true")
    replay = _run_trace(spec, setup, combo, spec.num_layers, "cuda").replay  # the tracker itself, not the stored peaks
    slack = replay.peak_reserved - replay.peak_allocated
    assert slack > 0
    assert abs(reserved_slack_bytes(spec, setup, storage(setup.precision, combo), True) - slack) <= LARGE_BUFFER


def test_a_run_file_cannot_ask_train_for_another_loop():
    """Those setup fields describe other people's loops; `ftopt train` cannot honour them, so a run refuses them."""
    from pydantic import ValidationError

    from ftopt.spec import RunSpec

    for update in ({"adamw_kernel": "foreach"}, {"keeps_outputs": True}, {"expandable_segments": False}):
        with pytest.raises(ValidationError, match="describe other training loops"):
            RunSpec(hardware=load_hardware("cpu"), setup=TrainingSetup(seq_len=64).model_copy(update=update))
    assert RunSpec(hardware=load_hardware("cpu"), setup=TrainingSetup(seq_len=64)).setup.expandable_segments


def test_kept_outputs_hold_the_kv_cache_in_both_estimators():
    """A model with use_cache on returns its KV cache in the outputs a loop keeps: the trace (a real forward with
    use_cache=True) and the formulas both rise with it and still agree (test_agreement's tolerance); under GC
    transformers builds no cache."""
    from pydantic import ValidationError

    spec, hw = load_model("tiny-llama"), load_hardware("l40s")
    given = dict(seq_len=256, micro_batch=4, precision="bf16-true", keeps_outputs=True)
    without, with_cache = TrainingSetup(**given), TrainingSetup(**given, kv_cache=True)
    for combo, held in ((Combination(), True), (Combination(lora_r=8), True), (Combination(gc=True), False)):
        peaks = {
            m: [estimate(spec, hw, s, combo, m).peak_bytes_per_gpu for s in (without, with_cache)]
            for m in ("analytic", "traced")
        }
        if held:
            assert all(b > a for a, b in peaks.values()), (combo.label(), peaks)
            assert peaks["analytic"][1] == pytest.approx(peaks["traced"][1], rel=0.05), (combo.label(), peaks)
        else:
            assert all(a == b for a, b in peaks.values()), (combo.label(), peaks)
    with pytest.raises(ValidationError, match="needs keeps_outputs"):
        TrainingSetup(seq_len=256, kv_cache=True)


def test_replay_empty_cache_returns_only_wholly_free_segments():
    """[keep] empty_cache gives back a segment only when nothing in it is live: a block still allocated pins its
    whole segment, free remainder included."""
    r = Replay(expandable=False)
    r.malloc(1, 30 * MIB)  # its own 30 MiB segment [segment]
    r.malloc(2, 3 * MIB)  # a 20 MiB segment, split
    r.malloc(3, 3 * MIB)  # the split remainder of that segment
    r.free(1)
    r.free(2)
    r.empty_cache()
    assert r.reserved == LARGE_BUFFER  # the 30 MiB segment went back; block 3 pins the 20 MiB one
    r.free(3)
    r.empty_cache()
    assert r.reserved == 0
    r.malloc(4, 3 * MIB)  # the next request maps a new segment
    assert r.reserved == LARGE_BUFFER
