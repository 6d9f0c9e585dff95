"""The optimizer a traced step runs: torch AdamW with the run's kernel, or a storage stand-in for bitsandbytes."""

from __future__ import annotations

import torch

from ftopt.estimate.quant import MIN_8BIT_SIZE, OPTIM_BLOCK, PAGED_MIN_ELEMENTS, bnb_step_temp_bytes
from ftopt.spec import AdamWKernel, Combination, ModelSpec, Optim, TrainingSetup


class _BnbAdamWStandIn:
    """bitsandbytes AdamW's states as Optimizer2State.init_state allocates them (estimate/quant.py [8bit-opt]),
    without its update: the bitsandbytes step reads scalars back from the device (`.item()`), which fake
    tensors cannot answer, and its fake update kernel allocates nothing. Its CPU temporaries are added from
    quant.bnb_step_temp_bytes."""

    def __init__(
        self, model: torch.nn.Module, params: list, combo: Combination, step_temp_bytes: int, on_gpu: bool, tag
    ):
        self.tag = tag  # tracker.retag: the states are optimizer states from their creation on
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        self.params, self.combo, self.state, self.step_temp_bytes = params, combo, {}, step_temp_bytes
        # paged states of large tensors live in CUDA unified memory, outside the allocator [paged]: kept on meta
        self._paged = combo.optim.paged and on_gpu
        self._eight_bit = {
            id(p): combo.optim.eight_bit and id(p) not in embeddings and p.numel() >= MIN_8BIT_SIZE for p in params
        }

    def step(self) -> None:
        for p in self.params:
            if p in self.state:
                continue
            dev = "meta" if self._paged and p.numel() >= PAGED_MIN_ELEMENTS else p.device
            dtype = torch.uint8 if self._eight_bit[id(p)] else torch.float32
            self.state[p] = {
                "state1": torch.zeros(p.shape, dtype=dtype, device=dev),
                "state2": torch.zeros(p.shape, dtype=dtype, device=dev),
            }
            if self._eight_bit[id(p)]:
                blocks = -(-p.numel() // OPTIM_BLOCK)
                self.state[p].update(absmax1=torch.zeros(blocks, device=dev), absmax2=torch.zeros(blocks, device=dev))
            for v in self.state[p].values():
                if v.device.type != "meta":
                    self.tag(v.untyped_storage(), "optimizer_states")
        if self.step_temp_bytes:  # the CPU kernels' fp32 working copies of the largest tensor [bnb-cpu]
            device = self.params[0].device
            temp = torch.empty(self.step_temp_bytes, dtype=torch.uint8, device=device)
            del temp

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def traced_optimizer(
    model: torch.nn.Module, params: list, spec: ModelSpec, combo: Combination, setup: TrainingSetup, on_gpu: bool, tag
):
    """The optimizer of the run: torch AdamW with the setup's kernel, or bitsandbytes AdamW (Trainer keeps 32-bit
    states for every nn.Embedding weight, Trainer.create_optimizer) as a storage stand-in. The kernel is named, not
    left to torch's default: on the trace's CPU tensors torch would pick the per-tensor loop, whose temporaries
    are one tensor's, where CUDA picks foreach, whose _foreach_sqrt copies every second moment at once
    (spec.training.AdamWKernel)."""
    if combo.optim is Optim.ADAMW:
        fused = setup.adamw_kernel is AdamWKernel.FUSED
        return torch.optim.AdamW(params, lr=1e-4, fused=fused, foreach=not fused)
    return _BnbAdamWStandIn(model, params, combo, bnb_step_temp_bytes(spec, combo, on_gpu), on_gpu, tag)
