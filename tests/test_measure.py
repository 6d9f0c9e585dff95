"""ftopt.measure on the CPU: the profiler misses frees made on other threads, and the address ledger corrects it."""

from __future__ import annotations

import threading

import torch

from ftopt.measure import AllocatorPeak, cpu_allocation_events, ledger_peak

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
    assert (gone_ptr, BLOCK_BYTES) in events and (gone_ptr, -BLOCK_BYTES) not in events
    assert (kept_ptr, BLOCK_BYTES) in events and (kept_ptr, -BLOCK_BYTES) in events
    if kept_ptr == gone_ptr:  # the allocator reused the address (glibc may or may not): the ledger retires it
        assert peak.stop() == BLOCK_BYTES
    else:  # no proof it was freed: the reading stays an upper bound
        assert peak.stop() == 2 * BLOCK_BYTES
