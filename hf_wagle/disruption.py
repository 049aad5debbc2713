"""Disruption masking (MUDMAN, Sondej et al. 2025): the forget term moves a weight only where moving it does not work
against the retain term.

With `disruption_masking`, each optimizer step takes the forget term's gradient `g_f` and the retain term's `g_r`
apart, each summed over every micro-batch of the step and averaged over ranks, and steps along

    g = g_r + g_f * [sign(g_f) * sign(g_r) > 0]

per weight: the forget gradient counts only where it has the retain gradient's sign (a zero on either side counts
as disagreement), so no update of the forget term raises the retain loss to first order on its own weight; the
retain term is kept everywhere. The weight mask and the optimizer then act on `g` as on any step. Both gradients
are of the weighted terms (`forget_weight * forget_loss`, `retain_weight * retain_loss`). It costs a second backward
call per micro-batch (the two terms' forward passes are the same as in a plain step) and memory of one copy of the
trainable weights' gradients.
"""

from __future__ import annotations

import contextlib

import torch


def disruption_masked(forget_grad: torch.Tensor, retain_grad: torch.Tensor | None) -> torch.Tensor | None:
    """`g_r + g_f * [sign(g_f) * sign(g_r) > 0]`; a parameter the retain term gives no gradient (`None`) gets none
    (`None`: the optimizer skips it, as it skips any parameter without a gradient)."""
    if retain_grad is None:
        return None
    agree = (torch.sign(forget_grad) * torch.sign(retain_grad)) > 0
    return retain_grad + forget_grad * agree


@contextlib.contextmanager
def gradients_into(params: list[torch.Tensor], store: dict[torch.Tensor, torch.Tensor]):
    """Backward passes inside the block accumulate into `store[p]` (a separate gradient per parameter, kept across
    blocks), not into `p.grad`, which holds what it held before the block again after it."""
    held = {p: p.grad for p in params}
    for p in params:
        p.grad = store.pop(p, None)
    try:
        yield
    finally:
        for p in params:
            if p.grad is not None:
                store[p] = p.grad
            p.grad = held[p]
