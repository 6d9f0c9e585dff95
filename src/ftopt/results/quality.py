"""Task quality of a fine-tuned model on held-out prompt+completion rows, the figures a PoC decides on:

- exact match (whitespace-trimmed), token F1 (SQuAD's bag-of-tokens overlap, Rajpurkar et al. 2016),
- ROUGE-L F-measure for free text (Google's `rouge-score` package, Lin 2004),
- accuracy over a label set when the references are a small set of labels (classification as generation),
- any user metric `module:function` taking (prediction, reference) and returning a float,
- eval loss and perplexity (exp of the mean token cross-entropy) always.

Generation is greedy and capped at `max_examples` rows (it is the slow part), with progress shown.
`QualityTarget` is the user's bar, `METRIC>=VALUE` or `METRIC<=VALUE`.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ftopt.spec.errors import FtoptError

MetricFn = Callable[[str, str], float]
# References count as a label set when there are at most this many distinct ones and each recurs (on average at
# least twice): a sentiment or topic task, not free text.
MAX_LABELS = 20
LOSS_METRICS = ("eval_loss", "perplexity")
PROGRESS_EVERY = 16  # examples between progress lines


# ---- per-example metrics ----------------------------------------------------------------------------------------
def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over the multiset of lower-cased whitespace tokens."""
    p, r = prediction.lower().split(), reference.lower().split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), as `rouge-score` computes it."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


BUILTIN: dict[str, MetricFn] = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l}


def label_set(references: list[str]) -> list[str] | None:
    """The distinct labels when the references look like classification labels, else None."""
    labels = sorted({r.strip() for r in references})
    if len(labels) <= MAX_LABELS and len(references) >= 2 * len(labels):
        return labels
    return None


def label_accuracy(predictions: list[str], references: list[str], labels: list[str]) -> float:
    """Share of rows whose prediction starts with its reference label (the longest label it starts with wins,
    case-insensitive); a prediction that names no label is wrong."""
    by_length = sorted(labels, key=len, reverse=True)
    hits = 0
    for p, r in zip(predictions, references):
        chosen = next((lab for lab in by_length if p.strip().lower().startswith(lab.lower())), None)
        hits += chosen is not None and chosen == r.strip()
    return hits / len(references) if references else 0.0


def check_target_metric(target: QualityTarget, user_metrics: tuple[str, ...] = ()) -> None:
    """A target on a metric no run can measure fails before any run (a typo cost a whole sweep): the losses, the
    built-in generation metrics, label accuracy and the user's --metric functions are what runs record."""
    known = (*LOSS_METRICS, *BUILTIN, "label_accuracy", *user_metrics)
    if target.metric not in known:
        raise FtoptError(
            f"--quality-target names the metric '{target.metric}', which no run measures; use one of {', '.join(known)}."
        )


def load_user_metric(ref: str) -> MetricFn:
    """`module:function` -> the function; one clear sentence when it cannot be used."""
    if not re.fullmatch(r"[\w.]+:\w+", ref):
        raise FtoptError(f"--metric must be module:function (e.g. mymetrics:bleu), got '{ref}'.")
    module, name = ref.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise FtoptError(f"--metric {ref}: cannot import {module} ({e}).") from None
    except AttributeError:
        raise FtoptError(f"--metric {ref}: {module} has no function {name}.") from None
    if not callable(fn):
        raise FtoptError(f"--metric {ref}: {name} is not callable.")
    return fn


def score(predictions: list[str], references: list[str], user_metrics: tuple[str, ...] = ()) -> dict[str, float]:
    """Mean of each metric over the rows, plus label accuracy when the references form a label set."""
    fns = {**BUILTIN, **{ref: load_user_metric(ref) for ref in user_metrics}}
    out: dict[str, float] = {}
    for name, fn in fns.items():
        vals = []
        for p, r in zip(predictions, references):
            v = fn(p, r)
            if not isinstance(v, (int, float)) or math.isnan(float(v)):
                raise FtoptError(f"The metric {name} returned {v!r} for one example; it must return a number.")
            vals.append(float(v))
        out[name] = sum(vals) / len(vals) if vals else 0.0
    labels = label_set(references)
    if labels is not None:
        out["label_accuracy"] = label_accuracy(predictions, references, labels)
    return out


def perplexity(eval_loss: float | None) -> float | None:
    """exp(mean token cross-entropy in nats); inf beyond float range."""
    if eval_loss is None:
        return None
    return math.exp(eval_loss) if eval_loss < 700 else float("inf")


# ---- generation -------------------------------------------------------------------------------------------------
def generate(
    model, tokenizer, rows: list[dict], device, log: Callable[[str], None], synced: bool = False, batch: int = 1
) -> list[str]:
    """Greedy completions of each row's prompt, up to the reference's length in tokens + 2, `batch` rows per
    generate() call (left-padded, so every row's new tokens start at the same position). A row's completion is the
    one it gets alone, up to the rounding of batched arithmetic (the demo's trained models give identical strings,
    benchmarks/generation_speed.py): greedy decoding picks each token from that row's prefix only, and the batch
    runs to its longest row's cap, each row cut back to its own. `synced`: the ranks generate with a sharded
    model, each forward a collective, so a rank that finishes early keeps stepping until all have (generate's
    synced_gpus; transformers sets it itself only for ZeRO-3 and its own FSDP)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    size = max(1, batch) if pad is not None else 1  # no pad token: one row at a time, nothing to pad
    preds: list[str] = []
    with torch.no_grad():
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            prompts = [tokenizer(str(r["prompt"]))["input_ids"] for r in chunk]
            caps = [
                len(tokenizer(str(r["completion"]).strip(), add_special_tokens=False)["input_ids"]) + 2 for r in chunk
            ]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max(caps),
                do_sample=False,
                # the trained model's config has use_cache=False (training needs none, GC forbids it); generation
                # without it re-runs the whole sequence for every new token: O(n^2) forwards instead of O(n)
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                synced_gpus=True if synced else None,  # None: transformers decides (ZeRO-3: on)
            )
            new = out[:, width:]
            preds += [tokenizer.decode(new[i, :cap], skip_special_tokens=True).strip() for i, cap in enumerate(caps)]
            done = len(preds)
            if done // PROGRESS_EVERY > (done - len(chunk)) // PROGRESS_EVERY or done == len(rows):
                log(f"quality: generated {done}/{len(rows)} held-out completions")
    return preds


def evaluate_generation(
    model,
    tokenizer,
    rows: list[dict],
    device,
    max_examples: int,
    metrics: tuple[str, ...] = (),
    *,
    log: Callable[[str], None] = lambda m: None,
    synced: bool = False,
    batch: int = 1,
) -> dict:
    """Generate completions for the first `max_examples` held-out rows and score them.

    Returns {"examples": n, "exact_match": ..., "token_f1": ..., "rouge_l": ..., ["label_accuracy"], user metrics}
    or {} when there is nothing to generate. Under ZeRO-3 the model is *not* gathered whole on any rank (that needs
    the full model's memory per GPU, which sharding was chosen to avoid): DeepSpeed's hooks gather one layer at a
    time, and generate() keeps the ranks in step (synced_gpus: set by transformers when ZeRO-3 runs on several
    ranks, by `synced` for an FSDP2 model too large to gather, ftopt.train.fsdp_quality)."""
    rows = rows[:max_examples]
    if not rows:
        return {}
    for ref in metrics:
        load_user_metric(ref)  # fail before the slow part
    was_training = model.training
    model.eval()
    rank, world = _generating_ranks(synced)
    preds = generate(model, tokenizer, rank_rows(rows, rank, world), device, log, synced, batch)
    if world > 1:
        preds = interleave(_all_gather(preds, world), len(rows))
    if was_training:
        model.train()
    return {"examples": len(rows), **score(preds, [str(r["completion"]) for r in rows], tuple(metrics))}


def _generating_ranks(synced: bool) -> tuple[int, int]:
    """(rank, ranks) among which the rows are split: the ranks of a ZeRO-3 run or of ftopt's FSDP2 ranks (`synced`),
    which generate in step (every forward gathers each layer from all of them) and so can each complete different
    rows in the same forwards (synced_gpus was made for this: Seq2SeqTrainer's evaluation under ZeRO-3 gives every
    rank its own batch). Each rank then generates 1/N of the rows instead of all of them. (0, 1) elsewhere."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0, 1
    from transformers.integrations import is_deepspeed_zero3_enabled

    return (dist.get_rank(), dist.get_world_size()) if synced or is_deepspeed_zero3_enabled() else (0, 1)


def rank_rows(rows: list[dict], rank: int, world: int) -> list[dict]:
    """This rank's rows, rank::world, padded with the last row so that every rank calls generate() as often as the
    others (each call is collective under ZeRO-3; a rank that stopped early would leave the others waiting)."""
    share = rows[rank::world]
    return share + [rows[-1]] * (-(-len(rows) // world) - len(share))


def interleave(parts: list[list[str]], total: int) -> list[str]:
    """The ranks' completions (each rank's rank_rows share, in rank order) back in the rows' order, padding dropped."""
    world = len(parts)
    return [parts[i % world][i // world] for i in range(total)]


def _all_gather(preds: list[str], world: int) -> list[list[str]]:
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, preds)
    return parts


# ---- the user's quality bar -------------------------------------------------------------------------------------
class QualityTarget(BaseModel):
    """`exact_match>=0.5`, `eval_loss<=1.2`, `mymod:fn>=0.3`: the metric a run must meet, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metric: str
    op: Literal[">=", "<="]
    value: float
    source: str = "--quality-target"

    @classmethod
    def parse(cls, text: str, source: str = "--quality-target") -> QualityTarget:
        m = re.fullmatch(r"\s*([\w.:]+)\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*", text or "")
        if not m:
            raise FtoptError(
                f"--quality-target must look like METRIC>=VALUE or METRIC<=VALUE (e.g. exact_match>=0.5), got '{text}'."
            )
        return cls(metric=m.group(1), op=m.group(2), value=float(m.group(3)), source=source)

    @property
    def higher_is_better(self) -> bool:
        return self.op == ">="

    def __str__(self) -> str:
        return f"{self.metric} {'≥' if self.op == '>=' else '≤'} {self.value:g}"

    def met(self, measured) -> bool:
        """Whether a run's figures (ftopt.results.rows.Measured) meet the bar; a run without the metric does not."""
        v = measured.value(self.metric)
        if v is None:
            return False
        return v >= self.value if self.higher_is_better else v <= self.value
