"""Evaluation measures a model it is given; it never trains one (`hf_wagle.experiments` holds what trains in order to
measure).

Modules: `answers` (teacher-forced answer metrics), `scoring` (batched NLLs, log-probs, greedy generation), `rouge`,
`tofu`, `mcq` (with the optional lm-eval-harness bridge), `muse`, `loaders`, `callback` (`WagleEvalCallback`, the
metrics during training), `benchmarks` (the benchmark registry, the built-in benchmarks and the plot behind
`hf-wagle evaluate`), and `modules/` (the metrics as `evaluate` modules, loadable offline with
`evaluate.load(metric_path(name))`). The names below load on first use, so importing `hf_wagle.evaluation` or
`hf_wagle.evaluation.benchmarks` imports neither torch nor transformers.

**Benchmarks.** A benchmark is a function `run(model, tokenizer, args) -> BenchmarkResult` registered under a name
with `@register_benchmark(name)`; `BENCHMARKS` maps each name to its `BenchmarkSpec` (name, run, description).
`run_benchmark(name, model, tokenizer, ...)` and `hf-wagle evaluate --benchmark name` call it. The contract:

* `args` is a `BenchmarkArgs`: `data` (Hub name or local folder, None for the benchmark's default),
  `forget_split`, `retain_model_truth_ratios`, `utility_data`, `limit` (apply it with `args.head(dataset)`),
  `batch_size`, `max_new_tokens` (None for the benchmark's default), `prompt_template` and `mcq_style`; a benchmark
  uses the fields it needs.
* It returns a `BenchmarkResult`: one forget number and one utility number (None when not measured), each with the
  label the forget-vs-utility plot shows, and `details`, the benchmark's own report (numbers only, never the data's
  text: the results file is meant to be shared). `to_dict()` is what `hf-wagle evaluate` writes,
  `{"benchmark", **details, "summary": {"forget", "forget_label", "utility", "utility_label"}}`.
* It does not change the model, and imports torch, transformers and the metrics inside the function: registering
  then stays torch-free, so `hf-wagle --help` can list every benchmark.

Adding a benchmark is one file. This one scores answer probability on a local folder of QA rows (`forget.jsonl` and
`retain.jsonl`, each row `{"question", "answer"}`):

    from hf_wagle.evaluation import BenchmarkResult, register_benchmark


    @register_benchmark("qa_folder")
    def qa_folder(model, tokenizer, args):
        \"\"\"Answer probability on <data>/forget.jsonl vs <data>/retain.jsonl.\"\"\"
        from datasets import load_dataset

        from hf_wagle.evaluation import answer_metrics, summarise

        def probability(split):
            rows = args.head(load_dataset("json", data_files=f"{args.data}/{split}.jsonl", split="train"))
            return summarise(answer_metrics(model, tokenizer, rows, args.prompt_template, args.batch_size))[
                "probability"]

        forget, retain = probability("forget"), probability("retain")
        return BenchmarkResult(forget=forget, forget_label="forget probability", utility=retain,
                               utility_label="retain probability",
                               details={"probability": {"forget": forget, "retain": retain}})

Once the file is imported (`import my_benchmark`; the command line imports it as a plugin),
`run_benchmark("qa_folder", model, tokenizer, data="my_folder")` and
`hf-wagle evaluate --benchmark qa_folder --data my_folder` run it.
"""

from importlib import import_module

_PUBLIC = {
    **dict.fromkeys(("answer_metrics", "summarise"), ".answers"),
    "WagleEvalCallback": ".callback",
    **dict.fromkeys(("load_muse", "load_tofu", "load_wmdp", "load_wmdp_corpora"), ".loaders"),
    **dict.fromkeys(("lm_eval_accuracy", "lm_eval_scores", "mcq_accuracy", "mcq_predictions", "mcq_prompt",
                     "mcq_scores"), ".mcq"),
    **dict.fromkeys(("auc", "knowmem", "mia_auc", "min_k_score", "privleak", "verbmem"), ".muse"),
    "rouge_l": ".rouge",
    **dict.fromkeys(("forget_quality", "forget_truth_ratio", "format_tofu_report", "kept_truth_ratio", "model_utility",
                     "qa_metrics", "tofu_report", "tofu_summary"), ".tofu"),
    **dict.fromkeys(("BENCHMARKS", "BenchmarkArgs", "BenchmarkResult", "BenchmarkSpec", "get_benchmark",
                     "plot_forget_vs_utility", "register_benchmark", "run_benchmark"), ".benchmarks"),
}


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


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'hf_wagle.evaluation' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


__all__ = [*_PUBLIC, "metric_path"]
