"""Selection: which parameters take part, and the exact top-k of their scores (global, per layer or per tensor; by
element, row or column), found by a two-pass radix select over fp32 bit patterns with O(chunk) extra memory.

Ties: equal scores are ranked by parameter (`named_parameters()` order), then by flat index. Sharded (FSDP2) scores
sum their histograms over ranks and split ties in the global order.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np
import torch

from ..mask import layer_and_module, unpack_bits
from ..modeling import base_named_parameters, gather_from_ranks, logical_shape, rank_world, sum_over_ranks_
from .scores import CHUNK, Scores


def _as_patterns(patterns, what: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{what} must be a non-empty list of non-empty name patterns, got {patterns!r}")
    return patterns


def name_matches(name: str, pattern: str) -> bool:
    """A glob (`*`, `?`, `[...]`) matches the whole parameter name; a plain pattern matches whole dotted
    components (`"q_proj"` and `"layers.0"` match `model.layers.0.self_attn.q_proj.weight`, `"layers.1"` does not
    match `model.layers.10...`)."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return f".{pattern}." in f".{name}."


def select_parameters(names: list[str], include=None, exclude=None) -> list[bool]:
    """Which names take part: those matching some `include` pattern (all when None) and no `exclude` pattern."""
    include, exclude = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    for what, pats in (("include", include), ("exclude", exclude)):
        for p in pats or []:
            if not any(name_matches(n, p) for n in names):
                raise ValueError(f"{what} pattern {p!r} matches no parameter (names look like {names[:2]})")
    keep = [(include is None or any(name_matches(n, p) for p in include))
            and not any(name_matches(n, p) for p in exclude or []) for n in names]
    if not any(keep):
        raise ValueError("include/exclude leave no parameter to select")
    return keep


def unit_scores(scores: Scores, granularity: str) -> tuple[torch.Tensor, int]:
    """`(fp32 unit scores, weights per unit)`: the mean element score of each row (dim 0) or column (dim 1, the
    remaining dims flattened) of a tensor of >= 2 dims; 1-D tensors keep their elements as units."""
    if len(scores.shape) < 2 or granularity == "element":
        return torch.cat([scores.chunk(i) for i in range(scores.num_chunks)]), 1
    rows, cols = scores.shape[0], scores.numel // scores.shape[0]
    n_units = rows if granularity == "row" else cols
    sums = torch.zeros(n_units, dtype=torch.float64)
    for i in range(scores.num_chunks):
        c = scores.chunk(i).to("cpu", torch.float64)
        idx = torch.arange(i * CHUNK, i * CHUNK + c.numel())
        sums.index_add_(0, idx // cols if granularity == "row" else idx % cols, c)
    return (sums / (cols if granularity == "row" else rows)).float(), (cols if granularity == "row" else rows)


# -- selection ---------------------------------------------------------------------------------------------------

def _chunks(s):
    if isinstance(s, Scores):
        return (s.chunk(i) for i in range(s.num_chunks))
    flat = s.reshape(-1)
    return (flat[i:i + CHUNK] for i in range(0, flat.numel(), CHUNK))


def _numel(s) -> int:
    return s.numel if isinstance(s, Scores) else s.numel()


def _bincount(values: torch.Tensor) -> torch.Tensor:
    """int64 histogram of non-negative values < 2**16 (numpy's is several times faster than torch's on CPU)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.bincount(values.numpy(), minlength=1 << 16))
    return torch.bincount(values, minlength=1 << 16).cpu()


def _kth_bucket(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Largest bucket b with (weight in buckets >= b) >= k, and the weight still needed from bucket b."""
    above = hist.flip(0).cumsum(0).flip(0)
    b = int((above >= k).nonzero().max())
    return b, k - (int(above[b + 1]) if b + 1 < len(hist) else 0)


def _count_over_ranks(n: int, sharded: bool) -> int:
    """`n` summed over all ranks when the scores are sharded; `n` otherwise."""
    t = torch.tensor([n], dtype=torch.int64)
    if sharded:
        sum_over_ranks_([t])
    return int(t[0])


def _tie_takes(scores: list, threshold: int, needed: int) -> list[int]:
    """Sharded selection: how many of this rank's elements tied at `threshold` each tensor keeps. The global tie
    order is tensor by tensor and, within a tensor, rank by rank (dim-0 shards are consecutive flat ranges)."""
    counts = torch.tensor([sum(int((c.contiguous().view(torch.int32) == threshold).sum()) for c in _chunks(s))
                           for s in scores], dtype=torch.int64)
    table = torch.stack(gather_from_ranks(counts))  # [W, tensors]
    per_tensor = table.sum(0)
    before = per_tensor.cumsum(0) - per_tensor + table[:rank_world()[0]].sum(0)
    return torch.minimum((needed - before).clamp(min=0), counts).tolist()


def select_top_k_packed(scores: list, k: int, weights: list[int] | None = None,
                        sharded: bool = False) -> list[np.ndarray]:
    """Packed bool masks (`mask.pack_bits` layout) of the top-ranked units holding k weights; see `select_top_k`.

    `sharded`: each rank holds its shard of every tensor's scores (FSDP2) and k counts over all ranks; the
    histograms are summed over ranks, so every rank finds the same threshold, and ties are split in the global
    order. Each rank returns the packed masks of its own shards (units must be single weights)."""
    weights = weights or [1] * len(scores)
    if sharded and set(weights) != {1}:
        raise NotImplementedError("sharded selection takes single weights as units (granularity='element')")
    total = _count_over_ranks(sum(_numel(s) * w for s, w in zip(scores, weights)), sharded)
    if k <= 0 or k >= total:
        fill = 0xFF if k >= total and k > 0 else 0
        out = []
        for s in scores:
            n = _numel(s)
            a = np.full((n + 7) // 8, fill, dtype=np.uint8)
            if n % 8 and fill:
                a[-1] = (1 << (n % 8)) - 1
            out.append(a)
        return out

    def weighted_hist(select_bits):
        hist = torch.zeros(1 << 16, dtype=torch.int64)
        for s, w in zip(scores, weights):
            for c in _chunks(s):
                vals = select_bits(c.contiguous().view(torch.int32)).reshape(-1)
                if vals.numel():
                    hist += _bincount(vals) * w
        if sharded:
            sum_over_ranks_([hist])
        return hist

    hi, k_in = _kth_bucket(weighted_hist(lambda b: b >> 16), k)
    lo, needed = _kth_bucket(weighted_hist(lambda b: b[(b >> 16) == hi] & 0xFFFF), k_in)
    threshold = (hi << 16) | lo
    takes = _tie_takes(scores, threshold, needed) if sharded and needed > 0 else None
    out = []
    for j, (s, w) in enumerate(zip(scores, weights)):
        parts = []
        if takes is not None:
            needed = takes[j]  # this rank's share of the ties, within this tensor
        for c in _chunks(s):
            b = c.contiguous().view(torch.int32)
            m = b > threshold
            if needed > 0:
                tied = (b == threshold).reshape(-1)
                n_tied = int(tied.sum())
                if n_tied:
                    # take tied units in order while the count gets nearer to k (exact when w == 1)
                    take = min(n_tied, needed // w + (1 if needed % w > w / 2 else 0))
                    if take:
                        pos = tied.nonzero()[:take, 0]
                        m.reshape(-1)[pos] = True
                    needed = 0 if take < n_tied else needed - take * w
            parts.append(np.packbits(m.reshape(-1).cpu().numpy(), bitorder="little"))
        out.append(np.concatenate(parts) if parts else np.zeros(0, np.uint8))
    return out


def select_top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Bool masks keeping exactly the k largest of all (non-negative, finite) scores; ties as in the module doc.

    Radix select: non-negative fp32 values order like their int32 bit patterns, so a histogram of the high 16 bits
    finds the threshold's bucket and a second of the low 16 bits inside it the exact threshold. Both passes and the
    final one run over chunks of `CHUNK` elements, so extra memory is O(chunk) plus the result.
    """
    return [unpack_bits(p, s.shape) for p, s in zip(select_top_k_packed(scores, k), scores)]


def _expand_units(unit_mask: torch.Tensor, shape: tuple, granularity: str) -> np.ndarray:
    """Packed element mask of a tensor from its selected rows/columns."""
    n = math.prod(shape)
    if len(shape) < 2 or granularity == "element":
        return np.packbits(unit_mask.numpy(), bitorder="little")
    cols = n // shape[0]
    parts = []
    for a in range(0, n, CHUNK):
        idx = torch.arange(a, min(n, a + CHUNK))
        parts.append(np.packbits(unit_mask[idx // cols if granularity == "row" else idx % cols].numpy(),
                                 bitorder="little"))
    return np.concatenate(parts)


def _groups(names: list[str], scope: str) -> list[list[int]]:
    if scope == "global":
        return [list(range(len(names)))]
    if scope == "per_tensor":
        return [[i] for i in range(len(names))]
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        layer, _ = layer_and_module(n)
        groups.setdefault(layer if layer != "-" else f"-{n}", []).append(i)
    return list(groups.values())


def included_parameters(model, include=None, exclude=None) -> tuple[list[tuple[str, torch.nn.Parameter]], list[int]]:
    """`(base_named_parameters(model), indices of those that take part)` under `include`/`exclude`."""
    named = base_named_parameters(model)
    keep = select_parameters([n for n, _ in named], include, exclude)
    return named, [i for i, k in enumerate(keep) if k]


def check_selects_something(model, ratio: float, scope: str = "global", include=None, exclude=None) -> None:
    """Raise before any work when `ratio` rounds to no weight of `model` at all: `sum_g round(ratio * N_g) == 0`."""
    named, inc = included_parameters(model, include, exclude)
    names, numels = [named[i][0] for i in inc], [math.prod(logical_shape(named[i][1])) for i in inc]
    sizes = [sum(numels[i] for i in group) for group in _groups(names, scope)]
    if sum(round(ratio * n) for n in sizes) == 0:
        raise ValueError(f"mask ratio {ratio:g} selects no weight of the {sum(sizes)} that may be chosen "
                         f"(scope {scope!r}); raise the ratio or widen `include`")


def select(scores: list[Scores], ratio: float, scope: str = "global", granularity: str = "element",
           names: list[str] | None = None, sharded: bool = False) -> list[np.ndarray]:
    """Packed masks keeping `round(ratio * N_g)` weights of each scope group g (see the module docstring).
    `sharded`: the scores are each rank's shards (see `select_top_k_packed`); so are the returned masks."""
    names = names or [str(i) for i in range(len(scores))]
    out: list[np.ndarray | None] = [None] * len(scores)
    for group in _groups(names, scope):
        n_g = _count_over_ranks(sum(scores[i].numel for i in group), sharded)
        k = round(ratio * n_g)
        if granularity == "element":
            packed = select_top_k_packed([scores[i] for i in group], k, sharded=sharded)
        else:
            units = [unit_scores(scores[i], granularity) for i in group]
            unit_masks = select_top_k_packed([u for u, _ in units], k, [w for _, w in units])
            packed = [_expand_units(unpack_bits(m, (u.numel(),)), scores[i].shape, granularity)
                      for m, (u, _), i in zip(unit_masks, units, group)]
        for i, p in zip(group, packed):
            out[i] = p
    return out

