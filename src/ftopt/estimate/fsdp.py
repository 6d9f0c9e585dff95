"""Per-rank memory of PyTorch FSDP2 (`fully_shard` per decoder layer, then the root; ftopt.train.fsdp_engine).

Every term cites torch 2.13's FSDP2 (torch/distributed/fsdp/_fully_shard/), where it comes from:
  sharded states  _fsdp_param.py FSDPParam._init_sharded_param: each parameter keeps dim-0 shard
                  ceil(dim0 / N) rows in its original dtype (padded_sharded_param = new_zeros(padded size)); the
                  gradient on the sharded DTensor is the same size (foreach_reduce casts the reduce-scatter output
                  to the parameter's dtype); torch.optim.AdamW's exp_avg/exp_avg_sq are per sharded parameter.
  in flight       _fsdp_state.py / _fsdp_param_group.py: a group all-gathers before its forward and, with
                  reshard_after_forward=True, frees the unsharded parameters after it; the next group's all-gather
                  is issued early (implicit prefetch on the all-gather stream, `_prefetch_unshard` in backward), so
                  two layers are unsharded at once, in MixedPrecisionPolicy.param_dtype (the all-gather runs in
                  it). reshard_after_forward=False keeps every layer unsharded from its forward to its backward.
  root            _fully_shard.py: "If None, it is set to True for non-root modules and False for the root" and
                  lazy_init overrides the root's value to False: the root group (embeddings, final norm, LM head)
                  stays unsharded through forward and backward, and reduce-scatters its gradients only when the
                  whole backward ends (its post-backward runs last), so their unsharded gradients live that long.
  reduce-scatter  _fsdp_collectives.py foreach_reduce: an input of sum(padded unsharded grad numel) in
                  reduce_dtype (reduce_scatter_input) plus the 1/N output (reduce_output); the group's unsharded
                  gradients are freed only after the copy-in; FSDPCommContext.reduce_scatter_max_input_buffers=1
                  keeps the previous group's input alive until the next reduce (_fsdp_param_group.post_backward).
                  The group's last gradient outlives the copy-in: foreach_reduce's loop variable `unsharded_grad`
                  (the world_size > 1 loop over the grads) still refers to it until foreach_reduce returns; for the
                  root that is an untied LM head's (root parameters in registration order: embeddings, final norm,
                  LM head). Measured, llama grad-op GC on two ranks: the LM head's 93.75 MiB gradient is freed
                  after the root's reduce-scatter, the embedding's right after the copy-in.
  gloo            CPU runs reduce over gloo (ftopt.train.fsdp_worker), which has no reduce-scatter of its own:
                  ProcessGroupGloo::reduce_scatter_tensor_coalesced (torch/csrc/distributed/c10d/
                  ProcessGroupGloo.cpp) clones the input, all-reduces the clone and copies this rank's chunk out,
                  so each reduce-scatter holds a second copy of its input while it runs. NCCL (GPU runs) reduce-
                  scatters natively, with no clone.
  offload         CPUOffloadPolicy (_fsdp_api.py): sharded parameters, their gradients and the optimizer step stay
                  in host memory; the device holds what is in flight only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftopt.estimate import activations, analytic
from ftopt.estimate.analytic import trainable_params
from ftopt.estimate.result import MemoryBreakdown
from ftopt.spec import AdapterDtype, Combination, Fsdp, ModelSpec, Offload, Precision, TrainingSetup
from ftopt.spec.policy import Storage, storage
from ftopt.spec.units import ceil_div


def mixed(precision: Precision) -> bool:
    """Whether ftopt's FSDP2 engine runs a MixedPrecisionPolicy (ftopt.train.fsdp_engine.shard_model): 16-bit
    param_dtype for compute, fp32 reduce_dtype, no autocast; fp32 and bf16-true run without casts."""
    return precision in (Precision.BF16_MIXED, Precision.FP16_MIXED)


def compute_bytes(precision: Precision, st: Storage, trainable: bool = True) -> int:
    """Bytes per element of the unsharded (all-gathered) parameters, trainable or frozen:
    MixedPrecisionPolicy.param_dtype (16 bits, for every parameter) under bf16/fp16-mixed, else the stored dtype."""
    if mixed(precision):
        return 2
    return st.trainable_weight if trainable else st.frozen_weight


def compute_view(setup: TrainingSetup, combo: Combination) -> tuple[TrainingSetup, Combination]:
    """The single-process step that computes what an FSDP2 rank computes: what both estimators measure the
    activation side of the step on (the sharding terms come from `terms`). Under bf16/fp16-mixed,
    MixedPrecisionPolicy all-gathers every parameter, LoRA adapters included, in 16 bits and runs no autocast
    (_fsdp_param.py FSDPParam.init_dtype_attrs, param_dtype), so a layer computes as a bf16-true layer whose
    adapters have the base's dtype: no autocast weight cache, no fp32 input casts of PEFT's (fp16 traces as bf16,
    the same bytes). Without a policy the ranks compute in the stored dtypes, as a single process does."""
    single = combo.model_copy(update={"fsdp": Fsdp.NONE, "offload": Offload.NONE})
    if not mixed(setup.precision):
        return setup, single
    adapters = AdapterDtype.BASE if combo.lora else AdapterDtype.FP32
    return setup.model_copy(update={"precision": Precision.BF16_TRUE}), single.model_copy(
        update={"adapter_dtype": adapters}
    )


@dataclass(frozen=True)
class FsdpTerms:
    """Bytes per rank of each FSDP2 term (see the module doc for the source of each)."""

    weights: int  # sharded parameters (device; 0 under CPUOffloadPolicy)
    grads: int  # sharded gradients
    optim: int  # AdamW states of the sharded trainable parameters
    layer_unsharded: int  # one decoder layer's all-gathered parameters
    root_unsharded: int  # the root group's all-gathered parameters (embeddings, final norm, LM head)
    layer_rs: int  # one layer's reduce-scatter input (reduce dtype) + its 1/N output
    layer_grad: int  # one layer's unsharded gradients before the copy-in
    root_grads: int  # the root's unsharded gradients, held until backward ends
    head_grad: int  # the LM head's unsharded gradient, the first of backward (full fine-tuning)
    root_grad_shard: int  # the root's share of `grads`, written by its reduce-scatter at the end
    root_rs_input: int  # the root's reduce-scatter input (reduce dtype, padded unsharded size)
    root_last_grad: int  # the root's last unsharded gradient, alive until its reduce-scatter returns
    gloo_clone: int  # 1 on gloo (CPU ranks), 0 on NCCL: reduce-scatter input copies gloo's fallback holds
    host: int  # host bytes per rank (CPUOffloadPolicy)


def terms(
    model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, weights: int, train: int, gloo: bool
) -> FsdpTerms:
    """`weights`: the model's stored bytes unsharded; `train`: trainable parameters; `gloo`: the ranks reduce over
    gloo (CPU) rather than NCCL."""
    n = setup.world_size
    c = compute_bytes(setup.precision, st)  # trainable parameters, unsharded
    base = compute_bytes(setup.precision, st, trainable=not combo.lora)  # the decoder's own parameters, unsharded
    reduce = 4 if mixed(setup.precision) else st.grad  # MixedPrecisionPolicy(reduce_dtype=fp32) under mixed precision
    layer_train = ceil_div(train, model.num_layers) if combo.lora else model.layer_params()
    root_params = model.param_count() - model.num_layers * model.layer_params()
    root_train = 0 if combo.lora else root_params
    w, g, o = ceil_div(weights, n), ceil_div(train * st.grad, n), ceil_div(train * st.optim, n)
    head = 0 if combo.lora else model.vocab_size * (model.embed_dim or model.hidden_size) * c
    host = 0
    if combo.offload is Offload.ALL:
        host, w, g, o = w + g + o, 0, 0, 0
    return FsdpTerms(
        weights=w,
        grads=g,
        optim=o,
        layer_unsharded=model.layer_params() * base + (layer_train * c if combo.lora else 0),
        root_unsharded=root_params * base,
        layer_rs=layer_train * reduce * (2 if gloo else 1) + ceil_div(layer_train * reduce, n),
        layer_grad=layer_train * c,
        root_grads=root_train * c,
        head_grad=head,
        root_grad_shard=ceil_div(root_train * st.grad, n) if not host else 0,
        root_rs_input=root_train * reduce,
        root_last_grad=0 if model.tie_embeddings else head,  # tied: the final norm's, negligible
        gloo_clone=int(gloo),
        host=host,
    )


def memory(
    model: ModelSpec,
    setup: TrainingSetup,
    combo: Combination,
    t: FsdpTerms,
    acts: int,
    one_layer: int,
    logits: int,
    recompute: int = 0,
) -> tuple[str, MemoryBreakdown]:
    """The peak over FSDP2's phases, bytes per rank (measured on two CPU ranks: the start of backward, where the
    backward prefetch all-gathers the last layers while every activation and the loss are alive). `acts`,
    `one_layer`, `logits`: the rank's saved activations, one layer's and the loss's tensors; `recompute`: under GC,
    the activations while the last layer is recomputed (activations.gc_recompute_activation_bytes). On a tie the
    earliest candidate names the phase."""
    static = dict(weights=t.weights, optimizer_states=t.optim)
    layers_in_flight = (2 if combo.fsdp.reshard_after_forward else model.num_layers) * t.layer_unsharded
    candidates = _backward_start_moments(
        t,
        static,
        gc=combo.gc,
        grads_fwd=t.grads if setup.grad_accum > 1 else 0,
        in_flight=layers_in_flight + t.root_unsharded,
        acts=acts,
        one_layer=one_layer,
        logits=logits,
        recompute=recompute,
    )
    candidates += _backward_end_moments(t, static)
    return max(candidates, key=lambda c: c[1].total())


def _backward_start_moments(
    t: FsdpTerms,
    static: dict[str, int],
    *,
    gc: bool,
    grads_fwd: int,
    in_flight: int,
    acts: int,
    one_layer: int,
    logits: int,
    recompute: int,
) -> list[tuple[str, MemoryBreakdown]]:
    """(1) start of backward: activations, loss, the layers in flight (`in_flight`: two under
    reshard_after_forward=True, every layer under False, and the root's unsharded parameters); under GC also the
    last layer's recomputation with the same layers in flight; (2) the last layer's reduce-scatter: its unsharded
    gradients and reduce-scatter buffers (the previous group's input is reclaimed first:
    reduce_scatter_max_input_buffers=1), the LM head's unsharded gradient. `grads_fwd`: the sharded gradients
    kept between micro-batches under gradient accumulation, else 0."""
    return [
        (
            "forward/backward",
            MemoryBreakdown(
                **static, gradients=grads_fwd, activations=acts, logits_loss=logits, engine_buffers=in_flight
            ),
        ),
        (
            "forward/backward",
            MemoryBreakdown(**static, gradients=grads_fwd, activations=recompute, engine_buffers=in_flight),
        ),
        (
            "backward, first reduce-scatter",
            MemoryBreakdown(
                **static,
                gradients=grads_fwd + t.head_grad + t.layer_grad,
                # the last layer's saved tensors are freed by its backward; under GC its recomputation
                activations=acts if gc else max(0, acts - one_layer),
                engine_buffers=in_flight + t.layer_rs,
            ),
        ),
    ]


def _backward_end_moments(t: FsdpTerms, static: dict[str, int]) -> list[tuple[str, MemoryBreakdown]]:
    """(3) the root's copy-in at the end of backward: the root is resharded first (post_backward reshards before
    foreach_reduce), then its unsharded gradients and the reduce-scatter input; (4) the root's reduce-scatter:
    every sharded gradient (the root's output included), the root's last unsharded gradient, the input and, on
    gloo, its clone (measured, llama grad-op GC: the peak, inside gloo's all-reduce); (5) the optimizer step over
    the sharded states."""
    return [
        (
            "end of backward, root copy-in",
            MemoryBreakdown(
                **static, gradients=t.grads - t.root_grad_shard + t.root_grads, engine_buffers=t.root_rs_input
            ),
        ),
        (
            "end of backward, root reduce-scatter",
            MemoryBreakdown(
                **static,
                gradients=t.grads + (t.root_last_grad if t.root_rs_input else 0),
                engine_buffers=t.root_rs_input * (1 + t.gloo_clone),
            ),
        ),
        ("optimizer step", MemoryBreakdown(**static, gradients=t.grads)),
    ]


def collective_bytes(model: ModelSpec, setup: TrainingSetup, combo: Combination, st: Storage, train: int) -> dict:
    """Bytes each rank sends per optimizer step (ring collectives move (N-1)/N of the unsharded size):
    all-gather of every layer in forward, again in backward under reshard_after_forward=True (the root once),
    per micro-batch; reduce-scatter of the trainable gradients in reduce_dtype once per micro-batch (ftopt
    does not skip the sync during accumulation)."""
    n = setup.world_size
    frac = (n - 1) / n if n > 1 else 0.0
    c, base = compute_bytes(setup.precision, st), compute_bytes(setup.precision, st, trainable=not combo.lora)
    layers = model.num_layers * model.layer_params()
    root = model.param_count() - layers
    gathers = ((2 if combo.fsdp.reshard_after_forward else 1) * layers + root) * base
    if combo.lora:
        gathers += (2 if combo.fsdp.reshard_after_forward else 1) * train * c
    reduce = 4 if mixed(setup.precision) else st.grad
    ga = setup.grad_accum
    return {
        "all_gather_bytes": int(gathers * frac) * ga,
        "reduce_scatter_bytes": int(train * reduce * frac) * ga,
        "gathers_per_step": (2 * model.num_layers + 1) * ga,
    }


# The tracer's phases up to the start of backward (estimate/traced.py PHASE_NAMES: "forward/backward"): where the
# activations and the loss peak together, the moment FSDP2's first candidate adds its sharding terms to.
TRACED_PHASES = frozenset({"forward", "head", "backward", "backward-layers"})


def peak(
    model: ModelSpec,
    setup: TrainingSetup,
    combo: Combination,
    traced: MemoryBreakdown | None = None,
    gloo: bool = False,
) -> tuple[MemoryBreakdown, str, int]:
    """(breakdown at the peak, phase, host RAM per node) per rank. Activations and the loss come from the formulas
    (ftopt.estimate.analytic) or, given `traced`, from the traced step, both of the rank's `compute_view`. `gloo`:
    CPU ranks, which reduce over gloo (ftopt.train.fsdp_worker); GPU ranks use NCCL."""
    st = storage(setup.precision, combo)
    view_setup, view = compute_view(setup, combo)
    view_st = storage(view_setup.precision, view)
    acts, one_layer = activations.activation_bytes(model, view_setup, view, view_st, not gloo)
    logits = activations.logits_loss_bytes(model, view_st, setup.tokens_per_micro_batch)
    recompute = activations.gc_recompute_activation_bytes(model, view_setup, view, view_st, not gloo)
    if traced is not None:  # the trace's largest moment, the recomputation's included
        acts, logits, recompute = traced.activations, traced.logits_loss + traced.temporaries, 0
    train = analytic.trainable_params(model, combo)
    single = combo.model_copy(update={"fsdp": Fsdp.NONE, "offload": Offload.NONE})
    weights = analytic.zero_states(model, setup, single, st).weights
    t = terms(model, setup, combo, st, weights, train, gloo)
    phase, bd = memory(model, setup, combo, t, acts, one_layer, logits, recompute)
    return bd, phase, t.host * setup.gpus_per_node


def comm_seconds(
    model: ModelSpec,
    setup: TrainingSetup,
    combo: Combination,
    hw,
    compute_seconds: float,
    bandwidth: float,
    cpu_adam_params_per_s: float,
) -> float:
    """Exposed FSDP2 communication per step: the all-gathers and reduce-scatters (collective_bytes) at the
    per-rank `bandwidth` [NCCL], hidden behind compute as FSDP2 prefetches (the next layer's all-gather runs on
    its own stream during the current layer's compute; reduce-scatters on theirs), so only what exceeds the
    compute, plus the first layer's all-gather that nothing precedes, is exposed. CPUOffloadPolicy adds the
    host link: every all-gather input comes from host memory (H2D copy of the shard), gradients go back (D2H),
    and AdamW steps the shard on the CPU."""
    st = storage(setup.precision, combo)
    train = trainable_params(model, combo)
    seconds = 0.0
    if setup.world_size > 1:
        v = collective_bytes(model, setup, combo, st, train)
        total = (v["all_gather_bytes"] + v["reduce_scatter_bytes"]) / bandwidth
        first = v["all_gather_bytes"] / v["gathers_per_step"] / bandwidth
        seconds += first + max(0.0, total - first - compute_seconds)
    if combo.offload is Offload.ALL:
        n, c = setup.world_size, compute_bytes(setup.precision, st)
        gathers = (2 if combo.fsdp.reshard_after_forward else 1) * setup.grad_accum
        h2d = gathers * model.param_count() / n * c + train / n * st.grad  # shards up, gradient shards down
        seconds += h2d / hw.host_link_bandwidth_bytes_per_s + train / n * setup.gpus_per_node / cpu_adam_params_per_s
    return seconds
