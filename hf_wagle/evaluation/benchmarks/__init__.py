"""Whole-benchmark runs behind `hf-wagle evaluate`: the registry (`registry`), one file per built-in benchmark
(`tofu`, `wmdp`, `muse`, `offline`, each registering itself on import) and the forget-vs-utility plot (`plot`).

Importing this package imports neither torch nor transformers (see `hf_wagle.evaluation` for the contract).
"""

from .plot import plot_forget_vs_utility
from .registry import (
    BENCHMARKS,
    BenchmarkArgs,
    BenchmarkResult,
    BenchmarkSpec,
    get_benchmark,
    register_benchmark,
    run_benchmark,
)

# isort: off
# the built-ins register themselves on import, in the order `hf-wagle evaluate --benchmark` lists them
from . import tofu, wmdp, muse, offline  # noqa: E402, F401
# isort: on

__all__ = ["BENCHMARKS", "BenchmarkArgs", "BenchmarkResult", "BenchmarkSpec", "get_benchmark", "register_benchmark",
           "run_benchmark", "plot_forget_vs_utility"]
