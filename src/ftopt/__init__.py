"""ftopt: plan, run and report LLM fine-tuning under GPU memory and time budgets.

The public API (the CLI only wraps it):

    from ftopt import load_model, load_hardware, TrainingSetup, Combination, estimate, plan
"""

from ftopt.errors import FtoptError
from ftopt.estimate import estimate
from ftopt.plan import plan
from ftopt.spec import (
    Attention,
    Combination,
    HardwareSpec,
    ModelSpec,
    Offload,
    Precision,
    TrainingSetup,
    load_hardware,
    load_model,
)

__version__ = "0.1.0"
__all__ = [
    "Attention",
    "Combination",
    "FtoptError",
    "HardwareSpec",
    "ModelSpec",
    "Offload",
    "Precision",
    "TrainingSetup",
    "estimate",
    "load_hardware",
    "load_model",
    "plan",
]
