"""GRIN's noise step: Gaussian noise on the weights a mask selects, the same draw on every rank."""

from __future__ import annotations

import hashlib

import torch

from ..mask import WeightMask
from ..modeling import base_named_parameters, is_sharded, local_tensor, shard_like


def add_mask_noise(model, mask: WeightMask, std: float, seed: int = 0) -> int:
    """GRIN's noise step: `theta += mask * N(0, (std * sigma_t)^2)` for every tensor t, in place, where sigma_t is
    the standard deviation of the tensor's own weights. Each tensor's noise comes from a CPU generator seeded by
    `(seed, name)`, so every rank draws the same; an FSDP2 rank adds its shard of it. Returns the number of
    weights changed."""
    if not std >= 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return 0
    changed = 0
    with torch.no_grad():
        for name, p in base_named_parameters(model):
            if name not in mask or mask.count(name) == 0 or p.numel() < 2:
                continue
            sigma = float((p.full_tensor() if is_sharded(p) else p).float().std())
            if sigma == 0:
                continue
            s = int.from_bytes(hashlib.sha256(f"noise:{seed}:{name}".encode()).digest()[:8], "little") >> 1
            noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(s)) * (std * sigma)
            local_tensor(p).add_(shard_like(noise * mask[name], p).to(p.dtype))
            changed += mask.count(name)
    return changed

