"""WMDP (`cais/wmdp`): forget = mean multiple-choice accuracy over the subsets (chance 25%); utility = MMLU accuracy
when MMLU data is given (`utility_data`)."""

from __future__ import annotations

from .registry import BenchmarkArgs, BenchmarkResult, register_benchmark


@register_benchmark("wmdp")
def wmdp(model, tokenizer, args: BenchmarkArgs) -> BenchmarkResult:
    """WMDP: WMDP accuracy vs MMLU accuracy (with --utility-data)."""
    from ..loaders import load_split, load_wmdp
    from ..mcq import mcq_accuracy

    def accuracy_on(dataset) -> float:
        return mcq_accuracy(model, tokenizer, args.head(dataset), args.batch_size, style=args.mcq_style)

    accuracy = {f"wmdp_{k}": accuracy_on(v) for k, v in load_wmdp(args.data or "cais/wmdp").items()}
    forget = sum(accuracy.values()) / len(accuracy)
    utility = None
    if args.utility_data is not None:
        accuracy["mmlu"] = utility = accuracy_on(load_split(args.utility_data, "all", "test"))
    return BenchmarkResult(forget=forget, forget_label="WMDP accuracy", utility=utility,
                           utility_label="MMLU accuracy", details={"accuracy": accuracy})
