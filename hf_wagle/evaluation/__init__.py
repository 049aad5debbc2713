"""Evaluation: TOFU, WMDP-style multiple choice and MUSE metrics, benchmark loaders, and evaluation during training.

Modules: `answers` (teacher-forced answer metrics), `scoring` (batched NLLs, log-probs, greedy generation), `rouge`,
`tofu`, `mcq` (with the optional lm-eval-harness bridge), `muse`, `loaders`, `callback` (`WagleEvalCallback`),
`benchmarks` (whole-benchmark runs and the plot behind `hf-wagle evaluate`), and `modules/` (the metrics as
`evaluate` modules, loadable offline with `evaluate.load(metric_path(name))`).
"""

from .answers import answer_metrics, summarise
from .callback import WagleEvalCallback
from .loaders import load_muse, load_tofu, load_wmdp, load_wmdp_corpora
from .mcq import lm_eval_accuracy, mcq_accuracy, mcq_predictions, mcq_prompt, mcq_scores
from .muse import auc, knowmem, mia_auc, min_k_score, privleak, verbmem
from .rouge import rouge_l
from .tofu import (forget_quality, forget_truth_ratio, format_tofu_report, kept_truth_ratio, model_utility,
                   qa_metrics, tofu_report, tofu_summary)


def metric_path(name: str) -> str:
    """Path of a shipped `evaluate` module (`"tofu_rouge_l"`, `"tofu_forget_quality"`, `"tofu_model_utility"`,
    `"mia_auc"`), for
    `evaluate.load(metric_path(name))`, which works offline."""
    from pathlib import Path

    path = Path(__file__).parent / "modules" / name
    if not (path / f"{name}.py").exists():
        available = sorted(p.name for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise ValueError(f"no shipped evaluate module {name!r}; available: {available}")
    return str(path)


__all__ = [
    "answer_metrics", "summarise", "qa_metrics", "forget_quality", "forget_truth_ratio", "kept_truth_ratio",
    "model_utility", "tofu_report", "tofu_summary", "format_tofu_report", "mcq_accuracy", "mcq_predictions",
    "mcq_prompt", "mcq_scores", "lm_eval_accuracy", "verbmem", "knowmem", "mia_auc", "min_k_score", "auc", "privleak", "rouge_l",
    "load_tofu", "load_wmdp", "load_wmdp_corpora", "load_muse", "WagleEvalCallback", "metric_path",
]
