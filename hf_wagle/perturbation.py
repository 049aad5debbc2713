"""Forget loss at perturbed weights: unlearning that is harder to undo by relearning.

With `forget_perturbation`, each optimizer step takes the forget term at weights moved by `eps` and the retain term at
the weights themselves:

    L = forget_weight * forget_loss(theta + eps) + retain_weight * retain_loss(theta)

* `"sam"` (sharpness-aware, Fan et al. 2025): `eps = sam_rho * g / ||g||`, `g` the gradient of the forget term over
  the step's whole batch (every micro-batch of the accumulation, averaged over ranks: the same `eps` on every rank
  and as with one large batch), masked, so it points where the weights may move. The forget gradient is then taken
  where the forget loss is worst within a ball of radius `sam_rho`: a flat minimum of the unlearned loss, which a few
  relearning steps do not leave. One extra forward and backward pass of the forget batch per step.
* `"gnp"` (gradient-norm penalty, Fan et al. 2025): the forget term becomes `forget_loss + gnp_gamma * ||g||^2`,
  with a real gradient: `grad + 2 * gnp_gamma * H g`, the Hessian-vector product by a finite difference along `g`
  (probe radius `h = sam_rho`, the same `eps` as "sam"):

      H g ~= (grad(theta + eps) - g) * ||g|| / h,   so the forget gradient is   c * grad(theta + eps) + (1 - c) * g

  with `c = 2 * gnp_gamma * ||g|| / h`: the forget pass is scaled by `c`, and `(1 - c) * g` (kept as a multiple of
  `eps`, no extra memory) is added once per step. Exact as a finite difference in float32 (in bfloat16 a small
  `eps` rounds, and a large `c` cancels two large terms); dropout draws differently in the two passes, so use it
  without dropout. The same passes as "sam"; a penalty on the gradient's norm
  rather than a fixed-radius worst case (to first order "sam" is `gnp` with `c = 1`, i.e. `gnp_gamma = h / (2||g||)`).
* `"smooth"` (randomised smoothing): `eps ~ N(0, smooth_sigma^2)` on each weight that may move, drawn from a
  generator seeded by `(seed, step, the parameter's place in the model)`, the same on every rank, under DDP or
  FSDP2 (on the same device type); one draw per step, so over the run the forget gradient is averaged over Gaussian
  perturbations. No extra pass.

The perturbation is added in place for the forget pass and its backward and then undone by copying the saved values
back (not by subtracting, which would round): weights off the mask get `eps = 0` and keep their bits.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .modeling import local_tensor, shard_like

PERTURBATIONS = ("sam", "gnp", "smooth")


def gradient_norm(grads: dict[torch.Tensor, torch.Tensor]) -> float:
    """`||g||`: the L2 norm over every tensor of `grads`, in float32 (0 when empty)."""
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()])))


def sam_perturbation(grads: dict[torch.Tensor, torch.Tensor], rho: float,
                     norm: float | None = None) -> dict[torch.Tensor, torch.Tensor]:
    """`eps = rho * g / ||g||` per parameter (`grads` maps a parameter to its masked forget gradient `g`; `norm`:
    `gradient_norm(grads)`, when known). Empty when `g` is zero or not finite."""
    norm = gradient_norm(grads) if norm is None else norm
    if not math.isfinite(norm) or norm == 0:
        return {}
    return {p: (g.float() * (rho / norm)).to(p.dtype) for p, g in grads.items()}


def gnp_scales(norm: float, gamma: float, h: float) -> tuple[float, float]:
    """`(c, (1 - c) * ||g|| / h)` of "gnp": the forget pass at `theta + eps` is scaled by `c = 2 * gamma * ||g|| / h`,
    and `(1 - c) * g = (1 - c) * ||g|| / h * eps` is added once per step."""
    c = 2 * gamma * norm / h
    return c, (1 - c) * norm / h


def smooth_perturbation(masks: dict[torch.Tensor, torch.Tensor | None], sigma: float,
                        seeds: dict[torch.Tensor, int]) -> dict[torch.Tensor, torch.Tensor]:
    """`eps ~ N(0, sigma^2)` for each parameter of `masks` (zero where its mask is False; None: the whole
    parameter), drawn from a generator seeded with `seeds[p]`: a parameter's draw does not depend on which others
    take part. For an FSDP2 parameter the draw is of its full shape and `eps` is this rank's shard of it (as its mask
    is), so every engine perturbs the same weights by the same amounts."""
    out = {}
    for p, m in masks.items():
        device = local_tensor(p).device
        generator = torch.Generator(device=device).manual_seed(seeds[p])
        eps = shard_like(torch.randn(p.shape, generator=generator, device=device, dtype=torch.float32) * sigma, p)
        out[p] = (eps if m is None else eps * m).to(p.dtype)
    return out


@contextlib.contextmanager
def perturbed(eps: dict[torch.Tensor, torch.Tensor]):
    """Parameters moved by `eps` inside the block, their exact values back after it (restored by copy). For an
    FSDP2 parameter, `eps` is this rank's shard and moves it."""
    saved = {p: local_tensor(p).detach().clone() for p in eps}
    with torch.no_grad():
        for p, e in eps.items():
            local_tensor(p).add_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved.items():
                local_tensor(p).copy_(value)
