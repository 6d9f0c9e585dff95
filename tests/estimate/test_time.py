from ftopt.estimate.time import forward_flops_per_token, step_flops, step_time
from ftopt.spec import Combination, TrainingSetup, load_hardware, load_model


def test_forward_is_about_2_flops_per_param_per_token():
    m = load_model("llama-2-7b")
    lin, att = forward_flops_per_token(m, 2048, Combination().attn)
    # linear matmuls = all params except the input embedding table (the LM head runs as a matmul)
    assert lin == 2 * (m.param_count() - m.vocab_size * m.hidden_size - (2 * m.num_layers + 1) * m.hidden_size)
    assert att == 2 * 2 * 2048 * 4096 * 32 * 0.5


def test_backward_costs_and_gc():
    m = load_model("llama-2-7b")
    s = TrainingSetup(seq_len=2048)
    full, full_gc = step_flops(m, s, Combination()), step_flops(m, s, Combination(gc=True))
    lora = step_flops(m, s, Combination(lora_r=16))
    assert abs(full_gc / full - 4 / 3) < 1e-9  # one extra forward on top of 3
    assert 0.6 < lora / full < 0.7  # frozen weights skip the weight-gradient matmul


def test_zero3_and_offload_add_time_across_gpus():
    m, hw = load_model("llama-2-7b"), load_hardware("a100-80g")
    s = TrainingSetup(seq_len=2048, gpus_per_node=8)
    t0 = step_time(m, s, Combination(zero=2), hw).step_seconds
    t3 = step_time(m, s, Combination(zero=3), hw).step_seconds
    toff = step_time(m, s, Combination(zero=3, offload="all"), hw).step_seconds
    assert t0 < t3 < toff


def test_epoch_scales_with_dataset_tokens():
    from ftopt import estimate
    m, hw = load_model("llama-2-7b"), load_hardware("a100-80g")
    a = estimate(m, hw, TrainingSetup(dataset_tokens=10 * 2048), Combination(lora_r=8))
    b = estimate(m, hw, TrainingSetup(dataset_tokens=20 * 2048, epochs=2), Combination(lora_r=8))
    assert b.steps_per_epoch == 2 * a.steps_per_epoch == 20
    assert abs(b.total_seconds - 4 * a.total_seconds) < 1e-9
