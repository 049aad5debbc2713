"""`magnitude`: S = | theta |, made chunk by chunk (no data)."""

from ..registry import register_mask_method
from ..scores import MagnitudeScores


@register_mask_method("magnitude", needs="none")
def magnitude_score(param, grad_forget=None, grad_retain=None, **_):
    """S = | theta |."""
    return MagnitudeScores(param)
