"""Which hardware preset this machine's GPU is: the default hardware for `train`, and for `estimate`/`plan` run on
the GPU they plan for. A device fact, read from torch.cuda; the checks on what the device can run live in
ftopt.train.preflight."""

from __future__ import annotations

# torch.cuda.get_device_name() model -> the presets of that exact model (after the vendor words; "RTX" names take
# two words). The device's total memory picks among them: one model ships with several memory sizes, and a model
# with no preset (GH200, L40, H100 NVL's 94 GB) matches nothing rather than a preset whose name it contains.
_MODEL_PRESETS = {
    "H200": ("h200",),
    "H100": ("h100-80g",),
    "A100": ("a100-40g", "a100-80g"),
    "L40S": ("l40s",),
    "RTX A6000": ("rtx-a6000",),
    "L4": ("l4",),
    "A10G": ("a10g",),
    "RTX 4090": ("rtx4090",),
    "T4": ("t4",),
    "V100": ("v100-16g", "v100-32g"),
}
_VENDOR_WORDS = ("NVIDIA", "Tesla", "GeForce")
# total_memory is what the driver reports: a few percent under the marketed size (an 80 GB A100 reports 79.2 GiB,
# a 16 GB V100 15.8 GiB); the next size up of any model here is at least 1.5x larger.
_MEMORY_TOLERANCE = 0.1


def device_model(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100', 'NVIDIA GeForce RTX 4090' -> 'RTX 4090', 'NVIDIA GH200 480GB' -> 'GH200'."""
    words = [w for w in name.replace("-", " ").split() if w not in _VENDOR_WORDS]
    return " ".join(words[:2]) if words[:1] == ["RTX"] else (words[0] if words else "")


def preset_for_device(name: str, total_memory: int) -> str | None:
    """The hardware preset of a CUDA device from its exact model and total memory; None when none matches."""
    from ftopt.spec import load_hardware

    fits = []
    for preset in _MODEL_PRESETS.get(device_model(name), ()):
        mem = load_hardware(preset).memory_bytes
        if abs(total_memory - mem) <= _MEMORY_TOLERANCE * mem:
            fits.append((abs(total_memory - mem), preset))
    return min(fits)[1] if fits else None


def detect_hardware() -> str | None:
    """The hardware preset for this machine's first GPU ('cpu' without one); None for a GPU we have no preset for."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return preset_for_device(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory)
