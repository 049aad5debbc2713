"""Scores of one tensor, produced chunk by chunk: what a mask method returns when the full score tensor need not
exist at once (`|theta|`, seeded uniform draws, Wanda's products). A method may also return a plain tensor of the
parameter's shape, which `as_scores` checks and wraps.
"""

from __future__ import annotations

import hashlib

import torch

CHUNK = 1 << 20  # elements per selection chunk (a multiple of 8, so packed chunks concatenate)


class Scores:
    """Flat fp32 scores of one tensor, produced in aligned chunks `[i * CHUNK, (i + 1) * CHUNK)`."""

    def __init__(self, numel: int, shape: tuple):
        self.numel, self.shape = numel, tuple(shape)

    @property
    def num_chunks(self) -> int:
        return (self.numel + CHUNK - 1) // CHUNK

    def chunk(self, i: int) -> torch.Tensor:
        raise NotImplementedError


class StoredScores(Scores):
    def __init__(self, scores: torch.Tensor):
        super().__init__(scores.numel(), scores.shape)
        self.flat = scores.reshape(-1)

    def chunk(self, i):
        return self.flat[i * CHUNK:(i + 1) * CHUNK]


class MagnitudeScores(Scores):
    def __init__(self, theta: torch.Tensor):
        super().__init__(theta.numel(), theta.shape)
        self.flat = theta.detach().reshape(-1)

    def chunk(self, i):
        return self.flat[i * CHUNK:(i + 1) * CHUNK].float().abs()


class RandomScores(Scores):
    """U(0, 1) scores of the full tensor's flat elements `[offset, offset + numel)`: chunk g of the full tensor
    (`full_numel` elements) is drawn from a generator seeded by `(seed, name, g)`, so a shard gets its part of
    the same draw."""

    def __init__(self, theta: torch.Tensor, name: str, seed: int, offset: int = 0, full_numel: int | None = None):
        super().__init__(theta.numel(), theta.shape)
        self.key, self.offset = f"{seed}:{name}", offset
        self.full_numel = theta.numel() if full_numel is None else full_numel

    def _full_chunk(self, g: int) -> torch.Tensor:
        s = int.from_bytes(hashlib.sha256(f"{self.key}:{g}".encode()).digest()[:8], "little") >> 1
        return torch.rand(min(CHUNK, self.full_numel - g * CHUNK), generator=torch.Generator().manual_seed(s))

    def chunk(self, i):
        a = self.offset + i * CHUNK
        b = min(self.offset + self.numel, a + CHUNK)
        return torch.cat([self._full_chunk(g)[max(a, g * CHUNK) - g * CHUNK:min(b, (g + 1) * CHUNK) - g * CHUNK]
                          for g in range(a // CHUNK, (b - 1) // CHUNK + 1)])


class WandaScores(Scores):
    """`|W_ij| * norm_j` with j the input feature (dim 1 of an `nn.Linear` weight, dim 0 of a `Conv1D` weight)."""

    def __init__(self, weight: torch.Tensor, norm: torch.Tensor, transposed: bool):
        super().__init__(weight.numel(), weight.shape)
        self.w = weight.detach()
        self.norm, self.transposed = norm, transposed

    def chunk(self, i):
        a, b = i * CHUNK, min(self.numel, (i + 1) * CHUNK)
        cols = self.w.shape[1]
        r0, r1 = a // cols, (b + cols - 1) // cols
        block = self.w[r0:r1].float().abs()
        block = block * (self.norm[r0:r1, None] if self.transposed else self.norm[None, :])
        return block.reshape(-1)[a - r0 * cols:b - r0 * cols]


class ZeroScores(Scores):
    def __init__(self, theta: torch.Tensor):
        super().__init__(theta.numel(), theta.shape)
        self.device = theta.device

    def chunk(self, i):
        return torch.zeros(min(CHUNK, self.numel - i * CHUNK), device=self.device)


def as_scores(method_name: str, value, param, name: str):
    if isinstance(value, Scores):
        return value
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"mask method {method_name!r} returned {type(value).__name__} "
                         f"{tuple(getattr(value, 'shape', ()))} for {name}; it must return a tensor of the "
                         f"parameter's shape {tuple(param.shape)}")
    value = value.detach().float() + 0.0  # -0.0 -> +0.0: the radix select orders non-negative bit patterns
    if not torch.isfinite(value).all() or (value < 0).any():
        raise ValueError(f"mask method {method_name!r} gave {name} negative or non-finite scores; scores must be "
                         "finite and >= 0 (take abs() of signed quantities)")
    return StoredScores(value)


