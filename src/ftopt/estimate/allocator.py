"""The CUDA caching allocator's reserved bytes: what torch.cuda.max_memory_reserved reports beside the allocated peak.

Every term follows torch's allocator, c10/cuda/CUDACachingAllocator.cpp (pytorch/pytorch, torch 2.13):
  [round]   round_size: every request is rounded up to a multiple of kMinBlockSize = 512 bytes.
  [pools]   requests of at most kSmallSize = 1 MiB go to the small pool, larger ones to the large pool; a block
            is only ever reused within its pool.
  [segment] get_allocation_size: a new segment (cudaMalloc) is kSmallBuffer = 2 MiB for a small request,
            kLargeBuffer = 20 MiB for a request under kMinLargeAlloc = 10 MiB, else the request rounded up to
            kRoundLarge = 2 MiB.
  [bestfit] get_free_block: the smallest cached free block of the pool that is large enough (ties: the lowest
            address, BlockComparatorSize); a new segment only when none fits.
  [split]   should_split: the rest of a larger block becomes a free block when at least 512 bytes remain (small
            pool, or any pool with expandable segments), or more than kSmallSize (large pool otherwise); an
            unsplit remainder stays part of the allocated block (and of max_memory_allocated).
  [merge]   free_block / try_merge_blocks: a freed block merges with free neighbours of its segment.
  [keep]    segments are returned to CUDA only on empty_cache() or after a failed cudaMalloc, so within a run
            reserved never falls: its peak is its last value.
  [expand]  Note [Expandable Segments] (expandable_segments:True, which `ftopt train` sets, train/allocator.py):
            one segment per pool and stream that grows by pages, 2 MiB for the small pool and 20 MiB for the
            large one, mapped at its end when no cached block fits.
Both estimators predict the reserved peak as the allocated peak plus `reserved_slack_bytes`, one closed form.
`Replay` runs a trace's allocations and frees through the rules above; a full-depth trace replayed through it is
the check of that form (tests/estimate/test_allocator.py, docs/accuracy.md). It is not the estimate itself: the
estimators trace 2 and 3 layers, where the peak falls at another moment than at full depth, so the replay's
slack does not extrapolate in the layer count, and a full-depth trace of a 3B model takes about a minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftopt.spec import ModelSpec, TrainingSetup
from ftopt.spec.policy import Storage

MIN_BLOCK = 512  # kMinBlockSize [round]
SMALL_SIZE = 1 << 20  # kSmallSize [pools]
SMALL_BUFFER = 2 << 20  # kSmallBuffer [segment]
LARGE_BUFFER = 20 << 20  # kLargeBuffer [segment], also the large pool's page under [expand]
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc [segment]
ROUND_LARGE = 2 << 20  # kRoundLarge [segment]


def round_size(nbytes: int) -> int:
    """[round] The block size a request of `nbytes` takes."""
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


def segment_size(nbytes: int) -> int:
    """[segment] The cudaMalloc a request of `nbytes` (already rounded) triggers when no cached block fits."""
    if nbytes <= SMALL_SIZE:
        return SMALL_BUFFER
    if nbytes < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-nbytes // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)  # identity: list.index finds this block, not an equal one
class _Block:
    seg: int
    start: int
    size: int
    free: bool = True


@dataclass
class _Pool:
    small: bool
    blocks: list[_Block] = field(default_factory=list)  # every block, in (segment, address) order per segment


class Replay:
    """The caching allocator's bookkeeping for a sequence of malloc/free, without memory: allocated and reserved
    bytes and their peaks, under the default setting or expandable segments."""

    def __init__(self, expandable: bool):
        self.expandable = expandable
        self.pools = (_Pool(small=True), _Pool(small=False))
        self.live: dict[int, tuple[_Pool, _Block]] = {}
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self._segments = 0

    def malloc(self, key: int, nbytes: int) -> None:
        size = round_size(nbytes)
        pool = self.pools[0] if size <= SMALL_SIZE else self.pools[1]
        fits = [b for b in pool.blocks if b.free and b.size >= size]
        block = min(fits, key=lambda b: (b.size, b.seg, b.start)) if fits else self._grow(pool, size)
        remaining = block.size - size
        if remaining >= MIN_BLOCK if (pool.small or self.expandable) else remaining > SMALL_SIZE:  # [split]
            rest = _Block(block.seg, block.start + size, remaining)
            pool.blocks.insert(pool.blocks.index(block) + 1, rest)
            block.size = size
        block.free = False
        self.live[key] = (pool, block)
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is None:
            return
        pool, block = entry
        block.free = True
        self.allocated -= block.size
        i = pool.blocks.index(block)
        for j in (i + 1, i):  # [merge] with the next, then the previous block of the same segment
            if 0 < j < len(pool.blocks):
                a, b = pool.blocks[j - 1], pool.blocks[j]
                if a.free and b.free and a.seg == b.seg and a.start + a.size == b.start:
                    a.size += b.size
                    del pool.blocks[j]

    def empty_cache(self) -> None:
        """[keep] torch.cuda.empty_cache() under the default setting (release_cached_blocks): every segment whose
        blocks are all free (merged, so one block) goes back to CUDA; a segment with any live block stays whole."""
        if self.expandable:
            raise ValueError("empty_cache is replayed for the default allocator only (expandable=False)")
        for pool in self.pools:
            whole = [b for b in pool.blocks if b.free and b.start == 0 and b.size == self._segment_bytes(pool, b.seg)]
            for b in whole:
                pool.blocks.remove(b)
                self.reserved -= b.size

    @staticmethod
    def _segment_bytes(pool: _Pool, seg: int) -> int:
        return sum(b.size for b in pool.blocks if b.seg == seg)

    def _grow(self, pool: _Pool, size: int) -> _Block:
        """No cached block fits: a new segment [segment], or more pages at the end of the pool's one segment
        [expand] (joining a free block already at its end)."""
        if not self.expandable or not pool.blocks:
            grow = segment_size(size) if not self.expandable else _pages(pool, size)
            self._segments += 1
            block = _Block(self._segments, 0, grow)
            pool.blocks.append(block)
        else:
            tail = pool.blocks[-1]
            have = tail.size if tail.free else 0
            grow = _pages(pool, size - have)
            if tail.free:
                tail.size += grow
                block = tail
            else:
                block = _Block(tail.seg, tail.start + tail.size, grow)
                pool.blocks.append(block)
        self.reserved += grow
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return block


def _pages(pool: _Pool, nbytes: int) -> int:
    """[expand] Bytes mapped to hold `nbytes` more: whole pages of the pool's page size."""
    page = SMALL_BUFFER if pool.small else LARGE_BUFFER
    return -(-nbytes // page) * page


def reserved_slack_bytes(model: ModelSpec, setup: TrainingSetup, st: Storage, on_gpu: bool) -> int:
    """Reserved beyond the allocated peak, per GPU (0 off CUDA: the CPU allocator caches nothing).

    At the peak (the loss and the start of backward) the one large block the allocator holds free is the LM
    head's 16-bit logits: the loss upcasts them to fp32 (transformers loss_utils.ForCausalLMLoss) and drops them,
    and every tensor allocated after them until the peak is an fp32 vocabulary-wide tensor, twice their size, that
    cannot reuse their block [bestfit]: tokens x vocab x 2 bytes stay reserved. fp32 logits are not copied, so
    leave no such block. Each pool also holds one partly used page or segment at its end, up to 20 MiB (large)
    and 2 MiB (small) [segment] [expand]: counted whole, which is what small models see. The other per-request
    terms ([round] 512 bytes, the large pool's unsplit remainders under 1 MiB [split]) add well under 1% over a
    step's few thousand blocks. Checked against Replay on full-depth traces (docs/accuracy.md): Llama-3.2-3B
    bf16, within 0.25 GiB of the replay with expandable segments, the default allocator leaving up to 1 GiB more
    in segments split by gradients and held logits; tiny-llama within one large page."""
    if not on_gpu:
        return 0
    logits = setup.tokens_per_micro_batch * model.vocab_size * st.act_bytes if st.act_bytes != 4 else 0
    return logits + LARGE_BUFFER + SMALL_BUFFER
