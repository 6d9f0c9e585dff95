"""DoRA (PEFT `use_dora`): what its weight norm costs in memory and time, per wrapped linear.

Source: peft 0.21 tuners/lora/dora.py, DoraLinearLayer.forward, run for every wrapped linear in every forward (and
again in GC's recomputation); the DoRA paper (Liu et al. 2024, arXiv 2402.09353, sec. 4.3) detaches the norm, so
nothing of it is saved for backward. Per wrapped linear of in_features i, out_features o, rank r, per forward:
  1. get_lora_weight: x_eye = eye(i) in the adapter dtype, lora_weight = lora_B(lora_A(x_eye)).T (i x o), cast to
     the input's dtype (the adapter's: lora.Linear.forward casts x first). lora_A's weight trains, so its matmul
     saves its input (x_eye, or under autocast the bf16 cast of it) while lora_weight's graph lives: to the end of
     the layer's DoRA forward.
  2. weight = dequantize_module_weight(base).to(x.dtype): a copy unless the base weight has the adapter dtype
     (a quantized base always dequantizes into a new tensor).
  3. get_weight_norm: weight + scaling * lora_weight (two o x i tensors in the adapter dtype at once), then
     torch.linalg.norm over dim 1: o values, detached.
  4. result_dora = (m / ||W + sBA|| - 1) * base_result + (m / ||.||) * lora_result * scaling: the two products
     save base_result (the base layer's output) and lora_result (lora_B's output) for the magnitude's gradient.
     Vanilla LoRA saves neither (its B matmul saves its input only).
Memory follows the storage policy (policy.Storage): adapter dtype `trainable_weight`, base output `frozen_out`,
matmul outputs 16-bit under autocast.
"""

from __future__ import annotations

from ftopt.estimate.result import MemoryBreakdown
from ftopt.spec import Combination, Linear, ModelSpec, Quant
from ftopt.spec.policy import Storage, wrapped_linears


def _wrapped(model: ModelSpec, combo: Combination) -> list[Linear]:
    return wrapped_linears(model, combo) if combo.dora else []


def saved_bytes_per_token(model: ModelSpec, combo: Combination, st: Storage) -> int:
    """Bytes DoRA saves for backward beyond LoRA's, per token per layer (step 4): base_result and lora_result.
    With adapter dropout base_result is DoRA's own F.linear output, in lora_result's dtype (estimate/dropout.py)."""
    lora_out = 2 if st.autocast else st.trainable_weight
    base_out = lora_out if combo.lora_dropout else st.frozen_out
    return sum(lin.out_features * (base_out + lora_out) for lin in _wrapped(model, combo))


def weight_norm_temp_bytes(model: ModelSpec, combo: Combination, st: Storage) -> int:
    """The largest moment of steps 1-3 over the wrapped linears: eye(i) (or its bf16 cast, saved), lora_weight,
    the weight copy and the two o x i tensors of the sum, all in the adapter dtype a."""
    a = st.trainable_weight
    copy = combo.quant is not Quant.NONE or st.frozen_weight != a

    def one(lin: Linear) -> int:
        i, o = lin.in_features, lin.out_features
        eye = i * i * (2 if st.autocast else a)
        return eye + i * o * a * (3 + (1 if copy else 0))

    return max((one(lin) for lin in _wrapped(model, combo)), default=0)


def flops_per_pass(model: ModelSpec, combo: Combination) -> float:
    """Matmul FLOPs of step 1 per layer, per forward pass (independent of the tokens): 2 i i r + 2 i r o."""
    r = combo.lora_r
    return float(sum(2 * lin.in_features * r * (lin.in_features + lin.out_features) for lin in _wrapped(model, combo)))


def norm_bytes_per_pass(model: ModelSpec, combo: Combination, st: Storage) -> float:
    """Memory traffic of steps 2-3 per layer, per forward pass (memory-bound elementwise work over o x i): read the
    base weight and write its copy, write scaling*BA, read both and write the sum, read it for the norm: the base
    weight once at its storage plus 6 passes in the adapter dtype (the eye's i x i write beside them)."""
    a = st.trainable_weight
    return float(
        sum(
            lin.in_features * (lin.out_features * (st.frozen_weight + 6 * a) + lin.in_features * a)
            for lin in _wrapped(model, combo)
        )
    )


def token_bytes_per_pass(model: ModelSpec, combo: Combination) -> float:
    """Memory traffic of step 4 per token per layer, forward and backward together: five elementwise ops over the
    o outputs in fp32 (the magnitude is fp32, so products promote), each reading and writing ~3 x 4 bytes, and
    their gradients in backward as many again."""
    return float(2 * 5 * 12 * sum(lin.out_features for lin in _wrapped(model, combo)))


def peak_candidates(
    static: dict, grads: tuple[int, int], acts: tuple[int, int], gc: bool, temp: int
) -> list[tuple[str, MemoryBreakdown]]:
    """The moments of the weight norm (`temp`, weight_norm_temp_bytes) that can set the peak: in the last layer's
    forward over every saved activation (an upper bound: that layer's later tensors counted), and under GC in the
    recomputation of the first layer, every other layer's gradients present. `grads`: (held during forward, all);
    `acts`: (all saved activations, one layer's)."""
    if not temp:
        return []
    out = [("forward/backward", MemoryBreakdown(**static, gradients=grads[0], activations=acts[0], temporaries=temp))]
    if gc:
        out.append(
            ("forward/backward", MemoryBreakdown(**static, gradients=grads[1], activations=acts[1], temporaries=temp))
        )
    return out
