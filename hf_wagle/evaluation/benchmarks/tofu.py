"""TOFU (`locuslab/TOFU`): forget = forget quality when the retain model's forget truth ratios are given, else the
forget split's mean answer probability; utility = model utility (the harmonic mean of TOFU's 9 numbers)."""

from __future__ import annotations

from .registry import BenchmarkArgs, BenchmarkResult, register_benchmark


def tofu_result(model, tokenizer, splits: dict, args: BenchmarkArgs) -> BenchmarkResult:
    """`tofu_report` on `splits` (forget, retain and, when present, real_authors and world_facts), summarised:
    forget quality or forget probability; model utility, or the harmonic mean of the numbers there are."""
    from ..tofu import tofu_report

    report = tofu_report(model, tokenizer, **{k: args.head(v) for k, v in splits.items()},
                         retain_model_truth_ratios=args.retain_model_truth_ratios,
                         prompt_template=args.prompt_template, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens or 200)
    fq = report["forget_quality"]
    utility = report["model_utility"] if report["model_utility"] is not None else report["model_utility_partial"]
    return BenchmarkResult(forget=fq if fq is not None else report["table"]["forget"]["probability"],
                           forget_label="forget quality" if fq is not None else "forget probability",
                           utility=utility, utility_label="model utility", details={"report": report})


@register_benchmark("tofu")
def tofu(model, tokenizer, args: BenchmarkArgs) -> BenchmarkResult:
    """TOFU: forget quality (or forget probability) vs model utility."""
    from ..loaders import load_tofu

    data = load_tofu(args.data or "locuslab/TOFU", args.forget_split)
    splits = {"forget": data["forget_eval"], "retain": data["retain_eval"], "real_authors": data["real_authors"],
              "world_facts": data["world_facts"]}
    return tofu_result(model, tokenizer, splits, args)
