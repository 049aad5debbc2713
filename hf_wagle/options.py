"""Option names, defaults and bounds shared by `WagleConfig`, `compute_mask` and the command line.

Pure Python (no torch), so the command line can build its parser without importing the model stack.
"""

from __future__ import annotations

import math
import os

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
DEFAULT_MASK_METHOD = "wagle"
DEFAULT_MASK_RATIO = 0.8
DEFAULT_MU = 1e-6
DEFAULT_GRIN_EPS = 1e-12
DEFAULT_MAX_LENGTH = 512
MASK_REDUCTIONS = ("sum", "mean")
RETAIN_SAMPLINGS = ("all", "paired")
MASK_SCOPES = ("global", "per_layer", "per_tensor")
MASK_GRANULARITIES = ("element", "row", "column")
# Optimizers whose update is exactly zero for a parameter element whose gradient has always been zero
# (moments start at zero and stay zero), so masking the gradient keeps off-mask weights bit-identical.
MASK_SAFE_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop")


def is_local_path(name: str) -> bool:
    """Whether a model reference is plainly a local path rather than a Hub id (`name` or `org/name`): absolute,
    starting with `.` or `~`, more than one `/`, or a backslash."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_mask_options(*, ratio: float, mu: float = DEFAULT_MU, reduction: str = "sum", batch_size: int = 8,
                       num_samples: int | None = None, scope: str = "global", granularity: str = "element",
                       eps: float = DEFAULT_GRIN_EPS, retain_sampling: str = "all", prefix: str = "") -> None:
    """Raise a ValueError naming the first option outside its bounds (as `prefix + name`, e.g. `mask_ratio`):
    `ratio` in (0, 1] (the fraction of weights that may change: 0 would change nothing), `mu` and `eps` > 0,
    `batch_size` >= 1, `num_samples` a positive integer or None, and the named choices."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"{prefix}ratio is the fraction of weights that may change and must lie in (0, 1], got "
                         f"{ratio!r}")
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be a finite number > 0, got {mu}")
    _one_of(f"{prefix}reduction", reduction, MASK_REDUCTIONS)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"{prefix}batch_size must be a positive integer, got {batch_size!r}")
    if num_samples is not None and (isinstance(num_samples, bool) or int(num_samples) != num_samples
                                    or num_samples < 1):
        raise ValueError(f"{prefix}num_samples must be a positive integer or None, got {num_samples!r}")
    _one_of(f"{prefix}scope", scope, MASK_SCOPES)
    _one_of(f"{prefix}retain_sampling", retain_sampling, RETAIN_SAMPLINGS)
    _one_of(f"{prefix}granularity", granularity, MASK_GRANULARITIES)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
