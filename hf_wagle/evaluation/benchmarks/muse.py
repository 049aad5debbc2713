"""MUSE (`muse-bench/MUSE-News`, `MUSE-Books`): forget = VerbMem ROUGE-L F1 on the forget set; utility = KnowMem
ROUGE-L recall on the retain set. The details also hold KnowMem on the forget set and the Min-K% membership AUC
(forget vs holdout)."""

from __future__ import annotations

from .registry import BenchmarkArgs, BenchmarkResult, register_benchmark


@register_benchmark("muse")
def muse(model, tokenizer, args: BenchmarkArgs) -> BenchmarkResult:
    """MUSE: VerbMem on the forget set vs KnowMem on the retain set."""
    from ..loaders import load_muse
    from ..muse import knowmem, mia_auc, verbmem

    data = load_muse(args.data or "muse-bench/MUSE-News")
    scores = {
        "verbmem_forget": verbmem(model, tokenizer, args.head(data["verbmem_forget"]), args.max_new_tokens or 128,
                                  args.batch_size),
        "knowmem_forget": knowmem(model, tokenizer, args.head(data["knowmem_forget"]), args.prompt_template,
                                  args.max_new_tokens or 32, args.batch_size),
        "knowmem_retain": knowmem(model, tokenizer, args.head(data["knowmem_retain"]), args.prompt_template,
                                  args.max_new_tokens or 32, args.batch_size),
    }
    auc = mia_auc(model, tokenizer, list(args.head(data["privleak_forget"])["text"]),
                  list(args.head(data["privleak_holdout"])["text"]), batch_size=args.batch_size)
    means = {name: {k: sum(v) / len(v) for k, v in s.items()} for name, s in scores.items()}
    return BenchmarkResult(forget=means["verbmem_forget"]["rougeL_f1"], forget_label="VerbMem ROUGE-L F1 (forget)",
                           utility=means["knowmem_retain"]["rougeL_recall"], utility_label="KnowMem ROUGE-L (retain)",
                           details={"scores": means, "min_k_auc": auc})
