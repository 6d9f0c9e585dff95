"""Traced estimator: run the real training step under FakeTensorMode and count live bytes, without allocating.

What runs is what `ftopt train` runs: the transformers model from its config with PEFT LoRA, gradient
checkpointing and the attention implementation applied by `modeling.build_model`, then Hugging Face Trainer's
step — forward with labels (the model's own loss), backward, gradient clipping, fused AdamW step, zero_grad —
twice, so the second step sees the optimizer states. Every tensor is a FakeTensor on the target device; a
TorchDispatchMode records each new storage with the phase that created it and frees it when its storage dies
(estimate/trace_storage.py).

Engines: for Trainer alone (ZeRO 0) the trace is the whole story. For DeepSpeed, the trace covers what DeepSpeed
does not change — activations, logits/loss tensors, temporaries and the gradients as produced in backward — and
the partitioned states (16-bit weights, fp32 master, Adam states, gradient partition, buckets) come from the ZeRO
formulas in `analytic.zero_states`. Gradients follow the engine (_traced_gradient_share): ZeRO-3's gradient
partition is a resident buffer from the formulas; ZeRO-2's partition is allocated in the trace at the first gradient
of a backward, beside the newest unreduced gradient; with optimizer offload a rank keeps 1/N of them.

Layers are identical, so we trace 2 and 3 layers and extrapolate each category linearly to the real count,
moment by moment (forward, loss, backward through the head, the layers and the embedding, optimizer step): the
moment that peaks at 2 layers need not be the one that peaks at 24 (tests check this equals a full trace).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedFakeTensorException,
    UnsupportedOperatorException,
)

from ftopt.estimate import activations, analytic, autocast, dropout, layout, trace_cache
from ftopt.estimate.allocator import Replay
from ftopt.estimate.quant import bnb_optimizer_bytes, quantized_weight_bytes
from ftopt.estimate.result import MemoryBreakdown
from ftopt.estimate.trace_cache import TraceResult
from ftopt.estimate.trace_optimizer import traced_optimizer
from ftopt.estimate.trace_storage import StorageMode, Tracker, rank_bytes
from ftopt.spec import AdapterDtype, Combination, ModelSpec, Offload, Precision, Quant, TrainingSetup
from ftopt.spec.errors import FtoptError, TraceUnavailable
from ftopt.spec.policy import Storage, storage
from ftopt.spec.units import ceil_div

# What a model's own code can raise under FakeTensorMode when the tracer cannot follow it, and nothing else: an
# operator with no fake or meta kernel (UnsupportedOperatorException, or NotImplementedError from the dispatcher),
# output whose shape or value depends on data (DynamicOutputShapeException, DataDependentOutputException: `.item()`,
# `nonzero`), and an input the fake mode refuses (UnsupportedFakeTensorException); torch._subclasses.fake_tensor.
# The estimate then falls back to the formulas with a visible warning (Estimate.trace_fallback). Any other error
# is a defect in ftopt and propagates.
TRACE_LIMITS: tuple[type[Exception], ...] = (
    UnsupportedOperatorException,
    DynamicOutputShapeException,
    DataDependentOutputException,
    UnsupportedFakeTensorException,
    NotImplementedError,
)

CUDA_ALLOC_GRANULARITY = 512  # the CUDA caching allocator rounds every block up to 512 bytes

# the trace's moments in the analytic estimator's words (estimate.result: EstimateResult.peak_phase)
PHASE_NAMES = {
    "forward": "forward/backward",
    "head": "forward/backward",
    "backward": "forward/backward",
    "backward-layers": "forward/backward",
    "backward-embed": "end of backward",
    "step": "optimizer step",
    "setup": "model build",
}


def _materialize(model: torch.nn.Module, device: str) -> None:
    """Replace meta parameters and buffers with fake tensors on `device`, keeping ties (same Parameter object)."""
    memo: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad
                )
            mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype, device=device)
                mod._buffers[name] = memo[id(b)]


@contextmanager
def _without_hf_zero3():
    """Build the traced model outside Hugging Face's ZeRO-3 mode. Inside a ZeRO-3 process (any caller; ftopt's own
    worker now predicts before its Trainer exists) transformers' global DeepSpeed config makes from_config enter
    deepspeed.zero.Init, a collective that one rank alone never completes: it failed or hung, and the traced
    prediction fell back to the formulas. The config is restored afterwards (transformers.integrations.deepspeed
    set/unset_hf_deepspeed_config; the weak reference is read directly, transformers has no getter for the object)."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_ds.set_hf_deepspeed_config(config)


def _zero2_partition_tracked(combo: Combination) -> bool:
    """ZeRO-2 on the device (no optimizer offload): its gradient partition is modelled in the trace (Tracker)."""
    return combo.zero == 2 and combo.offload is Offload.NONE


def _traced_gradient_share(setup: TrainingSetup, combo: Combination) -> float:
    """Share of the traced gradients a rank holds: none under ZeRO-3 without offload, whose gradient partition is
    a resident buffer added from the ZeRO formulas in every phase (analytic.zero3_gradient_buffer); under ZeRO-2
    the newest, unreduced gradient in full (the partition is tracked, Tracker.on_grad); 1/N with offload."""
    if analytic.zero3_gradient_buffer(combo):
        return 0.0
    if _zero2_partition_tracked(combo):
        return 1.0
    return 1.0 / setup.world_size if combo.zero >= 2 else 1.0


def _engine_view(combo: Combination) -> Combination:
    """The combination as the engine's module computes: DeepSpeed casts the whole module to its 16-bit dtype at
    initialization (runtime/engine.py DeepSpeedEngine._configure_distributed_model: module.bfloat16()/.half()),
    the LoRA adapters PEFT made fp32 included, so the traced model has 16-bit adapters and no input casts
    (policy.storage's DeepSpeed rows). A quantized base keeps PEFT's fp32 adapters (Combination's rule)."""
    if combo.uses_deepspeed and combo.lora and combo.quant is Quant.NONE:
        return combo.model_copy(update={"adapter_dtype": AdapterDtype.BASE})
    return combo


def _trace(spec: ModelSpec, setup: TrainingSetup, combo: Combination, num_layers: int, device: str) -> TraceResult:
    """The trace of `num_layers` layers, run once per configuration (ftopt.estimate.trace_cache). The GPU count
    enters only through the rank's gradient share and ZeRO-2's partition, so a trace is shared across GPU counts
    wherever those agree (plain data parallel, ZeRO-1, ZeRO-3, FSDP2's one-process step)."""
    world = (_traced_gradient_share(setup, combo), setup.world_size if _zero2_partition_tracked(combo) else 0)
    k = trace_cache.key(spec, setup, combo, num_layers, f"{device}:{torch.cuda.is_available()}", world)
    hit = trace_cache.get(k)
    if hit is not None:
        return hit
    t = _run_trace(spec, setup, combo, num_layers, device)
    result = TraceResult(phase_peaks=t.phase_peaks, grad_weight=t.grad_weight, count_states=t.count_states)
    trace_cache.put(k, result)
    return result


def _run_trace(spec: ModelSpec, setup: TrainingSetup, combo: Combination, num_layers: int, device: str) -> Tracker:
    """Trace `num_layers` layers of the step on `device` ("cuda" or "cpu"): the tracker, with each phase's peak."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    st = storage(setup.precision, combo)
    on_gpu = device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        # A CPU-only torch cannot dispatch even fake CUDA kernels (sdpa/autocast query the CUDA runtime). The CPU
        # path saves the same tensors for these models, dropout excepted, which runs as on the GPU
        # (dropout.gpu_dropout); the CUDA allocator's 512-byte rounding is still applied.
        device = "cpu"
    tracker = Tracker(
        grad_weight=_traced_gradient_share(setup, combo),
        count_states=not combo.uses_deepspeed,
        granularity=CUDA_ALLOC_GRANULARITY if on_gpu else 1,
    )
    if on_gpu:
        tracker.replay = Replay(expandable=setup.expandable_segments)
    model = _build_on_meta(spec, combo, setup, num_layers)
    with (
        FakeTensorMode(allow_non_fake_inputs=True),
        layout.packed_detection(setup.packing),
        dropout.gpu_dropout(on_gpu),
    ):
        _materialize(model, device)
        params = _instrument(model, setup, combo, st, tracker)
        opt = (
            None
            if combo.uses_deepspeed  # DeepSpeed's optimizer states come from the ZeRO formulas
            else traced_optimizer(model, params, spec, combo, setup, on_gpu, tracker.retag)
        )
        inputs = layout.step_inputs(setup, combo, device)
        if setup.kv_cache and not combo.gc:  # build_model turns the cache off; the loop traced here has it on
            inputs["use_cache"] = True
        # the run's compute dtype: an fp16 base under a bf16 autocast would be cast to bf16 in every matmul
        half = torch.float16 if setup.precision is Precision.FP16_MIXED else torch.bfloat16
        autocast = torch.autocast(device_type=device, dtype=half, enabled=st.autocast)
        with StorageMode(tracker):
            _run_steps(model, inputs, autocast, params, opt, setup, tracker)
    return tracker


def _build_on_meta(spec: ModelSpec, combo: Combination, setup: TrainingSetup, num_layers: int) -> torch.nn.Module:
    """The model `ftopt train` builds, `num_layers` deep, on the meta device (no memory) as the engine's module
    computes (_engine_view); quantized bases get storage-equivalent stand-ins for the bitsandbytes linears
    (model.quantize.stand_in_linears)."""
    from ftopt.model.build import build_model
    from ftopt.model.quantize import stand_in_linears

    with _without_hf_zero3():
        return build_model(
            spec,
            _engine_view(combo),
            setup.precision,
            device="meta",
            num_layers=num_layers,
            quantize_linears=partial(stand_in_linears, storage_bytes=quantized_weight_bytes),
        )


def _instrument(
    model: torch.nn.Module, setup: TrainingSetup, combo: Combination, st: Storage, tracker: Tracker
) -> list[torch.nn.Parameter]:
    """Count the weights and hook the phase changes into the tracker; returns the trainable parameters. Phases:
    each gradient as it is accumulated, the LM head's forward (and backward leaving it), backward reaching the
    embedding."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in model.parameters():
        tracker.add(p.untyped_storage(), "weights")
    if _zero2_partition_tracked(combo):  # the rank's share of the gradients in the model dtype, bytes
        tracker.zero2_partition_bytes = ceil_div(sum(p.numel() for p in params) * st.grad, setup.world_size)
    for p in params:
        p.register_post_accumulate_grad_hook(lambda q: tracker.on_grad(q.grad.untyped_storage()))
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: tracker.enter_head(args[0]))
    model.get_input_embeddings().register_forward_hook(
        lambda _m, _a, out: tracker.mark_when_reached(out, "backward-embed")
    )
    return params


def _run_steps(
    model: torch.nn.Module,
    inputs: dict,
    autocast: torch.autocast,
    params: list[torch.nn.Parameter],
    opt: torch.optim.Optimizer | None,
    setup: TrainingSetup,
    tracker: Tracker,
) -> None:
    """Hugging Face Trainer's step twice, so the second sees the optimizer states: `grad_accum` forward and
    backward passes (the model's own loss, scaled by 1/grad_accum), then the optimizer step. One scope for both
    steps: a loop that keeps `outputs` holds its logits through backward, the step and the next forward, until
    that forward returns."""
    for _step in range(2):
        for _micro in range(setup.grad_accum):
            tracker.phase = "forward"
            with autocast:
                outputs = model(**inputs)
                loss = outputs.loss / setup.grad_accum
            if not setup.keeps_outputs:
                outputs = None  # Trainer's compute_loss returns the loss alone
            tracker.phase = "backward"
            loss.backward()
            del loss
        tracker.phase = "step"
        _optimizer_step(params, opt, tracker)
        tracker.end_step()
        tracker.check_peak()


def _optimizer_step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer | None, tracker: Tracker) -> None:
    """Gradient clipping, the optimizer's step (its new states retagged as optimizer states) and zero_grad; under
    DeepSpeed (`opt` None) only the gradients are dropped, its states being the ZeRO formulas'."""
    torch.nn.utils.clip_grad_norm_(params, 1.0)  # Trainer's max_grad_norm=1.0
    if opt is None:
        for p in params:
            p.grad = None
        return
    opt.step()
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                tracker.retag(v.untyped_storage(), "optimizer_states")
    opt.zero_grad(set_to_none=True)


_SNAPSHOT_TO_BREAKDOWN = (
    "weights",
    "gradients",
    "optimizer_states",
    "activations",
    "logits_loss",
    "temporaries",
    "grad_partition",
)


def _extrapolate(
    t1: TraceResult,
    t2: TraceResult,
    layers: tuple[int, int],
    num_layers: int,
    embed_excess: int = 0,
    phases: frozenset[str] | None = None,
) -> tuple[dict, str]:
    """Each phase's peak snapshot extrapolated linearly from `layers` to `num_layers` (a moment's bytes grow by
    one layer's worth per layer); the model's peak is the largest extrapolated moment, which need not be the
    phase where the shallow traces peaked (e.g. a large tied embedding dominates 2 layers, activations 24).
    `embed_excess`: bytes the trace holds at the embedding's gradient that a real run does not
    (autocast.tied_grad_summed_in_place); one trace of the full depth is passed as t1 = t2. `phases`: only these
    compete for the peak, by their activation side (activations, logits/loss, temporaries: the part a sharding
    engine of its own, ftopt.estimate.fsdp, adds its terms to); None = all, by the rank's bytes
    (trace_storage.rank_bytes)."""
    (l1, l2), best = layers, (float("-inf"), {}, "")
    for phase in t1.phase_peaks.keys() & t2.phase_peaks.keys() & (phases or t1.phase_peaks.keys()):
        s1, s2 = t1.phase_peaks[phase][1], t2.phase_peaks[phase][1]
        per_cat = {
            k: s1.get(k, 0) + (num_layers - l1) * (s2.get(k, 0) - s1.get(k, 0)) / max(1, l2 - l1)
            for k in _SNAPSHOT_TO_BREAKDOWN
        }
        if phase == "backward-embed":
            per_cat["temporaries"] -= embed_excess
        metric = (
            rank_bytes(per_cat, t1.grad_weight, t1.count_states)
            if phases is None
            else per_cat["activations"] + per_cat["logits_loss"] + per_cat["temporaries"]
        )
        if metric > best[0]:
            best = (metric, per_cat, phase)
    return best[1], best[2]


def traced_memory(
    spec: ModelSpec,
    setup: TrainingSetup,
    combo: Combination,
    target: str = "cuda",
    layers: tuple[int, int] | None = (2, 3),
    phases: frozenset[str] | None = None,
) -> tuple[MemoryBreakdown, str, int]:
    """(breakdown at the peak, phase, host RAM per node) per GPU, from a trace of 2 and 3 layers extrapolated to
    the model's depth (`layers=None` traces the full depth). `phases`: see _extrapolate (ftopt.estimate.fsdp)."""
    st = storage(setup.precision, combo)
    excess = (
        activations.tied_embedding_grad_bytes(spec, combo, st, 1)
        if autocast.tied_grad_summed_in_place(spec, combo, st)
        else 0
    )
    try:
        shallow = layers is None or spec.num_layers <= layers[1]
        if shallow and (phases is None or spec.num_layers < 2):
            t = _trace(spec, setup, combo, spec.num_layers, target)
            per_cat, phase = _extrapolate(t, t, (spec.num_layers,) * 2, spec.num_layers, excess)
        else:
            depths = (spec.num_layers - 1, spec.num_layers) if shallow else layers  # phases over a shallow model
            traces = [_trace(spec, setup, combo, n, target) for n in depths]
            per_cat, phase = _extrapolate(*traces, depths, spec.num_layers, excess, phases)
    except TraceUnavailable:
        raise
    except FtoptError as e:  # e.g. an attention kernel the family lacks; input errors resurface in the analytic path
        raise TraceUnavailable(
            f"the traced estimator could not run {spec.family}: {e} This estimate is analytic.", "FtoptError"
        ) from None
    except TRACE_LIMITS as e:  # model code the fake tensors cannot run: say so in one line; anything else is a bug
        raise TraceUnavailable(
            f"the traced estimator could not run {spec.family} ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:160]}); this estimate is analytic",
            type(e).__name__,
        ) from None
    bd = {k: int(round(v)) for k, v in per_cat.items()}
    partition = bd.pop("grad_partition")
    if combo.uses_deepspeed:
        s = analytic.zero_states(spec, setup, combo, st)
        bd["gradients"] = int(round(bd["gradients"] * _traced_gradient_share(setup, combo))) + partition
        if analytic.zero3_gradient_buffer(combo):
            bd["gradients"] = s.grads
        bd.update(weights=s.weights, optimizer_states=s.optim)
        extra = dict(master_weights=s.master, engine_buffers=s.buffers)
        cpu = s.cpu_bytes * setup.gpus_per_node
    else:  # plain DDP: its gradient buckets come on top; paged optimizer states page to host RAM [paged]
        extra = dict(engine_buffers=analytic.zero_states(spec, setup, combo, st).buffers)
        cpu = bnb_optimizer_bytes(spec, combo, on_gpu=target == "cuda")[1] * setup.gpus_per_node
    return MemoryBreakdown(**bd, **extra), PHASE_NAMES.get(phase, "forward/backward"), cpu
