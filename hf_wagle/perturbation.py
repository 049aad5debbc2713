"""Forget loss at perturbed weights: unlearning that is harder to undo by relearning.

With `forget_perturbation`, each optimizer step takes the forget term at weights moved by `eps` and the retain term at
the weights themselves:

    L = forget_weight * forget_loss(theta + eps) + retain_weight * retain_loss(theta)

* `"sam"` (sharpness-aware, Fan et al. 2025): `eps = sam_rho * g / ||g||`, `g` the gradient of the forget term over
  the step's whole batch (every micro-batch of the accumulation, averaged over ranks: the same `eps` on every rank
  and as with one large batch), masked, so it points where the weights may move. The forget gradient is then taken
  where the forget loss is worst within a ball of radius `sam_rho`: a flat minimum of the unlearned loss, which a few
  relearning steps do not leave. One extra forward and backward pass of the forget batch per step.
* `"smooth"` (randomised smoothing): `eps ~ N(0, smooth_sigma^2)` on each weight that may move, drawn from a
  generator seeded by `(seed, step)`, the same on every rank; one draw per step, so over the run the forget gradient
  is averaged over Gaussian perturbations. No extra pass.

The perturbation is added in place for the forget pass and its backward and then undone by copying the saved values
back (not by subtracting, which would round): weights off the mask get `eps = 0` and keep their bits.
"""

from __future__ import annotations

import contextlib

import torch

PERTURBATIONS = ("sam", "smooth")


def sam_perturbation(grads: dict[torch.Tensor, torch.Tensor], rho: float) -> dict[torch.Tensor, torch.Tensor]:
    """`eps = rho * g / ||g||` per parameter (`grads` maps a parameter to its masked forget gradient `g`); `||g||` is
    the L2 norm over all of them, in float32. Empty when `g` is zero."""
    if not grads:
        return {}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()]))
    if not torch.isfinite(norm) or norm == 0:
        return {}
    return {p: (g.float() * (rho / norm)).to(p.dtype) for p, g in grads.items()}


def smooth_perturbation(masks: dict[torch.Tensor, torch.Tensor | None], sigma: float,
                        seed: int) -> dict[torch.Tensor, torch.Tensor]:
    """`eps ~ N(0, sigma^2)` for each parameter of `masks` (zero where its mask is False; None: the whole
    parameter), drawn in `masks`' order from one generator seeded with `seed`."""
    out = {}
    generators: dict = {}
    for p, m in masks.items():
        if p.device not in generators:
            generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        eps = torch.randn(p.shape, generator=generators[p.device], device=p.device, dtype=torch.float32) * sigma
        out[p] = (eps if m is None else eps * m).to(p.dtype)
    return out


@contextlib.contextmanager
def perturbed(eps: dict[torch.Tensor, torch.Tensor]):
    """Parameters moved by `eps` inside the block, their exact values back after it (restored by copy)."""
    saved = {p: p.detach().clone() for p in eps}
    with torch.no_grad():
        for p, e in eps.items():
            p.add_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved.items():
                p.copy_(value)
