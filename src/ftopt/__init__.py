"""ftopt: plan, run and report LLM fine-tuning under GPU memory and time budgets.

The public API (the CLI only wraps it):

    from ftopt import load_model, load_hardware, TrainingSetup, Combination, estimate, plan

Names are exported lazily (PEP 562), so `import ftopt.train.worker` on a training rank loads neither the planner
nor the estimators. `estimate` is the one exception: it is also the name of the subpackage `ftopt.estimate`, and
the import system rebinds a package attribute to a subpackage whenever that subpackage is first imported. Binding
the function here, once the subpackage is loaded, keeps `from ftopt import estimate` the function whatever was
imported before; the subpackage holds formulas only (no torch), so this costs milliseconds.
"""

from importlib import import_module

from ftopt.estimate import estimate

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "FtoptError": "ftopt.spec.errors",
    "plan": "ftopt.planner.plan",
    **{
        name: "ftopt.spec"
        for name in (
            "Attention",
            "Combination",
            "HardwareSpec",
            "ModelSpec",
            "Offload",
            "Precision",
            "TrainingSetup",
            "load_hardware",
            "load_model",
        )
    },
}
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
assert set(__all__) == {*_EXPORTS, "estimate"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ftopt' has no attribute '{name}'")


def __dir__():
    return __all__
