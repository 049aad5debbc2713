"""`wagle`: S = | theta * G_f - (1/mu) * G_r * G_f |   (Jia et al. 2024; mu is the diagonal-Hessian constant)."""

from ..config import DEFAULT_MU
from ..registry import register_mask_method


@register_mask_method("wagle", needs="forget_retain")
def wagle_score(param, grad_forget, grad_retain, mu=DEFAULT_MU, **_):
    """S = | theta * G_f - (1/mu) * G_r * G_f |, in place in G_f's buffer (G_f * (theta - G_r / mu))."""
    return grad_forget.mul_(grad_retain.div_(mu).neg_().add_(param)).abs_()
