"""Which of one decoder layer's tensors need a gradient: autograd records an op, and keeps what its backward needs,
only where one of its inputs requires grad (torch/csrc/autograd/function.h: compute_requires_grad; the generated
backward nodes save an input only for the gradients that are needed, so `mm(a, b)` keeps `b` for a's gradient and
`a` for b's). A matmul whose weight trains keeps its input for the weight's gradient even where that input needs
none: a LoRA lora_A on a frozen path keeps it; a frozen linear then keeps nothing.

Every layer's input needs a gradient but the first layer's in a LoRA run without gradient checkpointing: the
embeddings are frozen, so the first layer reads a tensor made from frozen weights only (with GC, transformers'
enable_input_require_grads marks the embedding output as requiring grad, which ftopt's model builder calls and
non-reentrant checkpointing needs). Whatever of the first layer reads only such tensors keeps nothing: its first
norm(s), the attention when no q/k/v projection is wrapped, a parallel layer's MLP when none of its linears is,
the dropout masks of those paths. estimate/layer_saved.py reads LayerGrads; checked against a real CPU forward's
first layer by tests/estimate/test_saved_tensors.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftopt.spec import Branch, Combination, LinearGroup, ModelSpec
from ftopt.spec.policy import wrapped_linears


@dataclass(frozen=True)
class LayerGrads:
    """Whether each of a layer's tensors needs a gradient (every one, the default: any layer but a LoRA run's first
    without GC). A plain MLP's fc1 output is `gate` (and `up` follows it); a fused projection's views share one."""

    input: bool = True  # the layer's input, the residual stream its first norm(s) read
    q: bool = True  # the attention projections' outputs
    k: bool = True
    v: bool = True
    attn_branch: bool = True  # the output projection's output
    mlp_input: bool = True  # what the MLP's first linears read (its norm's output)
    gate: bool = True  # gate's (fc1's) output
    up: bool = True  # up's output
    mlp_branch: bool = True  # the down projection's output

    @property
    def attention(self) -> bool:
        """The attention's output: it needs a gradient where any of q, k, v does."""
        return self.q or self.k or self.v

    @property
    def mlp_act(self) -> bool:
        """The activation's output (gated: the product) that the down projection reads."""
        return self.gate or self.up

    def reads(self, group: LinearGroup) -> bool:
        """Whether the input a group of linears reads needs a gradient (where not, a dropout on it keeps nothing)."""
        return {
            LinearGroup.ATTN_IN: self.input,
            LinearGroup.ATTN_OUT: self.attention,
            LinearGroup.MLP_IN: self.mlp_input,
            LinearGroup.MLP_OUT: self.mlp_act,
        }[group]

    def dropped(self, branch: Branch) -> bool:
        """Whether what a residual dropout drops needs a gradient (a dropout keeps its mask only then)."""
        if branch is Branch.ATTENTION:
            return self.attn_branch
        return self.mlp_branch or (branch is Branch.BOTH and self.attn_branch)

    def saving_norms(self, model: ModelSpec) -> int:
        """How many of the layer's norms read a tensor that needs a gradient (the others keep nothing). A parallel
        layer's norms all read its input; a sequential layer's read its input and the residual after the attention
        (input + attention branch), gemma2's four also the attention branch and the MLP branch themselves; a
        post-LN layer's (layout.post_norm) the two residual sums."""
        if model.parallel_residual:
            return model.norms_per_layer if self.input else 0
        mid = self.input or self.attn_branch
        if model.layout.post_norm:
            return mid + (mid or self.mlp_branch)
        if model.norms_per_layer == 2:
            return self.input + mid
        return self.input + self.attn_branch + mid + self.mlp_branch


EVERY = LayerGrads()


def first_layer_input_grad(combo: Combination) -> bool:
    """Whether the first layer's input, the embedding output, needs a gradient: a trained embedding (full
    fine-tuning) or GC's enable_input_require_grads (LoRA with GC); not in a LoRA run without GC."""
    return not combo.lora or combo.gc


def first_layer_grads(model: ModelSpec, combo: Combination) -> LayerGrads:
    """LayerGrads of the first layer: EVERY where its input needs a gradient, else each tensor needs one where a
    wrapped linear (its LoRA adapter trains) or a tensor that needs one is on its path."""
    if first_layer_input_grad(combo):
        return EVERY
    wrapped = {lin.name for lin in wrapped_linears(model, combo)}
    names = model.linear_names

    def trains(*roles: str) -> bool:
        return any(names.get(role) in wrapped for role in roles)

    q, k, v = trains("q", "qkv"), trains("k", "qkv"), trains("v", "qkv")
    attn_branch = q or k or v or trains("o")
    mlp_input = False if model.parallel_residual else attn_branch
    gate = mlp_input or trains("gate", "gate_up", "fc1")
    up = gate if "fc1" in names else mlp_input or trains("up", "gate_up")
    mlp_branch = gate or up or trains("down", "fc2")
    return LayerGrads(False, q, k, v, attn_branch, mlp_input, gate, up, mlp_branch)
