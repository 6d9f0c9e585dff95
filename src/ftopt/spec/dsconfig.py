"""The DeepSpeed config for a run, and the collective timeout every rank uses.

"auto" values are filled by Hugging Face's integration from the TrainingArguments (batch sizes, clipping, bucket
sizes from hidden_size, by the formulas of hf_auto_zero_sizes, which the estimator reads), so nothing is set twice.
What the memory estimator assumes and DeepSpeed would otherwise pick by itself is set explicitly, from the constants
the estimator reads: the gradient-accumulation dtype (policy.storage's gradient bytes) and ZeRO-3's live-parameter
limits (STAGE3_MAX_LIVE_PARAMETERS).
"""

from __future__ import annotations

from ftopt.spec import Offload, Precision, RunSpec
from ftopt.spec.policy import storage

# Collective timeout (torch.distributed / DeepSpeed): a lost rank fails the run instead of hanging it. It bounds one
# collective, not the run: a fine-tune may take days. 30 min covers the slowest collective we know of (gathering a
# 405B model's ZeRO-3 partitions to save it over a slow network).
RANK_TIMEOUT_SECONDS = 1800
# ZeRO-3 keeps gathered parameters live up to this many elements, and releases one not used again within this
# distance: DeepSpeed 0.19's default for both stage3_max_live_parameters and stage3_max_reuse_distance
# (runtime/zero/config.py), which analytic.stage3_live_params assumes; the config sets it, so a DeepSpeed with other
# defaults cannot change the memory under the estimate.
STAGE3_MAX_LIVE_PARAMETERS = 10**9


def hf_auto_zero_sizes(hidden_size: int) -> dict[str, int]:
    """The ZeRO sizes this config leaves "auto", as Hugging Face's integration fills them for a model
    (transformers/integrations/deepspeed.py, HfTrainerDeepSpeedConfig.trainer_config_finalize), in elements:
    the estimator's bucket terms and `ftopt plan --export` read them from here."""
    h = hidden_size
    return {
        "reduce_bucket_size": h * h,
        "stage3_prefetch_bucket_size": int(0.9 * h * h),
        "stage3_param_persistence_threshold": 10 * h,
    }


def deepspeed_config(spec: RunSpec, node_local: bool = False) -> dict:
    """`node_local`: the nodes do not share the output folder, so each keeps its ranks' checkpoint files, named by
    local rank (DeepSpeed's checkpoint.use_node_local_storage)."""
    c = spec.combination
    zero: dict = {"stage": c.zero, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
    if c.zero == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
            stage3_max_live_parameters=STAGE3_MAX_LIVE_PARAMETERS,
            stage3_max_reuse_distance=STAGE3_MAX_LIVE_PARAMETERS,
        )
    if c.offload in (Offload.OPTIMIZER, Offload.ALL):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if c.offload is Offload.ALL:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds: dict = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # the dtype gradients accumulate in between micro-batches: the estimator's gradient bytes (policy.storage)
        "data_types": {"grad_accum_dtype": grad_accum_dtype(spec)},
    }
    if node_local:
        ds["checkpoint"] = {"use_node_local_storage": True}
    if spec.setup.precision is Precision.BF16_MIXED:
        ds["bf16"] = {"enabled": True}
    elif spec.setup.precision is Precision.FP16_MIXED:
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds


def grad_accum_dtype(spec: RunSpec) -> str:
    """DeepSpeed's name for the dtype the estimator gives gradients (policy.storage: the 16-bit model dtype under
    bf16/fp16 mixed precision, fp32 under fp32); DeepSpeed's own default follows the model dtype too, except that
    ZeRO-0/1 bf16 would switch to its BF16_Optimizer with fp32 accumulation if asked for fp32."""
    grad_bytes = storage(spec.setup.precision, spec.combination).grad
    return "fp32" if grad_bytes == 4 else spec.setup.precision.compute_dtype
