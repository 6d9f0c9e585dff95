"""Published learning rates for fine-tuning, by method and model size: what `plan --export` writes.

ftopt's own runs default to Schedule.learning_rate (1e-3, tuned on the built-in tiny model and task); a config
exported for a real model needs the rate the published recipes use for its method and size:

- LoRA / QLoRA: QLoRA paper (Dettmers et al. 2023, arXiv 2305.14314), Appendix B.2, Table 9: 2e-4 for the 7B and
  13B models, 1e-4 for 33B and 65B (the same for LoRA on a 16-bit base: the paper's 16-bit LoRA baselines share
  the hyperparameters).
- Full fine-tuning: Llama 2 paper (Touvron et al. 2023, arXiv 2307.09288), section 3.1 "Supervised Fine-Tuning":
  2e-5 with a cosine schedule; Stanford Alpaca (github.com/tatsu-lab/stanford_alpaca, README "Fine-tuning"):
  2e-5 for LLaMA-7B and 1e-5 for LLaMA-13B. Larger models take the smaller rate.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ftopt.spec import Combination, ModelSpec

QLORA = "QLoRA paper (arXiv 2305.14314), Table 9"
ALPACA = "Llama 2 paper (arXiv 2307.09288) sec. 3.1; Stanford Alpaca README"

# (largest parameter count the rate applies to, rate): the recipes' sizes split at the midpoints between them
LORA_RATES = ((20e9, 2e-4), (float("inf"), 1e-4))  # QLoRA: 7B/13B 2e-4; 33B/65B 1e-4
FULL_RATES = ((10e9, 2e-5), (float("inf"), 1e-5))  # Alpaca: 7B 2e-5, 13B 1e-5 (Llama 2 SFT: 2e-5)


class LearningRate(BaseModel):
    """A learning rate and where it comes from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: float
    source: str

    def comment(self) -> str:
        return f"learning_rate {self.value:g}: {self.source}"


def suggested_learning_rate(model: ModelSpec, combo: Combination) -> LearningRate:
    """The published rate for LoRA (any base) or full fine-tuning of a model of this size."""
    params = model.param_count()
    rates, source = (LORA_RATES, QLORA) if combo.lora else (FULL_RATES, ALPACA)
    value = next(rate for limit, rate in rates if params <= limit)
    return LearningRate(value=value, source=source)
