"""Estimate accuracy against real runs: fine-tune for real with Hugging Face Trainer on the CPU and compare the
measured peak with the analytic and traced estimates.

    .venv/bin/python benchmarks/estimate_accuracy.py            # all scenarios (~10 min on 2 cores)
    .venv/bin/python benchmarks/estimate_accuracy.py --quick    # one architecture

Each scenario runs in its own process (a fresh allocator): random-init model built by ftopt's own builder (the one
`ftopt train` uses), Trainer for 2 optimizer steps. "Measured" is the allocator-level peak the run adds from building
the model to the end of the second step (ftopt.results.measure: PyTorch profiler memory events, independent of the tracer).
Writes benchmarks/results/estimate_accuracy.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "estimate_accuracy.json"

# >= 100M parameters each: llama-style with GQA, tied-embedding qwen2-style, gpt_neox-style.
ARCHS = {
    "llama-gqa-100m": {
        "model_type": "llama",
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 8,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    "qwen2-tied-110m": {
        "model_type": "qwen2",
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 40000,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "neox-160m": {
        "model_type": "gpt_neox",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 50304,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
}
SEQ, BATCH = 256, 2
# --gpu: presets of 0.5B-8B on one CUDA GPU, bf16-mixed, flash included (benchmarks/gpu_check.sh)
GPU_PRESETS = ("qwen2.5-0.5b", "llama-3.1-8b", "mistral-7b")


def scenarios(quick: bool, gpu: bool = False) -> list[dict]:
    out = []
    if gpu:
        for arch in GPU_PRESETS:
            for lora_r, gc, attn in ((8, False, "flash"), (8, True, "flash"), (8, False, "sdpa"), (0, True, "flash")):
                out.append(dict(arch=arch, lora_r=lora_r, gc=gc, attn=attn, precision="bf16-mixed", device="cuda"))
            # QLoRA (NF4, GC) and paged 8-bit AdamW on CUDA: the in-place bitsandbytes kernels (no CPU temporaries)
            out.append(
                dict(
                    arch=arch,
                    lora_r=8,
                    gc=True,
                    attn="flash",
                    precision="bf16-mixed",
                    device="cuda",
                    quant="nf4",
                    optim="paged-adamw-8bit",
                )
            )
        return out
    for arch in ["llama-gqa-100m"] if quick else ARCHS:
        for lora_r in (0, 8):
            for gc in (False, True):
                for attn in ("eager", "sdpa"):
                    out.append(dict(arch=arch, lora_r=lora_r, gc=gc, attn=attn, precision="fp32"))
        out.append(dict(arch=arch, lora_r=8, gc=False, attn="sdpa", precision="bf16-mixed"))
    return out


# QLoRA / 8-bit optimizer scenarios and the hard cases (seq 1024 x 1, a 0.5B qwen2 preset).
QUANT_ARCHS = ("llama-gqa-100m", "qwen2-tied-110m", "neox-160m")


def quant_scenarios() -> list[dict]:
    out = []
    for arch in QUANT_ARCHS:
        for gc in (False, True):
            out.append(dict(arch=arch, lora_r=8, gc=gc, attn="sdpa", precision="bf16-mixed", quant="nf4"))
        out.append(dict(arch=arch, lora_r=0, gc=False, attn="sdpa", precision="fp32", optim="adamw-8bit"))
    # NF4 with an fp32 compute dtype (BitsAndBytesConfig's default): the same recipe without bf16 emulation, which
    # makes a CPU run several times faster; appended so the indices above stay the ones the results files name.
    for arch in QUANT_ARCHS:
        for gc in (False, True):
            out.append(dict(arch=arch, lora_r=8, gc=gc, attn="sdpa", precision="fp32", quant="nf4"))
    return out


# Packed (padding-free) runs as `ftopt train --packing` makes them (ftopt.train.sft): synthetic documents of these
# lengths, packed by TRL's best-fit decreasing into 4 rows of exactly SEQ tokens with 2-5 documents each (checked
# in _packed_dataset), collated by SftCollator: position ids restart per document and no attention mask is passed.
PACKED_DOC_LENGTHS = (193, 42, 21, 190, 34, 32, 179, 31, 21, 20, 5, 131, 107, 18)
PACKED_ARCHS = ("llama-gqa-100m", "qwen2-tied-110m")


def packed_scenarios() -> list[dict]:
    """GC off first (the cheaper half), then GC on; indices are what --only and the results file names use."""
    return [
        dict(arch=arch, lora_r=lora_r, gc=gc, attn=attn, precision="fp32", packed=True)
        for gc in (False, True)
        for arch in PACKED_ARCHS
        for lora_r in (0, 8)
        for attn in ("sdpa", "eager")
    ]


def _packed_dataset(vocab_size: int, seq: int):
    import torch

    from ftopt.train.sft import Example, to_dataset

    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in PACKED_DOC_LENGTHS]
    ds = to_dataset([Example(d, list(d)) for d in docs], seq, packing=True)
    if sorted(len(r) for r in ds["input_ids"]) != [seq] * 4:
        raise SystemExit(f"packing changed: rows of {[len(r) for r in ds['input_ids']]} tokens, expected 4 x {seq}")
    return ds


# Right-padded runs as `ftopt train --batching padded-max` makes them: one document per row, every row shorter
# than SEQ (lengths below), right-padded to SEQ by SftCollator(pad_to=SEQ) with the 0/1 attention mask, so SDPA is
# handed a mask in every micro-batch whatever the sampler's order. GC off and on, full and LoRA, two architectures.
PADDED_DOC_LENGTHS = (201, 143, 250, 177)


def padded_scenarios() -> list[dict]:
    return [
        dict(arch="llama-gqa-100m", lora_r=0, gc=False, attn="sdpa", precision="fp32", padded=True),
        dict(arch="llama-gqa-100m", lora_r=8, gc=True, attn="sdpa", precision="fp32", padded=True),
        dict(arch="qwen2-tied-110m", lora_r=0, gc=True, attn="sdpa", precision="fp32", padded=True),
        dict(arch="qwen2-tied-110m", lora_r=8, gc=False, attn="sdpa", precision="fp32", padded=True),
    ]


def _padded_dataset(vocab_size: int, seq: int):
    import torch

    from ftopt.train.sft import Example, to_dataset

    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in PADDED_DOC_LENGTHS]
    if max(PADDED_DOC_LENGTHS) >= seq:
        raise SystemExit(f"padded rows must be shorter than --seq-len {seq}: {PADDED_DOC_LENGTHS}")
    return to_dataset([Example(d, list(d)) for d in docs], seq, packing=False)


# bf16-mixed runs: CPU autocast in bf16 is the Trainer recipe a GPU runs (fp32 weights, autocast casts,
# fp32 master = the weights, 16-bit activations); full and LoRA, GC off and on, every architecture (qwen2 is tied).
# Indices 12-17 are held out: other token counts per micro-batch, run after the estimators were fixed against 0-11.
def mixed_scenarios() -> list[dict]:
    dev = [
        dict(arch=arch, lora_r=lora_r, gc=gc, attn="sdpa", precision="bf16-mixed")
        for arch in ARCHS
        for lora_r in (0, 8)
        for gc in (False, True)
    ]
    held_out = [
        ("qwen2-tied-110m", 0, True, 512, 2),
        ("llama-gqa-100m", 0, True, 128, 3),
        ("neox-160m", 8, True, 512, 2),
        ("llama-gqa-100m", 8, False, 384, 2),
        ("qwen2-tied-110m", 8, True, 128, 3),
        ("neox-160m", 0, False, 192, 2),
    ]
    return dev + [
        dict(arch=a, lora_r=r, gc=gc, attn="sdpa", precision="bf16-mixed", seq=seq, batch=b)
        for a, r, gc, seq, b in held_out
    ]


def dora_scenarios() -> list[dict]:
    """DoRA (PEFT use_dora) and the bf16 QLoRA recipe: default targets with GC off and on; every linear at a short
    sequence, where the weight norm's temporaries set the peak; NF4 under bf16-true in torchtune's recipe."""
    return [
        dict(arch="llama-gqa-100m", lora_r=8, gc=False, attn="sdpa", precision="fp32", dora=True),
        dict(arch="llama-gqa-100m", lora_r=8, gc=True, attn="sdpa", precision="fp32", dora=True),
        dict(arch="qwen2-tied-110m", lora_r=8, gc=False, attn="sdpa", precision="fp32", dora=True),
        dict(
            arch="llama-gqa-100m",
            lora_r=8,
            gc=False,
            attn="sdpa",
            precision="fp32",
            dora=True,
            lora_targets=["all-linear"],
            seq=32,
            batch=1,
        ),
        dict(
            arch="llama-gqa-100m",
            lora_r=8,
            gc=True,
            attn="sdpa",
            precision="bf16-true",
            quant="nf4",
            qlora_recipe="torchtune",
            seq=128,
        ),
    ]


def dropout_scenarios() -> list[dict]:
    """LoRA adapter dropout 0.1 (PEFT lora_dropout): fp32 (each wrapped linear's dropped copy and fp32 noise) with GC
    off and on, every linear; bf16-mixed (fp32 adapters: the noise only); bf16 adapters under bf16-true (a bf16 copy
    and noise); DoRA (its base product recomputed from the dropped input). Then the twins without dropout that no
    other file has (rows 0, 1, 3 and 5 have theirs in estimate_accuracy.json and estimate_accuracy_dora.json), so
    that what dropout costs is measured too."""
    lora = dict(arch="llama-gqa-100m", lora_r=8, gc=False, attn="sdpa", precision="fp32", lora_dropout=0.1)
    drop = [
        lora,
        dict(lora, gc=True),
        dict(lora, lora_targets=["all-linear"], seq=128),
        dict(lora, precision="bf16-mixed"),
        dict(lora, precision="bf16-true", adapter_dtype="base"),
        dict(lora, arch="qwen2-tied-110m", dora=True),
    ]
    return drop + [{k: v for k, v in drop[i].items() if k != "lora_dropout"} for i in (2, 4)]


def miss_scenarios() -> list[dict]:
    return [
        dict(arch="llama-gqa-100m", lora_r=0, gc=True, attn="sdpa", precision="fp32", seq=1024, batch=1),
        dict(arch="qwen2.5-0.5b", lora_r=0, gc=True, attn="sdpa", precision="fp32", seq=1024, batch=1),
        dict(arch="tiny-llama", lora_r=8, gc=True, attn="eager", precision="fp32"),
        dict(arch="tiny-llama", lora_r=8, gc=True, attn="eager", precision="fp32", seq=64, batch=8),
    ]  # CPU defaults


def _combo(sc: dict):
    from ftopt.spec import Combination

    return Combination(
        lora_r=sc["lora_r"],
        gc=sc["gc"],
        attn=sc["attn"],
        quant=sc.get("quant", "none"),
        optim=sc.get("optim", "adamw"),
        zero=sc.get("zero", 0),
        fsdp=sc.get("fsdp", "none"),
        dora=sc.get("dora", False),
        lora_targets=tuple(sc["lora_targets"]) if sc.get("lora_targets") else None,
        qlora_recipe=sc.get("qlora_recipe", "peft"),
        **{k: sc[k] for k in ("lora_dropout", "adapter_dtype") if k in sc},  # Combination's defaults otherwise
    )


def run_one(sc: dict) -> dict:
    """Executed in a child process: a real 2-step Trainer run, measured."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from ftopt.model.build import build_model
    from ftopt.results.measure import track_memory
    from ftopt.spec import Precision

    torch.set_num_threads(
        int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    )  # 1: memory runs on a shared CPU
    spec = _spec(sc)
    combo = _combo(sc)
    device = sc.get("device", "cpu")
    seq, batch = sc.get("seq", SEQ), sc.get("batch", BATCH)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (2 * batch, seq), generator=g)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    collator = None
    if sc.get("packed"):
        from ftopt.train.sft import SftCollator

        ds = _packed_dataset(spec.vocab_size, seq)
        collator = SftCollator(pad_token_id=0, flatten=combo.attn.value == "flash")
    elif sc.get("padded"):
        from ftopt.train.sft import SftCollator

        ds = _padded_dataset(spec.vocab_size, seq)
        collator = SftCollator(pad_token_id=0, flatten=combo.attn.value == "flash", pad_to=seq)
    prec = Precision(sc["precision"])
    args = TrainingArguments(
        output_dir="/tmp/ftopt-acc",
        max_steps=2,
        per_device_train_batch_size=batch,
        optim=combo.optim.hf_name,
        remove_unused_columns=not sc.get("packed"),
        learning_rate=1e-4,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=device == "cpu",
        bf16=prec is Precision.BF16_MIXED,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    with track_memory(device) as r:
        model = build_model(spec, combo, prec, device=device)
        Trainer(model=model, args=args, train_dataset=ds, data_collator=collator).train()
    return {"measured_bytes": r.peak_allocated_bytes, "reserved_bytes": r.peak_reserved_bytes, "seconds": r.seconds}


def _spec(sc: dict):
    from ftopt.spec import from_hf_config, load_model

    return from_hf_config(ARCHS[sc["arch"]], sc["arch"]) if sc["arch"] in ARCHS else load_model(sc["arch"])


ZERO_SCENARIOS = [
    dict(zero=2, lora_r=0, gc=False),
    dict(zero=2, lora_r=8, gc=False),
    dict(zero=3, lora_r=0, gc=True),
    dict(zero=3, lora_r=8, gc=False),
]


# FSDP2 (ftopt's fully_shard engine) over two CPU processes: full and LoRA, GC on and off, both reshard modes, on
# two architectures (an untied llama with GQA, a tied-embedding qwen2: the root group differs).
FSDP_ARCHS = ("llama-gqa-100m", "qwen2-tied-110m")
FSDP_SCENARIOS = [
    dict(fsdp="full", lora_r=0, gc=False),
    dict(fsdp="full", lora_r=8, gc=True),
    dict(fsdp="grad-op", lora_r=0, gc=True),
    dict(fsdp="grad-op", lora_r=8, gc=False),
]
# bf16-mixed: MixedPrecisionPolicy (bf16 compute, fp32 sharded parameters and reduction, no autocast;
# ftopt.train.fsdp_engine.shard_model), the same four shapes; listed after the fp32 ones so their indices stay.
FSDP_MIXED_SCENARIOS = [dict(sc, precision="bf16-mixed") for sc in FSDP_SCENARIOS]


def _sharding_flags(sc: dict) -> list[str]:
    return ["--fsdp", sc["fsdp"]] if sc.get("fsdp", "none") != "none" else ["--zero", str(sc["zero"])]


def run_zero(arch: str, sc: dict, workdir: Path) -> dict:
    """`ftopt train` with ZeRO or FSDP2 over two CPU processes (DeepSpeed launcher or torchrun, gloo); packed
    sequences so every step has exactly SEQ x BATCH tokens. Measured: the largest per-rank allocator peak over
    build + 2 steps (FSDP2: over the shards and 2 steps, ftopt.train.fsdp_worker); predicted: the per-rank
    estimates ftopt wrote beside it in metrics.json."""
    cfg_path = workdir / f"{arch}.json"
    cfg_path.write_text(json.dumps(ARCHS[arch]))
    engine = f"fsdp-{sc['fsdp']}" if sc.get("fsdp", "none") != "none" else f"z{sc['zero']}"
    out = workdir / f"{arch}-{engine}-r{sc['lora_r']}-gc{int(sc['gc'])}-{sc.get('precision', 'fp32')}"
    cmd = [
        sys.executable,
        "-m",
        "ftopt",
        "train",
        "--random-init",
        str(cfg_path),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--seq-len",
        str(SEQ),
        "--micro-batch",
        str(BATCH),
        "--packing",
        "--gpus",
        "2",
        *_sharding_flags(sc),
        "--lora-r",
        str(sc["lora_r"]),
        "--gc" if sc["gc"] else "--no-gc",
        "--precision",
        sc.get("precision", "fp32"),
        "--json",
        "--eval-max-examples",
        "0",
    ]  # generation comes after the measured span and takes ~10 min under ZeRO-3
    # one thread per rank: the peaks are memory, which contention on a shared CPU does not change
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    from ftopt.results.rows import read_metrics

    m = read_metrics(out / "metrics.json")
    measured = m.measured.peak_bytes_per_gpu
    row = {
        "arch": arch,
        "precision": "fp32",
        **sc,
        "processes": 2,
        "attn": "sdpa",
        "packed": True,
        "measured_bytes": measured,
    }
    for k in ("analytic", "traced"):
        row[f"{k}_bytes"] = getattr(m.predicted, k).peak_bytes_per_gpu
        row[f"{k}_error"] = (row[f"{k}_bytes"] - measured) / measured
    return row


def estimates(sc: dict) -> dict:
    from ftopt import estimate
    from ftopt.spec import TrainingSetup, load_hardware

    spec = _spec(sc)
    combo = _combo(sc)
    setup = TrainingSetup(
        seq_len=sc.get("seq", SEQ),
        micro_batch=sc.get("batch", BATCH),
        precision=sc["precision"],
        batching=_batching(sc),
        gpus_per_node=sc.get("processes", 1),
    )  # a ZeRO row's processes (benchmarks/peers.py)
    hw = load_hardware("h200" if sc.get("device") == "cuda" else "cpu")
    return {m: estimate(spec, hw, setup, combo, m).peak_bytes_per_gpu for m in ("analytic", "traced")}


def _batching(sc: dict) -> str:
    """The batch layout a row ran: packed rows, rows padded to SEQ, or (the default collator on rows of random ids
    exactly SEQ long, no attention mask) full rows."""
    return "packed" if sc.get("packed") else "padded-max" if sc.get("padded") else "full"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="CUDA scenarios (0.5B-8B presets, flash)")
    ap.add_argument("--zero-only", action="store_true", help="only the two-process ZeRO-2/3 scenarios")
    ap.add_argument("--fsdp", action="store_true", help="only the two-process FSDP2 scenarios; with --table, theirs")
    ap.add_argument("--quant", action="store_true", help="only QLoRA (NF4, GC on/off) and 8-bit AdamW scenarios")
    ap.add_argument("--misses", action="store_true", help="only the known-miss scenarios (seq 1024 x 1, 0.5B qwen2)")
    ap.add_argument("--packed", action="store_true", help="only packed (padding-free) runs; with --table, their table")
    ap.add_argument("--mixed", action="store_true", help="only bf16-mixed runs; with --table, their table")
    ap.add_argument("--padded", action="store_true", help="only right-padded runs; with --table, their table")
    ap.add_argument("--dora", action="store_true", help="only DoRA and bf16 QLoRA-recipe runs; with --table, theirs")
    ap.add_argument("--dropout", action="store_true", help="only LoRA adapter dropout runs; with --table, theirs")
    ap.add_argument("--only", help="comma list of scenario indices to run (within the chosen set)")
    ap.add_argument("--table", action="store_true", help="print the Markdown table of the saved quant/misses results")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="recompute both estimates for every saved single-process row (after an estimator change); "
        "the measured peaks are kept as they are",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rescore:  # with --fsdp, only the FSDP2 rows
        rescore("estimate_accuracy_fsdp.json" if a.fsdp else "estimate_accuracy*.json")
        return
    subset = next((k for k in SUBSETS if getattr(a, k)), None)
    if a.table:
        print_table(*(("fsdp",) if a.fsdp else (subset,) if subset not in (None, "quant", "misses") else TABLE_DEFAULT))
        return
    if a.fsdp:
        run_fsdp(a.only)
        return
    if a.one:
        print(json.dumps(run_one(json.loads(a.one))))
        return
    rows = []
    results = RESULTS.with_name("gpu_check.json") if a.gpu else RESULTS
    chosen = SUBSETS[subset]() if subset else scenarios(a.quick, a.gpu)
    if subset:
        results = RESULTS.with_name(f"estimate_accuracy_{subset}.json")
    if a.only:
        chosen = [chosen[int(i)] for i in a.only.split(",")]
        results = results.with_name(results.stem + f"_{a.only.replace(',', '-')}.json")
    for sc in [] if a.zero_only else chosen:
        p = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(sc)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if p.returncode != 0:
            print(f"{sc}: run failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
            continue
        real = json.loads(p.stdout.strip().splitlines()[-1])
        row = _scored({**sc, **real}, estimates(sc))
        rows.append(row)
        _save(results, rows, [], {})  # after each run: a slow CPU sweep interrupted keeps what it measured
        print(
            f"{sc['arch']:16} {'full' if not sc['lora_r'] else 'LoRA':4} gc={sc['gc']!s:5} {sc['attn']:5} "
            f"{sc['precision']:10} {sc.get('quant', 'none'):4} {sc.get('optim', 'adamw'):10} "
            f"s{sc.get('seq', SEQ)}x{sc.get('batch', BATCH)} measured {real['measured_bytes'] / 2**20:8.1f} MiB  analytic "
            f"{row['analytic_error']:+6.1%}  traced {row['traced_error']:+6.1%}",
            flush=True,
        )
    zero_rows = []
    if not (a.gpu or subset):
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="ftopt-zero-"))
        for sc in ZERO_SCENARIOS:
            try:
                r = run_zero("llama-gqa-100m", sc, work)
            except subprocess.CalledProcessError as e:
                print(f"ZeRO-{sc['zero']} {sc}: run failed: {(e.stderr or '').strip().splitlines()[-1:]}")
                continue
            zero_rows.append(r)
            print(
                f"{'llama-gqa-100m':16} {'full' if not sc['lora_r'] else 'LoRA':4} gc={sc['gc']!s:5} ZeRO-{sc['zero']} x2 "
                f"measured {r['measured_bytes'] / 2**20:8.1f} MiB/rank  analytic {r['analytic_error']:+6.1%}  "
                f"traced {r['traced_error']:+6.1%}",
                flush=True,
            )
    if not rows and not zero_rows:
        sys.exit("no scenario ran")
    summary = _summary(rows)
    for k, v in summary.items():
        print(
            f"{k:8}: median |error| {v['median_abs_error']:.2%}, worst {v['worst_abs_error']:.2%} over {len(rows)} runs"
        )
    if a.zero_only:  # keep the single-process rows of the last full run
        results = RESULTS.with_name("estimate_accuracy_zero.json")
    _save(results, rows, zero_rows, summary)


# The subsets one flag runs, each saved as estimate_accuracy_{name}.json (with --only, its indices appended); with
# --table a subset prints its own table, except quant and misses, which share TABLE_DEFAULT's
SUBSETS = {
    "quant": quant_scenarios,
    "misses": miss_scenarios,
    "packed": packed_scenarios,
    "mixed": mixed_scenarios,
    "padded": padded_scenarios,
    "dora": dora_scenarios,
    "dropout": dropout_scenarios,
}
TABLE_DEFAULT = ("quant", "misses")


def run_fsdp(only: str | None) -> None:
    """The FSDP2 rows (FSDP_ARCHS x FSDP_SCENARIOS, then FSDP_ARCHS x FSDP_MIXED_SCENARIOS, or the `--only` indices
    of that list), saved as
    estimate_accuracy_fsdp.json (rows `--rescore` re-estimates and `--fsdp --table` prints)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="ftopt-fsdp-"))
    chosen = [dict(arch=a, **sc) for a in FSDP_ARCHS for sc in FSDP_SCENARIOS]
    chosen += [dict(arch=a, **sc) for a in FSDP_ARCHS for sc in FSDP_MIXED_SCENARIOS]
    if only:
        chosen = [chosen[int(i)] for i in only.split(",")]
    path = RESULTS.with_name("estimate_accuracy_fsdp.json")
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    for sc in chosen:
        arch = sc.pop("arch")
        try:
            r = run_zero(arch, sc, work)
        except subprocess.CalledProcessError as e:
            print(f"FSDP2 {arch} {sc}: run failed: {(e.stderr or '').strip().splitlines()[-1:]}")
            continue
        rows = [x for x in rows if _key(x) != _key(r)] + [r]  # a rerun replaces its row
        _save(path, rows, [], _summary(rows))  # after every run: a long sweep keeps what it measured
        print(
            f"{arch:16} {'full' if not sc['lora_r'] else 'LoRA':4} gc={sc['gc']!s:5} FSDP2-{sc['fsdp']} x2 measured "
            f"{r['measured_bytes'] / 2**20:8.1f} MiB/rank  analytic {r['analytic_error']:+6.1%}  traced "
            f"{r['traced_error']:+6.1%}",
            flush=True,
        )


def _key(row: dict) -> tuple:
    return (row["arch"], row.get("fsdp"), row["lora_r"], row["gc"], row.get("precision", "fp32"))


def print_table(*kinds: str) -> None:
    """A README table: every row of benchmarks/results/estimate_accuracy_{kind}*.json for the kinds given (quant and
    misses share one table, packed has its own), and the medians."""
    rows = [
        r
        for f in sorted(RESULTS.parent.glob("estimate_accuracy_*.json"))
        if any(k in f.name for k in kinds)
        for r in json.loads(f.read_text())["rows"]
    ]
    for r in rows:
        what = "full" if not r["lora_r"] else f"{'DoRA' if r.get('dora') else 'LoRA'} r{r['lora_r']}"
        extras = " ".join(
            x
            for x in (
                r.get("quant", "none").upper() if r.get("quant", "none") != "none" else "",
                r.get("optim", "adamw") if r.get("optim", "adamw") != "adamw" else "",
                "packed" if r.get("packed") else "padded" if r.get("padded") else "",
                f"FSDP2-{r['fsdp']} x{r['processes']}" if r.get("fsdp") else "",
                ",".join(r["lora_targets"]) if r.get("lora_targets") else "",
                f"dropout {r['lora_dropout']:g}" if r.get("lora_dropout") else "",
                f"adapters {r['adapter_dtype']}" if r.get("adapter_dtype") else "",
                f"({r['qlora_recipe']})" if r.get("qlora_recipe") else "",
            )
            if x
        )
        print(
            f"| {r['arch']} {what} {extras} gc={r['gc']} {r['attn']} seq {r.get('seq', SEQ)} x {r.get('batch', BATCH)} | "
            f"{r['precision']} | {r['measured_bytes'] / 2**20:.1f} MiB | {r['analytic_error']:+.1%} | "
            f"{r['traced_error']:+.1%} |"
        )
    for k in ("analytic", "traced"):
        errs = sorted(abs(r[f"{k}_error"]) for r in rows)
        if errs:
            print(f"{k}: median |error| {statistics.median(errs):.1%}, worst {errs[-1]:.1%} over {len(errs)} runs")


def rescore(pattern: str = "estimate_accuracy*.json") -> None:
    """Re-estimate the saved runs with the current estimators, so the tables never mix old predictions with new
    code. Two-process ZeRO rows are estimated as `ftopt train` ran them: packed rows, SDPA, 2 processes."""
    for f in sorted(RESULTS.parent.glob(pattern)):
        data = json.loads(f.read_text())
        for row in data.get("zero_rows", []):
            row.setdefault("attn", "sdpa"), row.setdefault("packed", True)
        for row in data["rows"] + data.get("zero_rows", []):
            _scored(row, estimates(row))
        _save(f, data["rows"], data.get("zero_rows", []), _summary(data["rows"]) or data["summary"])
        print(f"{f.name}: {len(data['rows'])} rows re-estimated")


def _scored(row: dict, est: dict) -> dict:
    """`row` (with its measured_bytes) given each method's predicted bytes and signed error."""
    for k, v in est.items():
        row[f"{k}_bytes"], row[f"{k}_error"] = v, (v - row["measured_bytes"]) / row["measured_bytes"]
    return row


def _summary(rows: list[dict]) -> dict:
    """Median and worst |error| per method over single-process rows ({} without rows)."""
    out = {}
    for k in ("analytic", "traced") if rows else ():
        errs = [abs(r[f"{k}_error"]) for r in rows]
        out[k] = {"median_abs_error": statistics.median(errs), "worst_abs_error": max(errs)}
    return out


def _save(path: Path, rows: list, zero_rows: list, summary: dict) -> None:
    from ftopt.spec.io import atomic_write_text

    atomic_write_text(
        path,
        json.dumps(
            {"rows": rows, "zero_rows": zero_rows, "summary": summary, "seq_len": SEQ, "micro_batch": BATCH}, indent=2
        ),
    )


if __name__ == "__main__":
    main()
