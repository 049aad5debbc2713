"""Full-parameter training: gradient masks (and, in the trainer, weight decay applied on-mask only)."""

from __future__ import annotations

import torch

from ..mask import WeightMask
from ..modeling import base_named_parameters, is_sharded, shard_like
from .base import Confinement, enforced_metadata, register_confinement


def confine_parameters(model, mask: WeightMask | None) -> tuple[WeightMask, dict[torch.Tensor, torch.Tensor]]:
    """Full-parameter training: freeze parameters with nothing selected, gradient-mask the partly selected ones.

    Returns the enforced mask (the given mask, restricted to trainable parameters; all weights when `mask` is None)
    and the gradient masks. An FSDP2 (DTensor) parameter gets this rank's shard of its mask, and one with nothing
    selected an all-False mask rather than freezing: FSDP2 fixed which parameters take gradients when it sharded.
    """
    enforced, grad_masks = {}, {}
    for name, p in base_named_parameters(model):
        m = mask[name] if mask is not None else torch.ones(p.shape, dtype=torch.bool)
        if not p.requires_grad:
            m = torch.zeros_like(m)
        elif not m.any() and not is_sharded(p):
            p.requires_grad_(False)
        elif not m.all():
            grad_masks[p] = shard_like(m, p)
        enforced[name] = m
    return WeightMask(enforced, enforced_metadata(model, mask, "gradient_mask")), grad_masks


@register_confinement
class GradientMaskConfinement(Confinement):
    """Parameters with nothing selected are frozen and the partly selected ones have their gradient multiplied by
    the mask; the saved model is audited bit for bit against its base (`hf_wagle.formats.full`)."""

    kind = "full"

    def accepts(self, model):
        return True

    def confine(self, model, mask):
        return confine_parameters(model, mask)
