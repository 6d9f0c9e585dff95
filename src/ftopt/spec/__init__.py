"""Typed, validated descriptions of what is trained, on what, and how."""

from ftopt.spec.combination import (
    ALL_LINEAR,
    AdapterDtype,
    Attention,
    Combination,
    Engine,
    Fsdp,
    Offload,
    Optim,
    QloraRecipe,
    Quant,
)
from ftopt.spec.hardware import HardwareSpec, hardware_names, load_hardware
from ftopt.spec.hf_config import from_hf_config, load_model, preset_names
from ftopt.spec.model import Branch, LayerLayout, Linear, LinearGroup, MlpKind, ModelSpec, NormKind, SoftmaxDtype
from ftopt.spec.production import DEFAULT_CURRENCY, CurrencyCode, ProductionOptions
from ftopt.spec.run import DataSpec, LrSchedule, ModelRef, OutputSpec, ReportTo, RunSpec, Schedule
from ftopt.spec.training import (
    CPU_DEFAULTS,
    DEFAULT_HEADROOM,
    AdamWKernel,
    Batching,
    Precision,
    TrainingSetup,
    default_precision,
)

__all__ = [
    "ALL_LINEAR",
    "AdamWKernel",
    "Batching",
    "CPU_DEFAULTS",
    "DEFAULT_HEADROOM",
    "DEFAULT_CURRENCY",
    "CurrencyCode",
    "ProductionOptions",
    "DataSpec",
    "LrSchedule",
    "ModelRef",
    "OutputSpec",
    "ReportTo",
    "RunSpec",
    "Schedule",
    "AdapterDtype",
    "Attention",
    "Combination",
    "Engine",
    "HardwareSpec",
    "Linear",
    "Branch",
    "LayerLayout",
    "LinearGroup",
    "MlpKind",
    "ModelSpec",
    "NormKind",
    "SoftmaxDtype",
    "Fsdp",
    "Offload",
    "Optim",
    "Quant",
    "QloraRecipe",
    "Precision",
    "TrainingSetup",
    "default_precision",
    "from_hf_config",
    "hardware_names",
    "load_hardware",
    "load_model",
    "preset_names",
]
