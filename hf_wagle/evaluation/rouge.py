"""ROUGE-L with `rouge-score` (the package TOFU and MUSE use; `evaluate.load("rouge")` needs the Hub at run time)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - declared dependency
        raise ImportError("ROUGE-L needs the `rouge-score` package: pip install rouge-score") from e
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(references: list[str], predictions: list[str], use_stemmer: bool = True) -> dict[str, list[float]]:
    """Per pair: ROUGE-L `recall = LCS / |reference|`, `precision = LCS / |prediction|` and their F1
    `2 P R / (P + R)`, over `rouge-score`'s tokens (lower-cased alphanumeric words, Porter-stemmed by default)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    scorer = _scorer(use_stemmer)
    scores = [scorer.score(ref, pred)["rougeL"] for ref, pred in zip(references, predictions)]
    return {"recall": [s.recall for s in scores], "precision": [s.precision for s in scores],
            "f1": [s.fmeasure for s in scores]}
