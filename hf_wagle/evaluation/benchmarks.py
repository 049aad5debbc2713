"""Whole-benchmark runs behind `hf-wagle evaluate`, and the forget-vs-utility plot.

Each run returns numbers only (never the data's text) plus a `summary` with one forget number and one utility
number, the two axes of the plot:

* `tofu`, `offline`: forget = forget quality when retain-model truth ratios are given, else the forget split's mean
  answer probability; utility = model utility (TOFU's 9 numbers; `offline` has only the retain split, so the
  harmonic mean of its 3).
* `wmdp`: forget = mean WMDP accuracy over the subsets; utility = MMLU accuracy when MMLU data is given.
* `muse`: forget = VerbMem ROUGE-L F1 on the forget set; utility = KnowMem ROUGE-L recall on the retain set.
"""

from __future__ import annotations

import math

from ..options import DEFAULT_PROMPT_TEMPLATE

BENCHMARKS = ("tofu", "wmdp", "muse", "offline")


def _head(dataset, limit: int | None):
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def _mean(values) -> float:
    return sum(values) / len(values)


def run_benchmark(benchmark: str, model, tokenizer, data=None, *, forget_split: str = "forget10",
                  retain_model_truth_ratios=None, utility_data=None, limit: int | None = None, batch_size: int = 16,
                  max_new_tokens: int | None = None, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                  mcq_style: str = "letter") -> dict:
    """Evaluate `model` on one benchmark (see the module docstring). `data` is a Hub name or a local folder
    (ignored by `offline`, which rebuilds the fictitious world of `hf_wagle.world`). `mcq_style` ("letter" or
    "cloze", see `hf_wagle.evaluation.mcq`) is how `wmdp` scores its multiple-choice questions."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    from .tofu import tofu_report

    if benchmark in ("tofu", "offline"):
        if benchmark == "offline":
            from ..world import make_world

            world = make_world()
            splits = {"forget": world["forget"], "retain": world["retain"]}
        else:
            from .loaders import load_tofu

            tofu = load_tofu(data or "locuslab/TOFU", forget_split)
            splits = {"forget": tofu["forget_eval"], "retain": tofu["retain_eval"],
                      "real_authors": tofu["real_authors"], "world_facts": tofu["world_facts"]}
        splits = {k: _head(v, limit) for k, v in splits.items()}
        report = tofu_report(model, tokenizer, **splits, retain_model_truth_ratios=retain_model_truth_ratios,
                             prompt_template=prompt_template, batch_size=batch_size,
                             max_new_tokens=max_new_tokens or 200)
        fq = report["forget_quality"]
        utility = report["model_utility"] if report["model_utility"] is not None else report["model_utility_partial"]
        summary = {"forget": fq if fq is not None else report["table"]["forget"]["probability"],
                   "forget_label": "forget quality" if fq is not None else "forget probability",
                   "utility": utility, "utility_label": "model utility"}
        return {"benchmark": benchmark, "report": report, "summary": summary}

    if benchmark == "wmdp":
        from .loaders import load_split, load_wmdp
        from .mcq import mcq_accuracy

        subsets = load_wmdp(data or "cais/wmdp")
        accuracy = {f"wmdp_{k}": mcq_accuracy(model, tokenizer, _head(v, limit), batch_size, style=mcq_style)
                    for k, v in subsets.items()}
        utility = None
        if utility_data is not None:
            accuracy["mmlu"] = utility = mcq_accuracy(model, tokenizer, _head(load_split(utility_data, "all", "test"),
                                                                               limit), batch_size, style=mcq_style)
        summary = {"forget": _mean([v for k, v in accuracy.items() if k.startswith("wmdp_")]),
                   "forget_label": "WMDP accuracy", "utility": utility, "utility_label": "MMLU accuracy"}
        return {"benchmark": benchmark, "accuracy": accuracy, "summary": summary}

    from .loaders import load_muse
    from .muse import knowmem, verbmem

    muse = load_muse(data or "muse-bench/MUSE-News")
    scores = {
        "verbmem_forget": verbmem(model, tokenizer, _head(muse["verbmem_forget"], limit), max_new_tokens or 128,
                                  batch_size),
        "knowmem_forget": knowmem(model, tokenizer, _head(muse["knowmem_forget"], limit), prompt_template,
                                  max_new_tokens or 32, batch_size),
        "knowmem_retain": knowmem(model, tokenizer, _head(muse["knowmem_retain"], limit), prompt_template,
                                  max_new_tokens or 32, batch_size),
    }
    from .muse import mia_auc

    auc = mia_auc(model, tokenizer, list(_head(muse["privleak_forget"], limit)["text"]),
                  list(_head(muse["privleak_holdout"], limit)["text"]), batch_size=batch_size)
    means = {name: {k: _mean(v) for k, v in s.items()} for name, s in scores.items()}
    summary = {"forget": means["verbmem_forget"]["rougeL_f1"], "forget_label": "VerbMem ROUGE-L F1 (forget)",
               "utility": means["knowmem_retain"]["rougeL_recall"], "utility_label": "KnowMem ROUGE-L (retain)"}
    return {"benchmark": benchmark, "scores": means, "min_k_auc": auc, "summary": summary}


def plot_forget_vs_utility(runs: dict[str, dict], path: str, title: str = "") -> None:
    """Scatter of each run's summary (`{"before": result, "after": result}`), with an arrow from before to after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    points = {}
    for name, result in runs.items():
        s = result["summary"]
        y = s["utility"] if s["utility"] is not None else math.nan
        points[name] = (s["forget"], y)
        ax.scatter([s["forget"]], [0 if math.isnan(y) else y], s=60, label=name, zorder=3)
    if "before" in points and "after" in points:
        (x0, y0), (x1, y1) = points["before"], points["after"]
        if not (math.isnan(y0) or math.isnan(y1)):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "gray"})
    first = next(iter(runs.values()))["summary"]
    if first["forget_label"] == "forget quality" and all(p[0] > 0 for p in points.values()):
        ax.set_xscale("log")
    forget_better = "higher" if first["forget_label"] == "forget quality" else "lower"
    ax.set_xlabel(f"{first['forget_label']} ({forget_better} = forgets better)")
    ax.set_ylabel(first["utility_label"] + (" (higher = keeps more)" if first["utility"] is not None
                                            else " (not measured)"))
    ax.set_title(f"{title} forget vs utility".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
