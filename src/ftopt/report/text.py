"""Report wording in English and Japanese. Each language is written for its reader, not translated word by word
(Japanese: one term per concept, e.g. 評価損失 for eval loss; full sentences ending in 。). Placeholders are
filled with already-escaped values by report.render; <b> is the only markup."""

from __future__ import annotations

from ftopt.report.text_ja import JA

EN: dict[str, str] = {
    "title": "Fine-tuning decision report",
    "unit_s": " s",
    "unit_min": " min",
    "unit_h": " h",
    "summary": "Decision",
    # point 1: quality bar and time budget
    "p_quality": "<b>Quality bar and time budget.</b> The quality target is {target} ({source}). {met} {budget}",
    "src_given": "set with --quality-target",
    "src_demo": "stated by the demo",
    "src_bench": "set with ftopt bench --quality-target",
    "src_derived": "not set by you: the sweep's best eval loss plus 5%, which only ranks the runs against each other",
    "met_some": "{n} of {total} successful runs met it.",
    "unmeasured_note": " Not measured, so neither met nor missed: {labels}.",
    "met_none": "No run met it; the closest was {label} at {value}. Do not scale up yet: train longer, start from a "
    "stronger base model, or revisit the target.",
    "nothing_to_learn": " Nothing to learn: every run started at a training loss near zero, so the base model already "
    "knew the task; the quality figures do not show what fine-tuning adds.",
    "nothing_to_learn_full": " Nothing to learn: before any training (step 0) the base model already scored full "
    "marks on {metric} in every run scored then ({n} of {total}); fine-tuning cannot raise that score, so the quality "
    "figures do not show what it adds. Make the held-out rows harder or pick a metric the base does not max out.",
    "nothing_learned": "Nothing of the task was learned: every run scored 0 on {metric}. The runs are too short or "
    "the setup is wrong; the time and memory figures still hold, the quality figures do not.",
    "budget_none": "No time budget was given (--max-hours).",
    "budget_fits": "A production run is predicted to take {hours}, within the budget of {budget}.",
    "budget_over": "A production run is predicted to take {hours}, over the budget of {budget}: add GPUs or nodes, "
    "or reduce the data or epochs.",
    "budget_given": "The time budget is {budget} per run.",
    # point 2: techniques by GPU memory
    "p_memory": "<b>Memory techniques.</b> {what}",
    "mem_none_needed": "No memory technique is needed: {label} runs without LoRA, a quantized base, an 8-bit or "
    "paged optimizer, gradient checkpointing, ZeRO or FSDP2. {fit}",
    "mem_needed": "The recommended combination, {label}, uses {techniques}. {fit}",
    # the techniques named in mem_needed (report.decision.memory_techniques)
    "tech_lora": "LoRA (rank {r})",
    "tech_qlora": "QLoRA ({quant} base, rank {r})",
    "tech_int8": "an 8-bit base (LLM.int8())",
    "tech_adamw_8bit": "8-bit AdamW",
    "tech_paged_adamw_8bit": "paged 8-bit AdamW",
    "tech_paged_adamw": "paged AdamW",
    "tech_gc": "gradient checkpointing",
    "tech_fsdp_full": "FSDP2 sharding of parameters, gradients and optimizer states (full)",
    "tech_fsdp_grad_op": "FSDP2 sharding with the parameters kept gathered from forward to backward (grad-op)",
    "tech_offload_optimizer": "optimizer offload to CPU",
    "tech_offload_all": "parameter and optimizer offload to CPU",
    "tech_sep": ", ",
    "fit_target": "On {gpu} it is predicted to need {need} of {cap} per GPU.",
    "fit_target_no": "On {gpu} it is predicted to need {need} per GPU, more than the {cap} it has: choose a "
    "combination with more memory techniques or more GPUs.",
    "fit_poc": "Its measured peak on {hardware} was {need} per GPU.",
    # point 3: PoC to production
    "p_scale": "<b>From PoC to production.</b> {what}",
    "scale_best": "Scale <b>{label}</b>: in the PoC it took {time} per epoch on {gpus}, {gpuh} GPU-hours. {production}",
    "scale_none": "There is nothing to scale yet: no run met the quality target.",
    "scale_unfit": "There is nothing to scale yet: the runs that met the quality target ({labels}) do not fit the "
    "production GPUs' memory in the projection; plan the production model with more GPUs, or a combination that "
    "fits them in the next proof of concept.",
    "production": "For {model} on {gpus} × {gpu} with {tokens} tokens × {epochs} it is predicted to take {hours} per "
    "run ({gpuh} GPU-hours), {cost} per run and {cost_year} per year at {retrains} a year.",
    "production_nocost": "For {model} on {gpus} × {gpu} with {tokens} tokens × {epochs} it is predicted to take {hours} "
    "per run ({gpuh} GPU-hours, {gpuh_year} GPU-hours a year at {retrains} a year); give "
    "--cost-per-gpu-hour for money.",
    "production_missing": "Give --target-gpu and --dataset-tokens to predict the time and cost of production.",
    "alternative": "The next-cheapest alternative, {label}, would take {gpuh} GPU-hours per run{cost}.",
    "alternative_cheaper": "{label} is projected cheaper on the target, {gpuh} GPU-hours per run{cost}, but was not "
    "chosen: {reason}.",
    "cheaper_tied": "it is tied with the recommendation within the noise, and {by} decided",
    "cheaper_measured": "on the PoC hardware, which is the target's, it was measured slower beyond the noise",
    "quality_poc_only": "Quality was measured on the PoC model ({poc}) only; the production model's quality is not "
    "predicted here, the pilot measures it.",
    "alternative_none": "No other measured combination both met the target and fits the target GPUs.",
    "tradeoff": "The recommendation gives up {tradeoff}.",
    "tradeoff_none": "The recommendation gives up nothing measurable against the other runs.",
    "uncalibrated": "The time model for {gpu} has not been calibrated by runs on it (ftopt bench --gpu {gpu}): it "
    "uses the default constants ({figures}); its per-step overheads count as zero, so a small model is predicted "
    "too fast; the pilot measures them.",
    "tc_figures": "MFU {mfu}, {kernel} µs per operator, fixed {fixed} ms per step{zero}",
    "tc_at_bound": " {n} of them sat on a bound of the fit (the runs could not tell them apart), so treat the "
    "projected times with care.",
    "calibrated_with": "The time model for {gpu} uses constants calibrated on {runs} from {sources} ({date}): "
    "{figures}.",
    "tradeoff_quality": "{delta} on {metric} against {label}, the best-scoring run",
    "tradeoff_time": "{pct} more time, beyond the noise, than the fastest run on the same number of GPUs ({label}, "
    "{met})",
    "calibration": "The time model was calibrated on {fit} runs: each combination's step time, predicted by a fit "
    "on the others, is off by {med} (median) and {worst} at worst{rho}{pairs}.",
    "calibration_rho": "; rank correlation (Spearman) {rho}",
    "calibration_pairs": "; {ordered}/{compared} pairs of combinations more than 10% apart are ordered right",
    # point 4: the plan's pick against the measured pick
    "p_verified": "<b>Is the recommendation verified?</b> {basis} {verdict}{tie} {plan_def}",
    "basis_measured": "The choice went by GPU-seconds per epoch measured on {hardware}: each run's median step time "
    "with its spread (interquartile range), the first {warmup} left out as warm-up (one-off allocations and "
    "kernel selection); runs whose spreads overlap are a tie.",
    "repeats_pooled": " Repeats of one combination count as one candidate, their steady steps pooled into one median "
    "and spread: {items}.",
    "repeat_item": "{label}, {runs} pooled over {steps} steps",
    "basis_projected": "The PoC differs from the target in {because}, so the choice among the runs that met the bar "
    "went by the planner's projected GPU-hours on the target (calibrated where runs on {gpu} were stored), not by PoC "
    "seconds (projections within {pct} of each other, the time model's error on {gpu}, are a tie).",
    "diff_gpu": "its GPU ({poc}, not {target})",
    "diff_model": "its model ({poc}, not {target})",
    "diff_gpus": "its GPU count ({poc}, not {target})",
    "plan_def": "(The plan's pick is what the planner recommends on {gpu} among the measured combinations.)",
    "verified": "The plan's pick, {plan}, is also the measured pick: the recommendation is verified.",
    "why_quality": "The plan's pick was {plan}, but it missed the quality bar ({value}); the measurement recommends "
    "{best} instead.",
    "why_unmeasured": "The plan's pick was {plan}, but its run did not measure {metric}, so it could not be held to "
    "the quality bar; the measurement recommends {best} instead.",
    "why_failed": "The plan's pick was {plan}, but its run did not finish ({status}); the measurement recommends {best} "
    "instead.",
    "why_slower": "The plan's pick was {plan}, but it was measured {pct} costlier than {best}, beyond the step-time "
    "spread of both runs; the measurement overrides the plan.",
    "why_tie": "The plan's pick was {plan}; it is tied with {best} within the noise, and {by} decided for {best}.",
    "plan_none": "No run carries the plan's prediction, so there is no plan's pick to check.",
    "tie_note": " Tied with it within the noise: {others}; {by} decided.",
    "by_quality": "the higher quality",
    "by_memory": "the lower measured peak memory",
    "by_plan": "the plan's prediction for the target hardware",
    "no_runs": "No run finished successfully, so nothing can be recommended from measurements. Failed runs: {failed}.",
    # tables
    "results": "Measured results (PoC)",
    "col_combination": "combination",
    "col_gpus": "GPUs",
    "col_status": "status",
    "col_peak": "measured peak per GPU",
    "col_pred": "predicted peak",
    "col_epoch": "time per epoch",
    "col_spread": "step-time spread",
    "col_gpuh": "GPU-hours per epoch",
    "col_loss": "eval loss",
    "col_ppl": "perplexity",
    "col_met": "meets target",
    "col_cost": "cost per epoch",
    "yes": "yes",
    "no": "no",
    "met": "met",
    "not_met": "not met",
    "not_measured": "not measured",
    "recommended": "recommended",
    "status_ok": "ok",
    "status_oom": "out of memory",
    "status_error": "error",
    "status_failed": "failed (no metrics)",
    "padded_rows": "Predicted peaks assume every sequence is --seq-len tokens long. Runs with --batching padded (the "
    "default) pad each micro-batch only to its longest sequence, so on shorter data their measured peak is below the "
    "prediction.",
    "production_h": "Production projection",
    "production_assume": "Predicted by the planner for {model} on {gpus} × {gpu} ({precision}, sequence length {seq_len}, "
    "micro-batch {micro_batch}), {tokens} tokens × {epochs}, {retrains} a year.",
    "shape_default": "The sequence length and micro-batch are the plan's defaults for {gpu}, not the PoC's; "
    "--target-seq-len and --target-micro-batch change them.",
    "col_fits": "fits GPU memory",
    "col_hours": "hours per run",
    "col_gpuh_run": "GPU-hours per run",
    "col_gpuh_year": "GPU-hours per year",
    "col_cost_run": "cost per run",
    "col_cost_year": "cost per year",
    "col_budget": "within time budget",
    "roadmap_h": "Roadmap",
    "col_gpuh_stage": "GPU-hours",
    "col_cost_stage": "cost",
    "col_stage": "stage",
    "col_basis": "basis",
    "col_decides": "what it decides",
    "col_stop": "stop if",
    "measured": "measured",
    "predicted": "predicted",
    "stage_poc": "PoC",
    "stage_pilot": "pilot",
    "stage_production": "production (per year)",
    "decides_poc": "which combination meets the quality bar at the lowest cost",
    "stop_poc": "no run meets the quality bar",
    "decides_pilot": "whether quality holds on {pct} of the real data (one epoch on the target GPUs) and whether the "
    "predicted time and memory are right",
    "stop_pilot": "quality below the bar, or step time more than {x}× the prediction",
    "decides_production": "the yearly budget for {retrains}",
    "stop_production": "a run exceeds the time budget, or the yearly cost exceeds what the task is worth",
    # charts
    "charts": "Charts",
    "chart_memory": "Predicted memory breakdown per GPU (bars) and measured peak (black marker)",
    "chart_pareto": "GPU-seconds per epoch against peak memory; the line joins the Pareto front of the runs that met "
    "the quality target (faded: runs that did not meet it or did not measure it), the star is the recommended run",
    "chart_quality": "Task quality per combination, with the quality target",
    "chart_parity": "Predicted against measured peak memory",
    "ax_mib_per_gpu": "MiB per GPU",
    "ax_peak": "measured peak MiB per GPU",
    "ax_gpu_seconds": "GPU-seconds per epoch",
    "ax_predicted": "predicted peak MiB",
    "ax_measured": "measured peak MiB",
    "lg_pareto": "Pareto front",
    "lg_capacity": "GPU memory",
    "lg_recommended": "recommended",
    "lg_exact": "exact",
    "lg_target": "target",
    "ax_loss": "eval loss (lower is better)",
    "ax_metric": "{metric} (higher is better)",
    "ax_metric_low": "{metric} (lower is better)",
    "chart_nothing": "nothing learned",
    "cat_weights": "weights",
    "cat_master_weights": "master weights",
    "cat_optimizer_states": "optimizer states",
    "cat_gradients": "gradients",
    "cat_activations": "activations",
    "cat_logits_loss": "logits and loss",
    "cat_engine_buffers": "engine buffers",
    "cat_temporaries": "temporaries",
    "m_analytic": "analytic",
    "m_traced": "traced",
    "footer": "Generated by ftopt. Predictions are per GPU; measured values come from the runs listed.",
}

TEXT: dict[str, dict[str, str]] = {"en": EN, "ja": JA}
LANGS = tuple(TEXT)

METRIC_NAMES: dict[str, dict[str, str]] = {
    "en": {
        "exact_match": "exact match",
        "token_f1": "token F1",
        "rouge_l": "ROUGE-L",
        "label_accuracy": "label accuracy",
        "eval_loss": "eval loss",
        "perplexity": "perplexity",
    },
    "ja": {
        "exact_match": "完全一致率",
        "token_f1": "トークンF1",
        "rouge_l": "ROUGE-L",
        "label_accuracy": "ラベル正解率",
        "eval_loss": "評価損失",
        "perplexity": "パープレキシティ",
    },
}


def plural(n: float, word: str, lang: str) -> str:
    """'1 GPU', '2 GPUs', '0.5 epochs' in English; Japanese has no plural and the template places the counter word
    (GPU 2台, 2エポック), so only the number."""
    if lang == "ja":
        return f"{n:g}"
    return f"{n:g} {word}" + ("" if n == 1 else "s")


def metric_name(metric: str, lang: str) -> str:
    """The reader's word for a metric; a user metric keeps its module:function name."""
    return METRIC_NAMES[lang].get(metric, metric)
