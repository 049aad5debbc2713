"""The offline benchmark: TOFU's metrics on the fictitious world of `hf_wagle.world` (no downloads; `data` is not
used). It has only forget and retain splits, so utility is the harmonic mean of the retain split's 3 numbers."""

from __future__ import annotations

from .registry import BenchmarkArgs, BenchmarkResult, register_benchmark
from .tofu import tofu_result


@register_benchmark("offline")
def offline(model, tokenizer, args: BenchmarkArgs) -> BenchmarkResult:
    """The fictitious world of `hf-wagle demo` (no downloads), scored as TOFU."""
    from ...world import make_world

    world = make_world()
    return tofu_result(model, tokenizer, {"forget": world["forget"], "retain": world["retain"]}, args)
