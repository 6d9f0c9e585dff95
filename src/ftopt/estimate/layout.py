"""The batch layout a training step really sees, and what it costs beyond the plain causal batch.

`ftopt train` builds batches as TRL does (ftopt.train.sft), in the layout `TrainingSetup.batching` names:
  packed      documents packed into rows of seq_len whose position ids restart at 0 for every document, with no
              attention mask;
  padded      one document per row, right-padded to the micro-batch's longest, with a 0/1 attention mask;
  padded-max  the same, padded to seq_len;
  full        rows of exactly seq_len, nothing padded (a padded batch whose rows all reach seq_len).
The longest row sets the shape, so the estimate of a padded batch is that of the largest: a row of seq_len.
What transformers 5.23 and torch 2.13 then run [masking], [sdpa]:

  flash    the collator flattens the micro-batch into one row [1, micro_batch x seq_len]; the varlen kernel reads
           the document boundaries from the position ids. No mask, O(tokens) memory: the same as unpacked.
  sdpa     masking_utils._preprocess_mask_arguments sees position ids without an attention mask and finds the
           packed documents (find_packed_sequence_indices); create_causal_mask then may not fall back on SDPA's
           `is_causal` and sdpa_mask materializes a bool mask [micro_batch, 1, L, L] once per forward.
           integrations/sdpa_attention.py: with a mask, use_gqa_in_sdpa is False (CPU and CUDA), so repeat_kv
           copies k and v to every query head before the kernel; torch's SDPA turns the bool mask into an
           additive float mask in the query dtype (aten::where) in every layer and the kernel (the CPU flash kernel;
           on CUDA, where the flash kernel takes no mask, presumably the memory-efficient one: not measured on a
           GPU yet) keeps it for backward. The kernel
           stays O(L) per head: no [heads, L, L] scores. A mask also means no causal block skipping: the kernel
           computes all L x L scores (time.forward_flops_per_token).
  padded   masking_utils._ignore_causal_mask_sdpa keeps `is_causal` (no mask) only while the padding mask is all
           ones: a micro-batch with a padded row gets the same materialized bool mask [micro_batch, 1, L, L], the
           repeated k/v and the per-layer float mask as packed rows (only the mask's pattern differs). Padded to
           the longest, a micro-batch of one row is never padded and stays unmasked; padded to seq_len, a shorter
           row always is. Flash takes the batch flattened, padding-free, in every layout.
  eager    sdpa_mask's bool mask turned into a float mask [micro_batch, 1, L, L] in the embeddings' dtype
           (masking_utils.eager_mask), packed or not; the scores are [heads, L, L] either way.

The model-level mask is a local of the model's forward: freed before the LM head unless gradient checkpointing
keeps it, which it does (GradientCheckpointingLayer passes it to the checkpointed call, which holds its arguments
until that layer's backward).

[masking] transformers/masking_utils.py (create_causal_mask, sdpa_mask, eager_mask, find_packed_sequence_indices)
[sdpa]    transformers/integrations/sdpa_attention.py (use_gqa_in_sdpa, repeat_kv); torch's
          scaled_dot_product_attention (convert_boolean_attn_mask), checked by tests/estimate/test_layout.py
          against the tensors a real forward allocates.
"""

from __future__ import annotations

from contextlib import contextmanager

from ftopt.spec import Attention, Batching, Combination, ModelSpec, TrainingSetup
from ftopt.spec.policy import Storage

BOOL_BYTES = 1  # torch.bool


def gets_mask(setup: TrainingSetup) -> bool:
    """True when the batch makes transformers build an explicit mask rather than rely on `is_causal` [masking]:
    packed rows, and padded ones wherever a row can be shorter than the longest (see the module docstring)."""
    b = setup.batching
    return b in (Batching.PACKED, Batching.PADDED_MAX) or (b is Batching.PADDED and setup.micro_batch > 1)


def sdpa_gets_mask(setup: TrainingSetup, combo: Combination) -> bool:
    """True when SDPA is handed an explicit mask (the module docstring's `sdpa` and `padded` rows) [masking]."""
    return combo.attn is Attention.SDPA and gets_mask(setup)


def model_mask_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage) -> int:
    """The model-level mask, counted where it outlives the forward: under gradient checkpointing, where every
    checkpointed layer keeps it as an input until backward (the loss moment and the recompute moment both hold it;
    see the module docstring) [masking]. sdpa given a mask (packing or padding, or always: Falcon's
    create_causal_mask(allow_is_causal_skip=False), ModelSpec.layout.sdpa_always_masked): bool
    [micro_batch, 1, L, L]; eager, packed or not: float [micro_batch, 1, L, L] in the embeddings' dtype (the
    residual stream's). What a masked SDPA call keeps per layer: estimate/attention_saved.py."""
    if not combo.gc:
        return 0
    if combo.attn is Attention.EAGER:
        return setup.micro_batch * setup.seq_len**2 * st.resid_bytes
    always = model.layout.sdpa_always_masked and combo.attn is Attention.SDPA
    return setup.micro_batch * setup.seq_len**2 * BOOL_BYTES if always or sdpa_gets_mask(setup, combo) else 0


# ---- the same layouts as the traced step feeds them (torch imported inside: the formulas above need none) ----
def step_inputs(setup: TrainingSetup, combo: Combination, device: str) -> dict:
    """One micro-batch in the layout `ftopt train`'s collator gives the model (ftopt.train.sft; the traced step):
    flash: the micro-batch flattened into one row [1, micro_batch x seq_len]; packed rows for sdpa/eager: rows of
    two documents each, position ids restarting at the second, no attention mask; padded rows: the 0/1 attention
    mask (a fake tensor has no values, so transformers materializes the mask as for a real padded batch, which
    `gets_mask` says exists); otherwise plain causal rows."""
    import torch

    mb, s = setup.micro_batch, setup.seq_len
    if combo.attn is Attention.FLASH:
        mb, s = 1, mb * s
    ids = torch.zeros((mb, s), dtype=torch.long, device=device)
    inputs = {"input_ids": ids, "labels": ids}
    if setup.packing and combo.attn is not Attention.FLASH:
        first = s - s // 2  # two documents per row; one row of one token cannot restart
        pos = torch.cat([torch.arange(first), torch.arange(s - first)]).to(device)
        inputs["position_ids"] = pos.repeat(mb, 1)
    elif combo.attn is not Attention.FLASH and not setup.packing and gets_mask(setup):
        inputs["attention_mask"] = torch.ones((mb, s), dtype=torch.long, device=device)
    return inputs


@contextmanager
def packed_detection(packed: bool):
    """Let transformers see the layout the real batch has. masking_utils.find_packed_sequence_indices decides from
    the position ids' values whether rows hold several documents; FakeTensors have no values, so under tracing it
    always answers "packed", and an unpacked SDPA batch would be traced with a materialized mask and repeated k/v
    (above) that the real run, whose position ids never restart, does not have. For unpacked batches
    it answers what it answers for them on real tensors: None."""
    if packed:
        yield
        return
    from transformers import masking_utils

    real = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = real


def kv_cache_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, start: bool) -> int:
    """The KV cache the kept outputs hold (TrainingSetup.kv_cache) [cache], beyond what attention saves.
    transformers' DynamicCache keeps each layer's keys (after RoPE) and values un-repeated, 2 x kv_dim per token
    per layer in the activation dtype. `start` (the start of backward): attention saves those same tensors unless
    repeat_kv copied them (a masked SDPA call, eager), so the cache adds only where they were repeated. After
    backward it is the only holder: the whole cache, through the step and the next forward. Under gradient
    checkpointing transformers builds no cache in training (utils/generic.py merge_with_config_defaults).

    [cache] transformers/cache_utils.py DynamicLayer.update (the first update stores the tensors themselves);
            models/llama/modeling_llama.py LlamaModel.forward (DynamicCache when use_cache); the published
            PEFT rows' memory_allocated after each step fits logits plus this cache, not logits alone
            (docs/accuracy.md "PEFT MetaMathQA")."""
    if not setup.kv_cache or combo.gc:
        return 0
    cache = 2 * model.num_layers * model.kv_dim * setup.tokens_per_micro_batch * st.act_bytes
    repeated = model.q_dim != model.kv_dim and (sdpa_gets_mask(setup, combo) or combo.attn is Attention.EAGER)
    return cache if repeated or not start else 0
