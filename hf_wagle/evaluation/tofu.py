"""TOFU metrics (Maini et al. 2024), as the benchmark defines them.

For a question q and an answer a, `nll(a) = (1/n) sum_t -log p(a_t | a_<t, prompt(q))` over the answer tokens and EOS.

* probability        `P(a) = exp(-nll(answer))`; on real authors / world facts it is normalised over the options,
                     `P(answer) / (P(answer) + sum_j P(perturbed_j))`.
* truth ratio        `TR = exp(-mean_j nll(perturbed_j)) / exp(-nll(base))`: the geometric mean of the length-
                     normalised perturbed-answer probabilities over that of the base answer (`paraphrased_answer` on
                     forget/retain, `answer` on real authors / world facts). Forget reports `mean(min(TR, 1/TR))`,
                     the other splits `mean(max(0, 1 - TR))`.
* ROUGE-L recall     of the greedy generation against `answer` (`rouge-score`, stemming on).
* forget quality     p-value of the two-sample Kolmogorov-Smirnov test between the forget truth ratios of the
                     unlearned model and those of a model trained on the retain set only.
* model utility      harmonic mean of {probability, ROUGE-L recall, truth ratio} on retain, real authors and world
                     facts (9 numbers).
"""

from __future__ import annotations

import math

from ..data import check_prompt_template, prompt_ids
from ..options import DEFAULT_PROMPT_TEMPLATE
from .rouge import rouge_l
from .scoring import answer_nlls, greedy_generate

TOFU_SPLITS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")

EXPLANATIONS = {
    "forget_quality": "How indistinguishable the unlearned model is from one never trained on the forget set: the "
                      "p-value of a KS test between the two models' forget truth ratios. Near 1 = forgotten like a "
                      "retrained model; tiny (e.g. 1e-20) = clearly still remembers. Not a score to average.",
    "model_utility": "What the model still knows: harmonic mean of probability, ROUGE-L recall and truth ratio on the "
                     "retain, real-authors and world-facts splits. Higher is better; one collapsed number drags it "
                     "down.",
    "probability": "exp(-mean NLL) of the correct answer, teacher forced (normalised over the answer options on real "
                   "authors and world facts). Forget: lower after unlearning; others: should stay high.",
    "rougeL_recall": "Share of the correct answer's words (longest common subsequence) that the greedy answer "
                     "reproduces. Forget: lower after unlearning; others: should stay high.",
    "truth_ratio": "Compares the wrong (perturbed) answers with the right one, both in the same wording. Forget "
                   "reports mean(min(TR, 1/TR)): near 1 = no preference between right and wrong, as if never learned. "
                   "Other splits report mean(max(0, 1 - TR)): high = the right answer is clearly preferred.",
}


def _check_qa(dataset, what: str, need_perturbed: bool = False) -> None:
    columns = set(getattr(dataset, "column_names", None) or [])
    missing = {"question", "answer"} - columns
    if need_perturbed:
        missing |= {"perturbed_answer"} - columns
    if missing:
        raise ValueError(f"{what} lacks the column(s) {sorted(missing)}; it has {sorted(columns)}")
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty")
    if "perturbed_answer" in columns:
        for i, p in enumerate(dataset["perturbed_answer"]):
            if isinstance(p, str) or not p or not all(isinstance(x, str) for x in p):
                raise ValueError(f"{what}: `perturbed_answer` of row {i} must be a non-empty list of strings")


def qa_metrics(model, tokenizer, dataset, prompt_template: str = DEFAULT_PROMPT_TEMPLATE, batch_size: int = 32,
               max_new_tokens: int = 200, max_length: int | None = None, generate: bool = True,
               truth_ratio_base: str | None = None) -> dict[str, list[float]]:
    """Per-example TOFU metrics of a QA dataset (`question`, `answer`, optional `paraphrased_answer`,
    `perturbed_answer`).

    Returns lists (one value per row):

    * `probability`: `exp(-nll(answer))`;
    * `rougeL_recall` (if `generate`): ROUGE-L recall of the greedy answer (`max_new_tokens`) against `answer`;
    * with `perturbed_answer`: `truth_ratio` `exp(-mean_j nll(perturbed_j)) / exp(-nll(base))`, where base is
      `truth_ratio_base` (default `paraphrased_answer` when present, else `answer`), and `probability_normalised`
      `P(answer) / (P(answer) + sum_j P(perturbed_j))`.

    Batches change nothing: the values equal those computed one example at a time.
    """
    check_prompt_template(prompt_template, tokenizer)
    _check_qa(dataset, "dataset")
    columns = set(dataset.column_names)
    has_perturbed = "perturbed_answer" in columns
    if truth_ratio_base is None:
        truth_ratio_base = "paraphrased_answer" if "paraphrased_answer" in columns else "answer"
    if has_perturbed and truth_ratio_base not in columns:
        raise ValueError(f"truth_ratio_base {truth_ratio_base!r} is not a column of the dataset")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")

    rows = list(dataset)
    pairs = [(r["question"], r["answer"]) for r in rows]
    if has_perturbed:
        for r in rows:
            pairs.append((r["question"], r[truth_ratio_base]))
            pairs += [(r["question"], p) for p in r["perturbed_answer"]]
    nll = answer_nlls(model, tokenizer, pairs, prompt_template, batch_size, max_length)
    n = len(rows)
    out = {"probability": [math.exp(-x) for x in nll[:n]]}
    if has_perturbed:
        truth_ratio, normalised, pos = [], [], n
        for r in rows:
            k = len(r["perturbed_answer"])
            base, perturbed = nll[pos], nll[pos + 1:pos + 1 + k]
            pos += 1 + k
            truth_ratio.append(truth_ratio_of(base, perturbed))
            p_true = out["probability"][len(normalised)]
            normalised.append(p_true / (p_true + sum(math.exp(-x) for x in perturbed)))
        out["truth_ratio"], out["probability_normalised"] = truth_ratio, normalised
    if generate:
        prompts = [prompt_ids(tokenizer, prompt_template, r["question"]) for r in rows]
        generations = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)
        out["rougeL_recall"] = rouge_l([r["answer"] for r in rows], generations)["recall"]
    return out


def truth_ratio_of(base_nll: float, perturbed_nlls: list[float]) -> float:
    """`TR = exp(-mean_j nll(perturbed_j)) / exp(-nll(base))` from the answers' token-mean NLLs."""
    return math.exp(base_nll - sum(perturbed_nlls) / len(perturbed_nlls))


def forget_truth_ratio(truth_ratios: list[float]) -> float:
    """Forget split: `mean(min(TR, 1/TR))` (1 = no preference between right and wrong answers)."""
    _check_numbers(truth_ratios, "truth_ratios", positive=True)
    return sum(min(t, 1.0 / t) for t in truth_ratios) / len(truth_ratios)


def kept_truth_ratio(truth_ratios: list[float]) -> float:
    """Retain / real authors / world facts: `mean(max(0, 1 - TR))` (high = the right answer is preferred)."""
    _check_numbers(truth_ratios, "truth_ratios", positive=True)
    return sum(max(0.0, 1.0 - t) for t in truth_ratios) / len(truth_ratios)


def forget_quality(truth_ratios: list[float], retain_model_truth_ratios: list[float]) -> float:
    """`scipy.stats.ks_2samp(truth_ratios, retain_model_truth_ratios).pvalue` (two-sided, scipy's default method).

    Both arguments are per-example forget truth ratios: of the unlearned model, and of a model trained on the retain
    set only. (The KS statistic does not change when both samples are mapped by `TR -> 1/TR`.)
    """
    from scipy.stats import ks_2samp

    _check_numbers(truth_ratios, "truth_ratios")
    _check_numbers(retain_model_truth_ratios, "retain_model_truth_ratios")
    return float(ks_2samp(truth_ratios, retain_model_truth_ratios).pvalue)


def model_utility(numbers) -> float:
    """Harmonic mean `k / sum_i (1 / x_i)` of the utility numbers (TOFU: 9 of them); 0 if any number is 0."""
    values = list(numbers.values()) if isinstance(numbers, dict) else list(numbers)
    _check_numbers(values, "model utility numbers")
    if any(v < 0 for v in values):
        raise ValueError("model utility numbers must be >= 0")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _check_numbers(values, what: str, positive: bool = False) -> None:
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers")
    if positive and any(v <= 0 for v in values):
        raise ValueError(f"{what} must be > 0")


def tofu_summary(split_metrics: dict[str, dict[str, list[float]]],
                 retain_model_truth_ratios: list[float] | None = None) -> dict:
    """The TOFU table from per-example `qa_metrics` of each split (keys among `forget`, `retain`, `real_authors`,
    `world_facts`; only `forget` is required).

    Returns `{"table": {split: {metric: value}}, "forget_quality": p or None, "model_utility": hm or None,
    "utility_numbers": {...}, "forget_truth_ratios": [...], "explanations": {...}}`. `model_utility` is the TOFU
    number only when all three utility splits are present; `model_utility_partial` is the same harmonic mean over
    the numbers available.
    """
    unknown = set(split_metrics) - set(TOFU_SPLITS)
    if unknown or "forget" not in split_metrics:
        raise ValueError(f"splits must include 'forget' and be among {TOFU_SPLITS}; got {sorted(split_metrics)}")
    table: dict[str, dict[str, float]] = {}
    for split, m in split_metrics.items():
        if "truth_ratio" not in m:
            raise ValueError(f"split {split!r} has no truth ratios (it needs `perturbed_answer`)")
        row = {}
        normalise = split in ("real_authors", "world_facts")
        probs = m["probability_normalised"] if normalise else m["probability"]
        row["probability"] = sum(probs) / len(probs)
        if "rougeL_recall" in m:
            row["rougeL_recall"] = sum(m["rougeL_recall"]) / len(m["rougeL_recall"])
        row["truth_ratio"] = (forget_truth_ratio if split == "forget" else kept_truth_ratio)(m["truth_ratio"])
        table[split] = row
    utility = {f"{split}/{k}": v for split in UTILITY_SPLITS if split in table for k, v in table[split].items()}
    report = {
        "table": table,
        "forget_quality": None,
        "utility_numbers": utility,
        "model_utility": model_utility(utility) if len(utility) == 9 else None,
        "model_utility_partial": model_utility(utility) if utility else None,
        "forget_truth_ratios": list(split_metrics["forget"]["truth_ratio"]),
        "explanations": dict(EXPLANATIONS),
    }
    if retain_model_truth_ratios is not None:
        report["forget_quality"] = forget_quality(report["forget_truth_ratios"], retain_model_truth_ratios)
    else:
        report["explanations"]["forget_quality"] += " (Not computed: no retain-model truth ratios were given.)"
    return report


def tofu_report(model, tokenizer, forget, retain=None, real_authors=None, world_facts=None,
                retain_model_truth_ratios: list[float] | None = None, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                batch_size: int = 32, max_new_tokens: int = 200, generate: bool = True) -> dict:
    """Compute `qa_metrics` on each given split and summarise them as the TOFU table (see `tofu_summary`).

    Truth ratios use `paraphrased_answer` as the base on forget/retain and `answer` on real authors / world facts,
    as TOFU does. The report holds numbers only, never the data's text.
    """
    splits = {"forget": forget, "retain": retain, "real_authors": real_authors, "world_facts": world_facts}
    splits = {k: v for k, v in splits.items() if v is not None}
    for name, data in splits.items():  # every check before any model call
        _check_qa(data, f"{name} split", need_perturbed=True)
        if name in ("forget", "retain") and "paraphrased_answer" not in data.column_names:
            raise ValueError(f"{name} split lacks `paraphrased_answer`, the truth ratio's base on this split")
    if retain_model_truth_ratios is not None:
        _check_numbers(retain_model_truth_ratios, "retain_model_truth_ratios")
    metrics = {
        name: qa_metrics(model, tokenizer, data, prompt_template, batch_size, max_new_tokens, generate=generate,
                         truth_ratio_base="paraphrased_answer" if name in ("forget", "retain") else "answer")
        for name, data in splits.items()
    }
    return tofu_summary(metrics, retain_model_truth_ratios)


def format_tofu_report(report: dict) -> str:
    """A plain-text table with a one-line explanation under each number."""
    lines = []
    fq = report.get("forget_quality")
    lines.append(f"forget quality: {'not computed' if fq is None else f'{fq:.3g}'}")
    lines.append(f"  {report['explanations']['forget_quality']}")
    mu = report.get("model_utility")
    if mu is not None:
        lines.append(f"model utility: {mu:.4f}")
    elif report.get("model_utility_partial") is not None:
        lines.append(f"model utility (over {len(report['utility_numbers'])} of TOFU's 9 numbers): "
                     f"{report['model_utility_partial']:.4f}")
    lines.append(f"  {report['explanations']['model_utility']}")
    lines.append("")
    metrics = ("probability", "rougeL_recall", "truth_ratio")
    lines.append("split".ljust(14) + "".join(m.rjust(16) for m in metrics))
    for split, row in report["table"].items():
        lines.append(split.ljust(14) + "".join(
            (f"{row[m]:.4f}" if m in row else "-").rjust(16) for m in metrics))
    lines.append("")
    for m in metrics:
        lines.append(f"{m}: {report['explanations'][m]}")
    return "\n".join(lines)
