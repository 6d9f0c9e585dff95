"""`ftopt demo`'s stated assumptions (the quality bar, the production target, the steps): what `demo --help`
shows and what the demo runs with, kept apart from the demo's loop so that the command line reads them without
importing the planner and the report."""

from __future__ import annotations

from pydantic import Field

from ftopt.spec import ProductionOptions, load_hardware, load_model
from ftopt.spec.errors import FtoptError

DEMO_STEPS = 120
DEMO_QUALITY_TARGET = "exact_match>=0.5"  # half the held-out words right: the rule has been learned, not guessed
# What a manager reads: the chosen combination on a real production model, not on the demo's 4-layer base.
DEMO_TARGET_MODEL = "llama-3.1-8b"


class DemoOptions(ProductionOptions):
    """The demo's stated assumptions for the quality bar and for production, where they differ from `report`'s
    (each overridable by a flag): an 8B model on one A100 with 100M tokens, retrained monthly."""

    quality_target: str | None = None
    target_gpu: str | None = "a100-80g"
    target_model: str | None = DEMO_TARGET_MODEL
    dataset_tokens: int | None = Field(100_000_000, gt=0)
    retrains_per_year: float = Field(12.0, ge=0)

    def check(self) -> None:
        """What only fails later otherwise: the quality bar's syntax and metric (the demo's task scores the
        built-in metrics), the production GPU's and model's names."""
        from ftopt.results.quality import BUILTIN, LOSS_METRICS, QualityTarget

        if self.quality_target is not None:
            t = QualityTarget.parse(self.quality_target)
            known = (*LOSS_METRICS, *BUILTIN)
            if t.metric not in known:
                raise FtoptError(
                    f"--quality-target names the metric '{t.metric}', which the demo does not measure; "
                    f"use one of {', '.join(known)}."
                )
        load_hardware(self.target_gpu)
        load_model(self.target_model)
