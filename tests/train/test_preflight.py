"""Device checks before anything loads (train/preflight.py), with a pretend GPU on CPU machines, and the CUDA-only
paths on a real GPU (marked `gpu`, skipped without one)."""

from types import SimpleNamespace

import pytest
import torch

from ftopt.planner import resolve
from ftopt.spec import load_hardware
from ftopt.spec.device import detect_hardware, preset_for_device
from ftopt.spec.errors import FtoptError
from ftopt.train.preflight import check_devices


def _spec(**combo_and_setup):
    hw = load_hardware("a100-80g")
    setup_keys = {"precision", "gpus_per_node"}
    setup = resolve.setup(hw, **{k: v for k, v in combo_and_setup.items() if k in setup_keys})
    combo = resolve.combination(**{k: v for k, v in combo_and_setup.items() if k not in setup_keys})
    return resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), setup, combo)


@pytest.fixture
def v100(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: SimpleNamespace(total_memory=34089205760))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


def test_v100_refuses_bf16_and_flash_in_one_line(v100):
    with pytest.raises(FtoptError, match="cannot run bf16"):
        check_devices(_spec(precision="bf16-mixed"))
    with pytest.raises(FtoptError, match="compute capability 8.0"):
        check_devices(_spec(precision="fp16-mixed", attn="flash"))
    check_devices(_spec(precision="fp16-mixed", attn="sdpa"))  # what a V100 can run passes
    assert detect_hardware() == "v100-32g"


GIB = 2**30


@pytest.mark.parametrize(
    "name, memory, preset",
    [
        ("Tesla V100-PCIE-16GB", 16_944_988_160, "v100-16g"),  # was v100-32g: the substring "V100"
        ("Tesla V100-SXM2-32GB", 34_089_205_760, "v100-32g"),
        ("NVIDIA L40", 48 * GIB, None),  # was l4: "L4" is in "L40"
        ("NVIDIA L4", 23 * GIB, "l4"),
        ("NVIDIA L40S", 48 * GIB, "l40s"),
        ("NVIDIA GH200 480GB", 95 * GIB, None),  # was h200: "H200" is in "GH200"
        ("NVIDIA H200", 140 * GIB, "h200"),
        ("NVIDIA A100 80GB PCIe", int(79.2 * GIB), "a100-80g"),
        ("NVIDIA A100-PCIE-40GB", int(39.4 * GIB), "a100-40g"),
        ("NVIDIA H100 NVL", int(93.1 * GIB), None),  # 94 GB: not the 80 GB preset's memory
        ("NVIDIA GeForce RTX 4090", int(23.6 * GIB), "rtx4090"),
        ("NVIDIA RTX A6000", int(47.5 * GIB), "rtx-a6000"),
        ("Tesla T4", int(14.6 * GIB), "t4"),
    ],
)
def test_detection_reads_the_exact_model_and_its_memory(monkeypatch, name, memory, preset):
    assert preset_for_device(name, memory) == preset
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: SimpleNamespace(total_memory=memory))
    assert detect_hardware() == preset


def test_more_gpus_than_the_machine_has(v100):
    with pytest.raises(FtoptError, match="has 8 CUDA GPU"):
        check_devices(_spec(precision="fp16-mixed", gpus_per_node=16))


def test_cpu_refuses_flash_and_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kw, frag in (
        (dict(attn="flash"), "needs a CUDA GPU"),
        (dict(precision="fp16-mixed"), "fp16-mixed needs"),
        # every rank failed in a RuntimeError traceback ("Cannot access accelerator device") as it sharded
        (dict(fsdp="full", offload="all", gpus_per_node=2), "CPUOffloadPolicy.*no CUDA GPU"),
    ):
        with pytest.raises(FtoptError, match=frag):
            check_devices(_spec(**kw))
    assert detect_hardware() == "cpu"


@pytest.mark.gpu
def test_step_time_includes_queued_kernels():
    """Without a synchronize the recorder would time only the launch of this ~100 ms matmul chain."""
    from ftopt.train.recorder import StepRecorder

    dev = torch.device("cuda")
    a = torch.randn(8192, 8192, device=dev)
    rec = StepRecorder(None, dev, 0)
    rec.begin(0)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a = a @ a / 8192
    end.record()
    r = rec.end(1, 10)
    assert r["seconds"] >= 0.9 * start.elapsed_time(end) / 1000


@pytest.mark.gpu
def test_training_peak_is_read_before_evaluation():
    from ftopt.train.callbacks import TrainingPeak

    dev = torch.device("cuda")
    peak = TrainingPeak(dev)
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)  # the training phase: 256 MiB
    del x
    peak.read()
    y = torch.empty(1024 * 2**20, dtype=torch.uint8, device=dev)  # evaluation allocates more afterwards
    del y
    peak.read()
    assert 256 * 2**20 <= peak.allocated_bytes < 1024 * 2**20 and peak.device_used_bytes > peak.reserved_bytes * 0.9


@pytest.mark.gpu
def test_fp16_mixed_lora_base_is_fp16_on_the_gpu():
    from ftopt.model.build import build_model
    from ftopt.spec import Combination, Precision, load_model

    model = build_model(load_model("tiny-llama"), Combination(lora_r=4), Precision.FP16_MIXED, device="cuda")
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base} == {torch.float16}
