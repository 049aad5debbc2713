"""The benchmark registry: `register_benchmark`, `BENCHMARKS`, the arguments every benchmark gets
(`BenchmarkArgs`), the one result type they all return (`BenchmarkResult`), and `run_benchmark`.

Importing this module imports neither torch nor transformers, so the command line can list `BENCHMARKS` in its
`--help`; a benchmark imports the metrics it uses inside its function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ...options import DEFAULT_PROMPT_TEMPLATE


@dataclass
class BenchmarkArgs:
    """What `hf-wagle evaluate` (and `run_benchmark`) passes to every benchmark; each uses the fields it needs."""

    data: str | None = None  # Hub name or local folder; None = the benchmark's own default
    forget_split: str = "forget10"  # TOFU's forget split
    retain_model_truth_ratios: list[float] | None = None  # forget truth ratios of a retain-only model (TOFU's FQ)
    utility_data: str | None = None  # a utility data set (WMDP: MMLU)
    limit: int | None = None  # use only the first `limit` rows of each split
    batch_size: int = 16
    max_new_tokens: int | None = None  # None = the benchmark's default
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    mcq_style: str = "letter"  # multiple choice: "letter" or "cloze" (see `hf_wagle.evaluation.mcq`)

    def head(self, dataset):
        """The first `limit` rows of `dataset` (all of them when `limit` is None)."""
        return dataset if self.limit is None else dataset.select(range(min(self.limit, len(dataset))))


@dataclass
class BenchmarkResult:
    """One benchmark run: numbers only, never the data's text.

    The summary is one forget number and one utility number, the two axes of `plot_forget_vs_utility`, each with
    the label it is plotted under; `utility` is None when not measured. `details` is the benchmark's own report
    (keys of its choosing other than `benchmark` and `summary`). `to_dict()` is the JSON form,
    `{"benchmark", **details, "summary": {"forget", "forget_label", "utility", "utility_label"}}`, and
    `result["summary"]`, `result["report"]`... read it as a mapping.
    """

    forget: float
    forget_label: str
    utility: float | None
    utility_label: str
    details: dict[str, Any] = field(default_factory=dict)
    benchmark: str = ""  # filled in by `run_benchmark`

    def __post_init__(self):
        clash = {"benchmark", "summary"} & set(self.details)
        if clash:
            raise ValueError(f"BenchmarkResult.details cannot use the keys {sorted(clash)}")

    @property
    def summary(self) -> dict:
        return {"forget": self.forget, "forget_label": self.forget_label, "utility": self.utility,
                "utility_label": self.utility_label}

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, **self.details, "summary": self.summary}

    def __getitem__(self, key: str):
        return self.to_dict()[key]


BenchmarkFunction = Callable[[Any, Any, BenchmarkArgs], BenchmarkResult]


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark: its name, `run(model, tokenizer, args) -> BenchmarkResult`, a one-line description."""

    name: str
    run: BenchmarkFunction
    description: str = ""


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(name: str, description: str | None = None, override: bool = False):
    """Decorator: make `run(model, tokenizer, args: BenchmarkArgs) -> BenchmarkResult` available as
    `run_benchmark(name, ...)` and `hf-wagle evaluate --benchmark name`. `description` defaults to the first line of
    the function's docstring. See `hf_wagle.evaluation` for the contract and an example."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a benchmark needs a non-empty name, got {name!r}")
    if name in BENCHMARKS and not override:
        raise ValueError(f"a benchmark {name!r} is already registered; pick another name or pass override=True")

    def wrap(run: BenchmarkFunction) -> BenchmarkFunction:
        if not callable(run):
            raise TypeError(f"register_benchmark({name!r}) decorates a function, got {run!r}")
        text = description if description is not None else (run.__doc__ or "").strip().split("\n")[0]
        BENCHMARKS[name] = BenchmarkSpec(name, run, text)
        return run

    return wrap


def get_benchmark(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {tuple(BENCHMARKS)}, got {name!r} "
                         "(add one with hf_wagle.evaluation.register_benchmark)")
    return BENCHMARKS[name]


def run_benchmark(benchmark: str, model, tokenizer, data=None, *, forget_split: str = "forget10",
                  retain_model_truth_ratios=None, utility_data=None, limit: int | None = None, batch_size: int = 16,
                  max_new_tokens: int | None = None, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                  mcq_style: str = "letter") -> BenchmarkResult:
    """Evaluate `model` on the registered benchmark `benchmark`; the keywords are the fields of `BenchmarkArgs`.
    `data` is a Hub name or a local folder (ignored by `offline`, which rebuilds the fictitious world of
    `hf_wagle.world`). `mcq_style` ("letter" or "cloze", see `hf_wagle.evaluation.mcq`) is how multiple-choice
    benchmarks (`wmdp`) score their questions."""
    spec = get_benchmark(benchmark)
    args = BenchmarkArgs(data=data, forget_split=forget_split, retain_model_truth_ratios=retain_model_truth_ratios,
                         utility_data=utility_data, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         prompt_template=prompt_template, mcq_style=mcq_style)
    result = spec.run(model, tokenizer, args)
    if not isinstance(result, BenchmarkResult):
        raise TypeError(f"benchmark {benchmark!r} returned {type(result).__name__}, not a BenchmarkResult")
    return dataclasses.replace(result, benchmark=benchmark)
