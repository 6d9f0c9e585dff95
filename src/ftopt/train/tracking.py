"""`--report-to`: the experiment trackers people already use, through the Trainer's own integrations."""

from __future__ import annotations

import importlib.util

from ftopt.spec.errors import FtoptError
from ftopt.spec.run import ReportTo

# the package each tracker needs (transformers' integrations import them when the Trainer starts)
_PACKAGE = {ReportTo.TENSORBOARD: "tensorboard", ReportTo.MLFLOW: "mlflow", ReportTo.WANDB: "wandb"}


def trainer_report_to(report_to: ReportTo) -> list[str]:
    """TrainingArguments.report_to for the choice; refuses a tracker whose package is not installed."""
    if report_to is ReportTo.NONE:
        return []
    package = _PACKAGE[report_to]
    if importlib.util.find_spec(package) is None:
        raise FtoptError(f"--report-to {report_to.value} needs the {package} package (pip install {package}).")
    return [report_to.value]
