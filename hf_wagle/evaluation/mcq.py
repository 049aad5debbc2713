"""Zero-shot multiple choice as WMDP and MMLU score it, plus an optional bridge to lm-eval-harness.

Two styles, each scoring every choice by its log-likelihood after a prompt:

* `"letter"` (WMDP's and MMLU's): prompt `"{question}\\nA. {choices[0]}\\nB. ...\\nD. {choices[3]}\\nAnswer:"`,
  continuation `" " + letter_i`. Small models (a 135M model, say) sit at chance here: they pick one letter for
  every question.
* `"cloze"` (how lm-eval-harness scores small-model tasks such as ARC and HellaSwag): prompt
  `"Question: {question}\\nAnswer:"`, continuation `" " + choices[i]`. `acc` takes the choice with the highest
  summed log-likelihood; `acc_norm` divides each log-likelihood by the choice's length in characters first (the
  leading space not counted), as lm-eval 0.4 computes it (`pred_norm = argmax(ll_i / len(choice_i))`).

Ties go to the first choice. Accuracy = the fraction of rows whose prediction equals `answer` (an index). Chance is
1 / number of choices.
"""

from __future__ import annotations

import os
import string

from .scoring import continuation_logprob

LETTERS = string.ascii_uppercase


def mcq_prompt(question: str, choices: list[str], description: str = "", style: str = "letter") -> str:
    """The prompt a row's choices are scored after: `description + question + "\\n" + "A. c0\\nB. c1..." +
    "\\nAnswer:"` (letter style) or `description + "Question: " + question + "\\nAnswer:"` (cloze style)."""
    if style == "cloze":
        return f"{description}Question: {question}\nAnswer:"
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{description}{question}\n{options}\nAnswer:"


MCQ_STYLES = ("letter", "cloze")


def _check_mcq(dataset, style: str) -> None:
    if style not in MCQ_STYLES:
        raise ValueError(f"style must be one of {MCQ_STYLES}, got {style!r}")
    columns = set(getattr(dataset, "column_names", None) or [])
    missing = {"question", "choices", "answer"} - columns
    if missing:
        raise ValueError(f"multiple-choice data lacks the column(s) {sorted(missing)}; it has {sorted(columns)} "
                         "(expected `question`, `choices` (list of strings) and `answer` (index of the right choice))")
    if len(dataset) == 0:
        raise ValueError("multiple-choice data is empty")
    for i, (choices, answer) in enumerate(zip(dataset["choices"], dataset["answer"])):
        if isinstance(choices, str) or not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"row {i}: `choices` must be a list of 2 to {len(LETTERS)} strings")
        if style == "cloze" and not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"row {i}: cloze scoring needs every choice to be a non-empty string")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"row {i}: `answer` must be the index of the right choice (0..{len(choices) - 1}), "
                             f"got {answer!r}")


def mcq_scores(model, tokenizer, dataset, batch_size: int = 32, description: str = "",
               style: str = "letter") -> list[list[float]]:
    """Per row, the log-likelihood of each choice's continuation after `mcq_prompt` (see the module docstring)."""
    _check_mcq(dataset, style)
    pairs, sizes = [], []
    for row in dataset:
        prompt = mcq_prompt(row["question"], row["choices"], description, style)
        options = row["choices"] if style == "cloze" else LETTERS[:len(row["choices"])]
        pairs += [(prompt, " " + option) for option in options]
        sizes.append(len(row["choices"]))
    scores = continuation_logprob(model, tokenizer, pairs, batch_size)
    out, pos = [], 0
    for k in sizes:
        out.append(scores[pos:pos + k])
        pos += k
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def mcq_predictions(model, tokenizer, dataset, batch_size: int = 32, description: str = "", style: str = "letter",
                    length_normalized: bool = False) -> list[int]:
    """Index of the choice with the highest log-likelihood for every row (divided by the choice's length in
    characters first with `length_normalized`, as lm-eval's `acc_norm`)."""
    scores = mcq_scores(model, tokenizer, dataset, batch_size, description, style)
    if length_normalized:
        options = (row["choices"] if style == "cloze" else LETTERS[:len(row["choices"])] for row in dataset)
        scores = [[s / len(o) for s, o in zip(row, opts)] for row, opts in zip(scores, options)]
    return [_argmax(row) for row in scores]


def mcq_accuracy(model, tokenizer, dataset, batch_size: int = 32, description: str = "", style: str = "letter",
                 length_normalized: bool = False) -> float:
    """`(1/N) sum_i [argmax_c score_i(c) == answer_i]` with the style's score (see the module docstring)."""
    predictions = mcq_predictions(model, tokenizer, dataset, batch_size, description, style, length_normalized)
    return sum(int(p == a) for p, a in zip(predictions, dataset["answer"])) / len(predictions)


LM_EVAL_TASKS = ("wmdp_bio", "wmdp_cyber", "mmlu")


LM_EVAL_METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def lm_eval_scores(model, tokenizer=None, tasks=LM_EVAL_TASKS, adapter: str | None = None, batch_size: int = 8,
                   limit: int | None = None, device: str | None = None, include_path=None,
                   log_samples: bool = False) -> dict:
    """Run lm-eval-harness tasks and return `{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}}` (those the
    task reports), lm-eval's own numbers.

    `model` is a Hub id / local path (with `adapter`, a PEFT adapter folder loaded on top), or an in-memory model (a
    `PeftModel` included) together with its `tokenizer`. `tasks` are names lm-eval knows, names of tasks defined in
    YAML files under `include_path` (a folder or a list of folders, as `lm_eval --include_path` takes), YAML paths
    or config dicts. With `log_samples`, the result also holds `"samples": {task: [...]}`, lm-eval's per-item
    records (each choice's log-likelihood in `filtered_resps`). Needs the optional extra `hf-wagle[lm-eval]`.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("the lm-eval-harness bridge needs `lm_eval`: pip install 'hf-wagle[lm-eval]' "
                          "(or pip install lm-eval)") from e
    tasks = [tasks] if isinstance(tasks, (str, dict)) else list(tasks)
    if not tasks:
        raise ValueError("give at least one lm-eval task")
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    missing = [str(p) for p in paths if not os.path.isdir(p)]
    if missing:
        raise FileNotFoundError(f"include_path {missing[0]} is not a folder of lm-eval task YAML files")
    if isinstance(model, str):
        kwargs = {"pretrained": model, "batch_size": batch_size}
        if adapter is not None:
            kwargs["peft"] = adapter
        if device is not None:
            kwargs["device"] = device
        lm = HFLM(**kwargs)
    else:
        if adapter is not None:
            raise ValueError("`adapter` applies to a model given by name; wrap an in-memory model with PeftModel")
        if tokenizer is None:
            raise ValueError("an in-memory model needs its tokenizer")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=[str(p) for p in paths] or None)
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                         log_samples=log_samples)
    except OSError as e:  # requests' and huggingface_hub's connection errors are OSErrors
        raise ConnectionError(
            f"lm-eval could not fetch the data of {tasks} ({type(e).__name__}). Offline, run a task whose data is "
            "local: a task YAML with `dataset_path: json` and `dataset_kwargs: {data_files: ...}` in a folder "
            "passed as include_path (see docs/how-to/evaluation.md)") from e
    out: dict = {}
    for task, metrics in output["results"].items():
        values = {}
        for key, value in metrics.items():
            name, _, _ = key.partition(",")
            if name in LM_EVAL_METRICS and isinstance(value, (int, float)):
                values[name] = float(value)
        if values:
            out[task] = values
    if log_samples:
        out["samples"] = output.get("samples", {})
    return out


def lm_eval_accuracy(model, tokenizer=None, tasks=LM_EVAL_TASKS, adapter: str | None = None, batch_size: int = 8,
                     limit: int | None = None, device: str | None = None, include_path=None) -> dict[str, float]:
    """`{task: acc}` of `lm_eval_scores` (same arguments)."""
    scores = lm_eval_scores(model, tokenizer, tasks, adapter, batch_size, limit, device, include_path)
    return {task: values["acc"] for task, values in scores.items() if "acc" in values}
