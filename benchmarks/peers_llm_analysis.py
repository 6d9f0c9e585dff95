"""Runs INSIDE llm-analysis's own virtual environment (it pins transformers < 5, so it cannot share ftopt's).

benchmarks/peers.py starts it as `<venv>/bin/python benchmarks/peers_llm_analysis.py`, writes a JSON list of
scenarios to stdin and reads one JSON list back: per scenario llm-analysis's training memory per GPU in bytes
(`(weight+op_state+grad+act)_memory_per_gpu` of `LLMAnalysis.training`), or {"error": ...}. Standard library and
llm_analysis only. A scenario: {"model": ModelConfig fields, "dtype": DtypeConfig fields, "dp_size": int,
"training": keyword arguments of LLMAnalysis.training with the enums as ints}.
"""

import json
import logging
import sys

from llm_analysis.analysis import ActivationRecomputation, DSZeRO, LLMAnalysis
from llm_analysis.config import DtypeConfig, ModelConfig, ParallelismConfig, get_gpu_config_by_name

# The GPU sets only latency and the "memory left" warning, not the memory figure; any 80 GB part will do.
GPU = "h100-sxm-80gb"
MEMORY_KEY = "(weight+op_state+grad+act)_memory_per_gpu"


def one(sc: dict) -> dict | float:
    kw = dict(sc["training"])
    kw["activation_recomputation"] = ActivationRecomputation(kw["activation_recomputation"])
    kw["ds_zero"] = DSZeRO(kw["ds_zero"])
    analysis = LLMAnalysis(
        ModelConfig(**sc["model"]),
        get_gpu_config_by_name(GPU),
        DtypeConfig(**sc["dtype"]),
        ParallelismConfig(dp_size=sc["dp_size"]),
    )
    return analysis.training(**kw)[MEMORY_KEY]


def main() -> None:
    logging.disable(logging.CRITICAL)  # it logs a readable summary per call; stdout carries only our JSON
    out = []
    for sc in json.load(sys.stdin):
        try:
            out.append(one(sc))
        except Exception as e:  # noqa: BLE001 - a scenario it rejects is reported, not fatal
            out.append({"error": f"{type(e).__name__}: {e}"})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
