"""Beside the peers, in one run: the other memory estimators against the accuracy benchmark's own measured runs.

    .venv/bin/python benchmarks/peers.py                  # Markdown summary (README "Beside the peers")
    .venv/bin/python benchmarks/peers.py --rows           # plus one row per measured run
    .venv/bin/python benchmarks/peers.py --json           # everything as JSON
    .venv/bin/python benchmarks/peers.py --llm-analysis-venv /tmp/llm-venv   # where llm-analysis is installed

Nothing is trained here. Every row of benchmarks/results/estimate_accuracy*.json ("rows" and the two-process
"zero_rows") gives a measured peak; each estimator predicts the same scenario from its own inputs, and the error is
(predicted - measured) / measured. An estimator is scored only on rows it produces a number for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, for its scenario helpers
import estimate_accuracy as ea  # noqa: E402

LLM_DRIVER = Path(__file__).resolve().parent / "peers_llm_analysis.py"
# What each method's inputs cannot say, read off its signature (not judged per row). "activations" = nothing that
# depends on sequence length or micro-batch; "precision" = one fixed dtype recipe whatever the run uses.
CANNOT_EXPRESS = {
    "accelerate estimate-memory": (
        "LoRA",
        "GC",
        "attention kind",
        "quantization",
        "8-bit optimizer",
        "ZeRO stage",
        "activations",
    ),
    "DeepSpeed ZeRO estimator": (
        "LoRA",
        "GC",
        "attention kind",
        "quantization",
        "8-bit optimizer",
        "precision",
        "activations",
    ),
    "16 B/param rule": (
        "LoRA",
        "GC",
        "attention kind",
        "quantization",
        "8-bit optimizer",
        "ZeRO stage",
        "precision",
        "activations",
    ),
    "llm-analysis": ("LoRA", "precision"),
    "ftopt analytic": (),
    "ftopt traced": (),
}
HOW_APPLIED = {
    "accelerate estimate-memory": "max(estimate_training_usage(fp32 size of AutoModel on meta, dtype)); no LM head; "
    "int4/int8 say N/A",
    "DeepSpeed ZeRO estimator": "GPU figure without offload; ZeRO-2 on 1 GPU for non-ZeRO rows, stage and 2 GPUs "
    "for ZeRO and FSDP2 rows (FSDP2 full as ZeRO-3, grad-op as ZeRO-2); all parameters counted as trained",
    "16 B/param rule": "16 x all parameters of the causal LM, LoRA or not",
    "llm-analysis": "LLMAnalysis.training; 16-bit weights and activations (it has no fp32), 4/8-bit weights "
    "for quantized runs, Adam with an fp32 master copy; embeddings always tied",
    "ftopt analytic": "ftopt.estimate(..., 'analytic')",
    "ftopt traced": "ftopt.estimate(..., 'traced')",
}
SCENARIO_KEYS = (
    "arch",
    "lora_r",
    "gc",
    "attn",
    "precision",
    "quant",
    "optim",
    "seq",
    "batch",
    "zero",
    "processes",
    "device",
    "packed",
    "padded",
    "dora",
    "lora_dropout",
    "fsdp",
)


def load_rows(results_dir: Path = ea.RESULTS.parent) -> list[dict]:
    """Every measured run of every estimate_accuracy*.json, defaults filled in, each scenario once (the first file
    in name order wins, so partial re-runs saved beside a full file do not count twice)."""
    rows, seen = [], set()
    for f in sorted(results_dir.glob("estimate_accuracy*.json")):
        d = json.loads(f.read_text())
        for r in d.get("rows", []) + d.get("zero_rows", []):
            # zero_rows carry no attn: `ftopt train` ran them with its default, sdpa
            row = {
                "attn": "sdpa",
                "quant": "none",
                "optim": "adamw",
                "zero": 0,
                "processes": 1,
                "device": "cpu",
                "packed": False,
                "padded": False,
                "dora": False,
                "lora_dropout": 0.0,
                "fsdp": "none",
                "seq": d.get("seq_len", ea.SEQ),
                "batch": d.get("micro_batch", ea.BATCH),
                **r,
                "source": f.name,
            }
            key = tuple(row[k] for k in SCENARIO_KEYS)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


@cache
def _config(arch: str):
    from ftopt.model.build import hf_config

    return hf_config(ea._spec({"arch": arch}))


@cache
def _causal_lm(arch: str):
    """The trained model with real (uninitialised) storage: DeepSpeed's model_to_params dedupes shared weights by
    data_ptr(), which is 0 for every meta tensor. to_empty allocates without touching pages; it unties, so re-tie."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(_config(arch), dtype=torch.float32)
    model.to_empty(device="cpu")
    model.tie_weights()
    return model


def accelerate_bytes(row: dict) -> int | None:
    """`accelerate estimate-memory`'s "Training using Adam" cell: accelerate.commands.estimate builds
    AutoModel.from_config in float32 under init_empty_weights (the base model, no LM head), takes
    calculate_maximum_sizes' total, and shows max(estimate_training_usage(total, dtype).values()), -1 = N/A."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModel

    with init_empty_weights():  # accelerate passes torch_dtype=, the name transformers 5 renamed to dtype=
        model = AutoModel.from_config(_config(row["arch"]), dtype=torch.float32)
    total_bytes, _ = calculate_maximum_sizes(model)
    quant = {"nf4": "int4", "fp4": "int4", "int8": "int8"}.get(row["quant"])
    dtype = quant or ("float32" if row["precision"] == "fp32" else "bfloat16")  # its two training recipes
    usage = max(estimate_training_usage(total_bytes, dtype).values())
    return None if usage == -1 else int(usage)


# FSDP2's sharding as the ZeRO stage the peers can be told: full shards parameters too (ZeRO-3), grad-op keeps
# them gathered from forward to backward (ZeRO-2); Lightning Thunder's FSDPType names the same pairs
# (ZERO2 ~ ShardingStrategy.SHARD_GRAD_OP, ZERO3 ~ FULL_SHARD).
FSDP_AS_ZERO = {"full": 3, "grad-op": 2}


def zero_stage(row: dict) -> int:
    """The run's ZeRO stage, or its FSDP2 sharding's equivalent."""
    return FSDP_AS_ZERO.get(row.get("fsdp", "none"), row["zero"])


def deepspeed_bytes(row: dict) -> int:
    """estimate_zero{2,3}_model_states_mem_needs_all_live's GPU column without offload, through the non-printing
    functions they wrap (same model_to_params counting)."""
    with contextlib.redirect_stdout(sys.stderr):  # its logger writes to stdout, which carries our table or JSON
        from deepspeed.runtime.zero import stage3, stage_1_and_2
    model, gpus = _causal_lm(row["arch"]), row["processes"]
    if zero_stage(row) == 3:
        total, largest = stage3.model_to_params(model)
        return stage3.estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=gpus, cpu_offload=False, cpu_offload_params=False
        )[1]
    return stage_1_and_2.estimate_zero2_model_states_mem_needs(
        stage_1_and_2.model_to_params(model), num_gpus_per_node=gpus, cpu_offload=False
    )[1]


# Mixed-precision Adam: fp16 weights 2 + fp16 grads 2 + fp32 master, momentum, variance 12 bytes per parameter
# (ZeRO, arXiv 1910.02054, section 3.1: "2Ψ + 2Ψ + KΨ" with K = 12).
BYTES_PER_PARAM_RULE = 16


def rule16_bytes(row: dict) -> int:
    return BYTES_PER_PARAM_RULE * sum(p.numel() for p in _causal_lm(row["arch"]).parameters())  # tied counted once


def llm_analysis_input(row: dict) -> dict:
    """The scenario in llm-analysis's inputs, from the HF config numbers. Its MLP has two h x ffn matrices, so a
    gated MLP's three h x i matrices become ffn = 1.5 i (as its shipped Llama-2 config: ffn 16384 for i 11008)."""
    cfg, spec = _config(row["arch"]), ea._spec(row)
    gated = spec.mlp.value == "gated"
    ffn = cfg.intermediate_size * 3 // 2 if gated else cfg.intermediate_size
    model = {
        "name": row["arch"],
        "num_layers": cfg.num_hidden_layers,
        "n_head": cfg.num_attention_heads,
        "hidden_dim": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "max_seq_len": cfg.max_position_embeddings,
        "num_key_value_heads": getattr(cfg, "num_key_value_heads", None),
        "ffn_embed_dim": ffn,
        "expansion_ratio": ffn / cfg.hidden_size,
        "model_type": cfg.model_type,
    }
    # Its weight and activation bits must be 4, 8 or 16 (it asserts so): fp32 runs get its 16-bit recipe.
    bits = {"nf4": 4, "fp4": 4, "int8": 8}.get(row["quant"], 16)
    training = {
        "batch_size_per_gpu": row["batch"],
        "seq_len": row["seq"],
        "gradient_accumulation_steps": 1,
        "activation_recomputation": 2 if row["gc"] else 0,  # HF GC keeps each layer's input: FULL
        "ds_zero": zero_stage(row),
        "flash_attn": row["attn"] != "eager",
        "mlp_gated_linear_units": gated,
        "other_op_bytes": 2 if "8bit" in row["optim"] else None,
    }  # 8-bit m and v: 1 + 1 byte
    return {
        "model": model,
        "dtype": {"name": f"w{bits}a16e{bits}", "weight_bits": bits, "activation_bits": 16, "embedding_bits": bits},
        "dp_size": row["processes"],
        "training": training,
    }


def llm_analysis_all(rows: list[dict], venv: Path) -> tuple[list[int | None], list[str]]:
    """One subprocess for all rows (its import is slow): per-row bytes (None where it refused), and what to say."""
    python = venv / "bin" / "python"
    if not python.exists():
        return [None] * len(rows), [
            f"llm-analysis skipped: no virtual environment at {venv} (create one with "
            f"`python3 -m venv {venv} && {venv}/bin/pip install llm-analysis`)"
        ]
    p = subprocess.run(
        [str(python), str(LLM_DRIVER)],
        input=json.dumps([llm_analysis_input(r) for r in rows]),
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        return [None] * len(rows), [f"llm-analysis skipped: {(p.stderr.strip().splitlines() or [p.returncode])[-1]}"]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    refused = sorted({v["error"] for v in got if isinstance(v, dict)})
    n_refused = sum(isinstance(v, dict) for v in got)
    notes = [f"llm-analysis refused {n_refused} runs: {'; '.join(refused)}"] if refused else []
    return [None if isinstance(v, dict) else int(v) for v in got], notes


def predict(rows: list[dict], venv: Path) -> tuple[list[dict], list[str]]:
    """Per row, every estimator's prediction in bytes (None where it produces none); and skip messages."""
    llm, notes = llm_analysis_all(rows, venv)
    out = []
    for row, llm_bytes in zip(rows, llm):
        est = ea.estimates(row)
        out.append(
            {
                "accelerate estimate-memory": accelerate_bytes(row),
                "DeepSpeed ZeRO estimator": deepspeed_bytes(row),
                "16 B/param rule": rule16_bytes(row),
                "llm-analysis": llm_bytes,
                "ftopt analytic": est["analytic"],
                "ftopt traced": est["traced"],
            }
        )
    return out, notes


def error(predicted: int | None, row: dict) -> float | None:
    """Relative error of a prediction against the row's measured peak; None where there is no prediction."""
    return None if predicted is None else (predicted - row["measured_bytes"]) / row["measured_bytes"]


def summarise(rows: list[dict], preds: list[dict]) -> dict:
    """Per estimator: rows scored, median signed and absolute error, worst absolute error."""
    out = {}
    for name in CANNOT_EXPRESS:
        errs = [error(p[name], r) for r, p in zip(rows, preds) if p[name] is not None]
        out[name] = {
            "rows": len(errs),
            "median_error": statistics.median(errs) if errs else None,
            "median_abs_error": statistics.median(map(abs, errs)) if errs else None,
            "worst_abs_error": max(map(abs, errs)) if errs else None,
            "cannot_express": list(CANNOT_EXPRESS[name]),
            "how_applied": HOW_APPLIED[name],
        }
    return out


def _pct(x: float | None, signed: bool = True) -> str:
    return "—" if x is None else f"{x:+.1%}" if signed else f"{x:.1%}"


def label(r: dict) -> str:
    parts = [
        r["arch"],
        f"{'DoRA' if r.get('dora') else 'LoRA'} r{r['lora_r']}" if r["lora_r"] else "full",
        f"dropout {r['lora_dropout']:g}" if r.get("lora_dropout") else "",
        "GC" if r["gc"] else "",
        r["attn"],
        r["quant"].upper() if r["quant"] != "none" else "",
        r["optim"] if r["optim"] != "adamw" else "",
        f"ZeRO-{r['zero']} x{r['processes']}" if r["zero"] else "",
        f"FSDP2-{r['fsdp']} x{r['processes']}" if r.get("fsdp", "none") != "none" else "",
        "packed" if r.get("packed") else "padded" if r.get("padded") else "",
        r["precision"],
        f"seq {r['seq']} x {r['batch']}",
    ]
    return " ".join(p for p in parts if p)


def markdown(summary: dict, rows: list[dict] | None = None, preds: list[dict] | None = None) -> str:
    lines = [
        "| estimator | runs | median error | median \\|error\\| | worst \\|error\\| | cannot express |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['rows']} | {_pct(s['median_error'])} | {_pct(s['median_abs_error'], False)} | "
            f"{_pct(s['worst_abs_error'], False)} | {', '.join(s['cannot_express']) or 'nothing listed'} |"
        )
    if rows is not None:
        lines += ["", "| run | measured | " + " | ".join(summary) + " |", "|---|---|" + "---|" * len(summary)]
        for r, p in zip(rows, preds):
            errs = [_pct(error(p[n], r)) for n in summary]
            lines.append(f"| {label(r)} | {r['measured_bytes'] / 2**20:.1f} MiB | " + " | ".join(errs) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", action="store_true", help="also one table row per measured run")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument(
        "--llm-analysis-venv",
        type=Path,
        default=Path("/tmp/llm-venv"),
        help="virtual environment with llm-analysis installed (skipped with a message if absent)",
    )
    a = ap.parse_args()
    rows = load_rows()
    if not rows:
        sys.exit(f"no measured runs in {ea.RESULTS.parent}/estimate_accuracy*.json")
    preds, notes = predict(rows, a.llm_analysis_venv)
    summary = summarise(rows, preds)
    for n in notes:
        print(n, file=sys.stderr)
    if a.json:
        print(
            json.dumps(
                {
                    "summary": summary,
                    "notes": notes,
                    "rows": [{**r, "predicted_bytes": p} for r, p in zip(rows, preds)],
                },
                indent=2,
            )
        )
    else:
        print(markdown(summary, rows if a.rows else None, preds))


if __name__ == "__main__":
    main()
