"""`grin`: S = | G_f | / (| G_r | + eps)   (GRIN's gradient ratio; `eps` is this method's option)."""

from dataclasses import dataclass, field

from ...options import finite
from ..registry import register_mask_method

DEFAULT_GRIN_EPS = 1e-12


@dataclass
class GrinOptions:
    eps: float = field(default=DEFAULT_GRIN_EPS, metadata={"help": "added to |G_r| in the denominator, > 0"})

    def __post_init__(self):
        finite("grin's eps", self.eps, 0, strict=True)


@register_mask_method("grin", needs="forget_retain", options=GrinOptions)
def grin_score(param, grad_forget, grad_retain, eps=DEFAULT_GRIN_EPS, **_):
    """S = | G_f | / (| G_r | + eps)."""
    return grad_forget.abs_().div_(grad_retain.abs() + eps)
