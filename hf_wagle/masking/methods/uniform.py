"""`random`: S ~ U(0, 1), seeded by `seed` and the parameter's name (no data)."""

import math

from ..registry import register_mask_method
from ..scores import RandomScores


@register_mask_method("random", needs="none")
def random_score(param, grad_forget=None, grad_retain=None, name="", seed=0, offset=0, full_shape=None, **_):
    """S ~ U(0, 1): identical on every rank, and on a shard the same values as on the full tensor."""
    return RandomScores(param, name, seed, offset, None if full_shape is None else math.prod(full_shape))
