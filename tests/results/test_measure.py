"""ftopt.results.measure on the CPU: the profiler misses frees made on other threads, and the address ledger corrects it."""

from __future__ import annotations

import threading

import torch

from ftopt.results.measure import AllocatorPeak, cpu_allocation_events, ledger_peak

BLOCK_BYTES = 8 * 2**20


def test_ledger_retires_a_block_whose_address_is_allocated_again():
    # (time, address, bytes): A at 0x10 freed unseen, then B at the same address; C elsewhere, freed as reported
    events = [(1, 0x10, 100), (2, 0x20, 50), (3, 0x20, -50), (4, 0x10, 100), (5, 0x30, 10)]
    assert ledger_peak(events) == 150  # A + the 50: a plain running sum says 210 (A and B at one address at once)
    assert ledger_peak([(1, 0x10, 100), (2, 0x10, -100), (3, 0x20, 30)]) == 100  # every free seen: the running sum


def test_the_profiler_misses_a_free_on_another_thread():
    """The mechanism behind the ZeRO-3 two-process readings (gloo's threads drop tensors the main thread
    allocated): the free is never reported, so only the address ledger can retire the block."""
    peak = AllocatorPeak().start()
    box = [torch.empty(BLOCK_BYTES, dtype=torch.uint8)]
    gone_ptr = box[0].data_ptr()
    t = threading.Thread(target=box.clear)  # the last reference dies on a thread the profiler does not watch
    t.start()
    t.join()
    kept = torch.empty(BLOCK_BYTES, dtype=torch.uint8)
    kept_ptr = kept.data_ptr()
    del kept  # freed on this thread: reported
    peak.stop_recording()
    events = [(ptr, nbytes) for _t, ptr, nbytes in cpu_allocation_events(peak._prof)]
    # the one free at gone_ptr, if any, is kept's (the allocator reused the address): gone's own is never reported
    assert (gone_ptr, BLOCK_BYTES) in events and events.count((gone_ptr, -BLOCK_BYTES)) == int(kept_ptr == gone_ptr)
    assert (kept_ptr, BLOCK_BYTES) in events and (kept_ptr, -BLOCK_BYTES) in events
    if kept_ptr == gone_ptr:  # the allocator reused the address (glibc may or may not): the ledger retires it
        assert peak.stop() == BLOCK_BYTES
    else:  # no proof it was freed: the reading stays an upper bound
        assert peak.stop() == 2 * BLOCK_BYTES


def test_an_unseen_free_of_gloos_reduce_scatter_clone_is_put_back():
    """gloo's reduce-scatter clone (allocated inside the c10d op, freed by whichever of the caller and gloo's worker
    lets go last) leaves the ledger at the issuing thread's next allocation after the collective returned, unless
    its free was reported; any other block whose free went unseen stays (the reading an upper bound)."""
    from ftopt.results.measure import retire_unseen_clones

    main, worker, rs = 1, 2, (1, 25)  # threads; the reduce-scatter ran on thread 1 and returned at t=25
    events = [
        (10, 0xA, 300, main, None),  # the reduce-scatter input
        (20, 0xC, 300, main, rs),  # its clone, freed unseen (by the worker)
        (30, 0xD, 5, worker, None),  # the worker's own small buffer during the all-reduce: the clone is live
        (40, 0xE, 100, main, None),  # the caller's next allocation: the clone is gone by now
        (50, 0xF, 7, main, None),
    ]
    out = retire_unseen_clones(events)
    assert out[:4] == [(10, 0xA, 300), (20, 0xC, 300), (30, 0xD, 5), (40, 0xC, -300)]
    assert ledger_peak(out) == 605 and ledger_peak([e[:3] for e in events]) == 712  # input+clone+5 vs all held
    seen = [*events[:2], (22, 0xC, -300, main, None), *events[2:]]  # a reported free: nothing is added
    assert retire_unseen_clones(seen) == [e[:3] for e in seen]
    other = [(e[0], e[1], e[2], e[3], None) for e in events]  # not a clone: no free is invented
    assert retire_unseen_clones(other) == [e[:3] for e in events]
