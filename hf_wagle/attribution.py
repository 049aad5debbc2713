"""Weight attribution: score every weight, keep the top `ratio` fraction as a `WeightMask`.

Gradients are those of the plain next-token NLL at the current weights theta:
`G_f = sum_i d/dtheta [ (1/n_i) sum_t nll_it ]` over forget examples i (token mean within an example, summed over
examples; with `reduction="mean"` divided by the example count), and `G_r` the same over the retain examples.
They are accumulated in fp32 whatever the model's dtype, and the result does not depend on `batch_size`.

Scores (elementwise, fp32):

* `wagle`:     S = | theta * G_f - (1/mu) * G_r * G_f |   (Jia et al. 2024; mu is the diagonal-Hessian constant)
* `snip`:      S = | theta * G_f |
* `gradient`:  S = | G_f |                                  (SalUn-style saliency)
* `grin`:      S = | G_f | / (| G_r | + eps)                (GRIN's gradient ratio, eps = 1e-12 by default)
* `magnitude`: S = | theta |
* `wanda`:     S_ij = | W_ij | * || X_j ||_2 for the weight W (out x in) of every linear layer, X_j the j-th input
  feature over all non-padding tokens of the forget examples (Sun et al. 2023, calibrated on forget inputs).
  Parameters that are not the weight of an `nn.Linear` (or transformers `Conv1D`) -- embeddings, norms, biases --
  score 0: they are selected only once every linear weight is, in the tie order below.
* `random`:    S ~ U(0, 1), seeded by `seed` and the parameter's name (identical on every rank).

Selection (`scope="global"`) is one ranking over all parameters (embeddings, norms and `lm_head` included): the
`k = round(ratio * N)` largest scores are kept. `scope="per_layer"` applies the ratio within each numbered block
(`...layers.3...`; each parameter outside numbered blocks is its own group) and `scope="per_tensor"` within each
tensor, so the total is the sum of the groups' `round(ratio * N_g)`. `include`/`exclude` patterns restrict which
parameters take part: the others are never selected and not counted in N.

`granularity="row"|"column"` selects whole rows (dim 0: a linear layer's output features) or columns (dim 1, the
remaining dims flattened: input features) of every tensor of >= 2 dims; a unit's score is the mean of its elements'
scores and units of 1-D tensors are single elements. Units are taken in ranking order until they hold the weight
count nearest to k (units are whole, so the count is exact only for elements).

Ties: equal scores are ranked by parameter (`named_parameters()` order), then by flat index; the threshold is
found exactly by a two-pass radix select over the fp32 bit patterns, chunk by chunk, with no sorted copy. Extra
memory while selecting is the packed result (N/8 bytes) plus O(chunk).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .data import check_fits_model, collate, pad_id, tokenize_dataset
from .losses import sequence_nll
from .mask import WeightMask, layer_and_module, parameter_fingerprint, unpack_bits
from .modeling import (adapter_disabled, base_named_parameters, broadcast_from_main, gather_from_ranks, is_sharded,
                       local_tensor, rank_world, reshard, shard_like, shard_range, sum_over_ranks_, tied_aliases)
from .options import (DEFAULT_GRIN_EPS, DEFAULT_MASK_METHOD, DEFAULT_MASK_RATIO, DEFAULT_MU,
                      DEFAULT_PROMPT_TEMPLATE, check_mask_options)
from .version import __version__

CHUNK = 1 << 20  # elements per selection chunk (a multiple of 8, so packed chunks concatenate)


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


def subset_indices(n: int, num_samples: int | None, seed: int, stream: int = 0) -> list[int]:
    """The deterministic subset `num_samples` draws from `n` examples: sorted indices drawn without replacement by
    `numpy.random.default_rng([seed, stream])` (all indices when `num_samples` is None or >= n)."""
    if num_samples is None or num_samples >= n:
        return list(range(n))
    return sorted(np.random.default_rng([seed, stream]).choice(n, size=num_samples, replace=False).tolist())


def data_fingerprint(dataset) -> str:
    """sha256 of a dataset's column names and rows (JSON with sorted keys); "" for None."""
    if dataset is None:
        return ""
    h = hashlib.sha256(json.dumps(sorted(getattr(dataset, "column_names", []) or [])).encode())
    for row in dataset:
        h.update(json.dumps(row, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
                 .encode())
        h.update(b"\n")
    return h.hexdigest()


def _batches(examples: list[dict], batch_size: int, same_count: bool = False) -> list[tuple[list[dict], float]]:
    """This rank's `(batch, weight)`s: examples r, r+W, ... in groups of `batch_size`, weight 1. With `same_count`
    (a sharded model, whose every forward pass is a collective) ranks with fewer batches add weight-0 batches, so
    that every rank runs `ceil(ceil(n / W) / batch_size)`."""
    rank, world = rank_world()
    mine = examples[rank::world]
    out = [(mine[i:i + batch_size], 1.0) for i in range(0, len(mine), batch_size)]
    if same_count and examples:
        most = math.ceil(math.ceil(len(examples) / world) / batch_size)  # batches of the rank with the most examples
        out += [(examples[:1], 0.0)] * (most - len(out))
    return out


def accumulate_gradients(model, params: list[torch.Tensor], examples: list[dict], batch_size: int,
                         reduction: str = "sum", pad_token_id: int | None = None, progress=None,
                         accumulate_device=None) -> list[torch.Tensor]:
    """fp32 `sum_i grad (per-example token-mean NLL_i)` over `examples` (divided by their count for "mean").

    Under `torch.distributed`, rank r takes examples r, r+W, ... and the sums are all-reduced, so every rank
    returns the same gradients. For an FSDP2 model (DTensor parameters) the sums are sharded like the parameters:
    each rank returns its local shards, FSDP2's reduce-scatter (the mean over ranks, times W) doing the reduction,
    so no rank ever holds a full gradient. `progress` (a tqdm bar or None) advances by one per batch.
    `accumulate_device` (default: the parameters' device) holds the fp32 sums: `"cpu"` keeps their 4 bytes per
    weight in host memory, one batch's gradient crossing over per parameter.
    """
    sharded = any(is_sharded(p) for p in params)
    device = local_tensor(params[0]).device
    store = torch.device(accumulate_device) if accumulate_device is not None else device
    # fp32 parameters whose sums stay on their device sum in .grad itself (autograd adds each batch in place, as in
    # training); the others add each batch's gradient into fp32 buffers on `store`
    in_grad = [local_tensor(p).dtype == torch.float32 and store == device for p in params]
    grads = [None if here else torch.zeros(local_tensor(p).shape, dtype=torch.float32, device=store)
             for p, here in zip(params, in_grad)]
    held = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        for chunk, weight in _batches(examples, batch_size, same_count=sharded):
            batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
            # under FSDP2, backward() also reduce-scatters each gradient into its parameter's sharded .grad
            (sequence_nll(model, batch).per_example_mean.sum() * weight).backward()
            for acc, p in zip(grads, params):
                if acc is not None and p.grad is not None:
                    acc.add_(local_tensor(p.grad).to(store, torch.float32))
                    p.grad = None
            if progress is not None:
                progress.update(1)
        grads = [acc if acc is not None else local_tensor(p.grad) if p.grad is not None
                 else torch.zeros(local_tensor(p).shape, dtype=torch.float32, device=device)
                 for acc, p in zip(grads, params)]
    finally:
        for p, g in zip(params, held):
            p.grad = g
    if sharded:
        for g in grads:
            g.mul_(rank_world()[1])
    else:
        sum_over_ranks_(grads)
    bad = [i for i, g in enumerate(grads) if not torch.isfinite(g).all()]
    if bad:
        raise FloatingPointError(f"non-finite gradients in {len(bad)} parameters during attribution; check the model "
                                 "and data (a model in fp16 may overflow: load it in bf16 or fp32)")
    if reduction == "mean":
        for g in grads:
            g.div_(max(1, len(examples)))
    return grads


def _linear_layers(model) -> list[tuple[torch.nn.Module, torch.nn.Parameter, bool]]:
    """`(module, weight, transposed)` for every `nn.Linear` and transformers `Conv1D` (weight `in x out`)."""
    from transformers.pytorch_utils import Conv1D

    out = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            out.append((module, module.weight, False))
        elif isinstance(module, Conv1D):
            out.append((module, module.weight, True))
    return out


def input_feature_norms(model, params: list[torch.Tensor], examples: list[dict], batch_size: int,
                        pad_token_id: int | None = None, progress=None) -> dict[int, torch.Tensor]:
    """Wanda's calibration: `||X_j||_2` of every input feature j of every linear layer whose weight is in `params`,
    over all non-padding tokens of `examples` (sums of squares in fp64, all-reduced under `torch.distributed`).

    Returns `{id(weight): fp32 [in_features]}`. A weight shared by several linear layers sums over all of them.
    """
    wanted = {id(p) for p in params}
    layers = [(m, w, t) for m, w, t in _linear_layers(model) if id(w) in wanted]
    device = local_tensor(params[0]).device
    sharded = any(is_sharded(p) for p in params)
    sq = {id(w): torch.zeros(w.shape[0] if t else w.shape[1], dtype=torch.float64, device=device)
          for _, w, t in layers}
    current = {}

    def hook(module, args, weight):
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1])
        keep = current["mask"]
        if keep.numel() == x.shape[0]:
            x = x[keep]
        sq[id(weight)] += x.double().pow(2).sum(0)

    handles = [m.register_forward_pre_hook(lambda mod, args, w=w: hook(mod, args, w)) for m, w, _ in layers]
    try:
        with torch.no_grad():
            for chunk, weight in _batches(examples, batch_size, same_count=sharded):
                batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
                current["mask"] = batch["attention_mask"].reshape(-1).bool() & (weight > 0)
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                if progress is not None:
                    progress.update(1)
    finally:
        for h in handles:
            h.remove()
        reshard(model)
    sum_over_ranks_(sq.values())
    transposed = {id(w): t for _, w, t in layers}
    return {k: (v.sqrt().float(), transposed[k]) for k, v in sq.items()}


# -- lazily evaluated scores, chunk by chunk ------------------------------------------------------------------

class _Scores:
    """Flat fp32 scores of one tensor, produced in aligned chunks `[i * CHUNK, (i + 1) * CHUNK)`."""

    def __init__(self, numel: int, shape: tuple):
        self.numel, self.shape = numel, tuple(shape)

    @property
    def num_chunks(self) -> int:
        return (self.numel + CHUNK - 1) // CHUNK

    def chunk(self, i: int) -> torch.Tensor:
        raise NotImplementedError


class _Stored(_Scores):
    def __init__(self, scores: torch.Tensor):
        super().__init__(scores.numel(), scores.shape)
        self.flat = scores.reshape(-1)

    def chunk(self, i):
        return self.flat[i * CHUNK:(i + 1) * CHUNK]


class _Magnitude(_Scores):
    def __init__(self, theta: torch.Tensor):
        super().__init__(theta.numel(), theta.shape)
        self.flat = theta.detach().reshape(-1)

    def chunk(self, i):
        return self.flat[i * CHUNK:(i + 1) * CHUNK].float().abs()


class _Random(_Scores):
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


class _Wanda(_Scores):
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


class _Zeros(_Scores):
    def __init__(self, theta: torch.Tensor):
        super().__init__(theta.numel(), theta.shape)
        self.device = theta.device

    def chunk(self, i):
        return torch.zeros(min(CHUNK, self.numel - i * CHUNK), device=self.device)


# -- mask methods, registered by name -------------------------------------------------------------------------------

NEEDS = ("none", "forget", "forget_retain", "forget_inputs")


@dataclass(frozen=True)
class MaskMethod:
    """A registered mask method: `score(param, grad_forget=None, grad_retain=None, **options)` and what it needs.

    `needs`: `"none"` (no data), `"forget"` (`grad_forget` = G_f), `"forget_retain"` (G_f and G_r) or
    `"forget_inputs"` (no gradients; `input_norm=(norms, transposed)` of the parameter's linear layer over the forget
    tokens, or None for parameters that are not a linear weight). Other options: `name` (the parameter's base
    name), `mu`, `eps`, `seed`, and for an FSDP2 model, where `param` and the gradients are this rank's shard,
    `offset` (the shard's first flat index in the full tensor) and `full_shape`.
    """

    name: str
    score: Callable
    needs: str

    @property
    def uses_forget(self) -> bool:
        return self.needs != "none"

    @property
    def uses_retain(self) -> bool:
        return self.needs == "forget_retain"

    @property
    def uses_gradients(self) -> bool:
        return self.needs in ("forget", "forget_retain")


MASK_METHODS: dict[str, MaskMethod] = {}


def register_mask_method(name: str, needs: str = "forget", override: bool = False):
    """Decorator: make `score(param, grad_forget=None, grad_retain=None, **options)` available as a mask method by
    name, in `compute_mask(method=name)`, `WagleConfig(mask_method=name)` and `hf-wagle attribute --method name`.

    `score` returns the elementwise score of `param` (a tensor of its shape, non-negative and finite; larger = more
    worth changing), or one of this module's chunked score objects. Gradients are fp32 buffers owned by attribution
    and may be overwritten in place. `needs` says which data the method uses (see `MaskMethod`), so attribution
    computes only that: `"none"`, `"forget"`, `"forget_retain"` or `"forget_inputs"`.

        @register_mask_method("fisher", needs="forget")
        def fisher(param, grad_forget=None, grad_retain=None, **options):
            return grad_forget.pow(2)
    """
    if not isinstance(name, str) or not name or name in ("none", "None", "dense"):
        raise ValueError(f"a mask method needs a non-empty name other than none/dense, got {name!r}")
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(NEEDS)}, got {needs!r}")
    if name in MASK_METHODS and not override:
        raise ValueError(f"a mask method {name!r} is already registered; pick another name or pass override=True")

    def wrap(score):
        MASK_METHODS[name] = MaskMethod(name, score, needs)
        return score

    return wrap


def get_mask_method(name: str) -> MaskMethod:
    if name not in MASK_METHODS:
        raise ValueError(f"unknown mask method {name!r}; registered: {', '.join(MASK_METHODS)} "
                         "(add one with hf_wagle.register_mask_method)")
    return MASK_METHODS[name]


@register_mask_method("wagle", needs="forget_retain")
def wagle_score(param, grad_forget, grad_retain, mu=DEFAULT_MU, **_):
    """S = | theta * G_f - (1/mu) * G_r * G_f |   (Jia et al. 2024)."""
    return grad_forget.mul_(grad_retain.div_(mu).neg_().add_(param)).abs_()  # theta - G_r / mu, in place


@register_mask_method("snip", needs="forget")
def snip_score(param, grad_forget, grad_retain=None, **_):
    """S = | theta * G_f |."""
    return grad_forget.mul_(param.float()).abs_()


@register_mask_method("gradient", needs="forget")
def gradient_score(param, grad_forget, grad_retain=None, **_):
    """S = | G_f |   (SalUn-style saliency)."""
    return grad_forget.abs_()


@register_mask_method("grin", needs="forget_retain")
def grin_score(param, grad_forget, grad_retain, eps=DEFAULT_GRIN_EPS, **_):
    """S = | G_f | / (| G_r | + eps)   (GRIN's gradient ratio)."""
    return grad_forget.abs_().div_(grad_retain.abs() + eps)


@register_mask_method("magnitude", needs="none")
def magnitude_score(param, grad_forget=None, grad_retain=None, **_):
    """S = | theta |, made chunk by chunk."""
    return _Magnitude(param)


@register_mask_method("random", needs="none")
def random_score(param, grad_forget=None, grad_retain=None, name="", seed=0, offset=0, full_shape=None, **_):
    """S ~ U(0, 1), seeded by `seed` and the parameter's name (identical on every rank, and on a shard the same
    values as on the full tensor)."""
    return _Random(param, name, seed, offset, None if full_shape is None else math.prod(full_shape))


@register_mask_method("wanda", needs="forget_inputs")
def wanda_score(param, grad_forget=None, grad_retain=None, input_norm=None, **_):
    """S_ij = | W_ij | * || X_j ||_2 for linear weights; 0 for every other parameter."""
    return _Zeros(param) if input_norm is None else _Wanda(param, *input_norm)


def _as_scores(method: MaskMethod, value, param, name: str):
    if isinstance(value, _Scores):
        return value
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"mask method {method.name!r} returned {type(value).__name__} "
                         f"{tuple(getattr(value, 'shape', ()))} for {name}; it must return a tensor of the "
                         f"parameter's shape {tuple(param.shape)}")
    value = value.detach().float() + 0.0  # -0.0 -> +0.0: the radix select orders non-negative bit patterns
    if not torch.isfinite(value).all() or (value < 0).any():
        raise ValueError(f"mask method {method.name!r} gave {name} negative or non-finite scores; scores must be "
                         "finite and >= 0 (take abs() of signed quantities)")
    return _Stored(value)



def unit_scores(scores: _Scores, granularity: str) -> tuple[torch.Tensor, int]:
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
    if isinstance(s, _Scores):
        return (s.chunk(i) for i in range(s.num_chunks))
    flat = s.reshape(-1)
    return (flat[i:i + CHUNK] for i in range(0, flat.numel(), CHUNK))


def _numel(s) -> int:
    return s.numel if isinstance(s, _Scores) else s.numel()


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
    names, numels = [named[i][0] for i in inc], [named[i][1].numel() for i in inc]
    sizes = [sum(numels[i] for i in group) for group in _groups(names, scope)]
    if sum(round(ratio * n) for n in sizes) == 0:
        raise ValueError(f"mask ratio {ratio:g} selects no weight of the {sum(sizes)} that may be chosen "
                         f"(scope {scope!r}); raise the ratio or widen `include`")


def select(scores: list[_Scores], ratio: float, scope: str = "global", granularity: str = "element",
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


# -- the public entry point -----------------------------------------------------------------------------------

def compute_mask(model, forget, retain, tokenizer=None, method: str = DEFAULT_MASK_METHOD,
                 ratio: float = DEFAULT_MASK_RATIO, mu: float = DEFAULT_MU, reduction: str = "sum",
                 batch_size: int = 8, seed: int = 0, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                 max_length: int | None = None, *, num_samples: int | None = None, scope: str = "global",
                 granularity: str = "element", include=None, exclude=None, eps: float = DEFAULT_GRIN_EPS,
                 retain_sampling: str = "all", accumulate_device=None, progress: bool = True) -> WeightMask:
    """Score every weight of `model` with the mask method `method` (a name registered with `register_mask_method`)
    and keep the top `ratio` fraction (the weights that may change).

    `forget`/`retain` are `datasets.Dataset`s in any shape `hf_wagle.data` accepts (`retain` may be None for
    methods that do not use it, `forget` too for methods that need no data). `num_samples` scores on a deterministic
    subset of that many forget and that many retain examples (`subset_indices`, streams 0 and 1). `scope`,
    `granularity`, `include`/`exclude`: see the module docstring. `retain_sampling="paired"` builds G_r as the WAGLE
    authors' code does: one retain example per forget example, drawn with replacement by
    `numpy.random.default_rng([seed, 2])`, so G_r sums as many examples as G_f; `"all"` (default) sums the whole
    retain set (or its `num_samples` subset). `accumulate_device="cpu"` keeps G_f and G_r (4 bytes per weight
    each) in host memory, and scores there one parameter at a time: the accelerator then holds the model and one
    batch's gradients only, not two fp32 copies of the model. `progress` shows a tqdm bar over the attribution
    batches on rank 0. Names in the returned mask are the base model's `named_parameters()` names (all of them;
    excluded ones are all False), also when `model` is a `PeftModel`; `mask.metadata` records how it was made.

    An FSDP2 model (`fully_shard`, DTensor parameters sharded on dim 0) is attributed shard by shard: G_f, G_r and
    the scores exist only as each rank's shards (8 bytes per weight / W), the radix select sums its histograms over
    ranks, and the selected shards are gathered one tensor at a time, so every rank returns the same full mask, the
    one a single process would select from the same scores (granularity "element" only).
    """
    spec = get_mask_method(method)
    check_mask_options(ratio=ratio, mu=mu, reduction=reduction, batch_size=batch_size, num_samples=num_samples,
                       scope=scope, granularity=granularity, eps=eps, retain_sampling=retain_sampling)
    check_selects_something(model, ratio, scope, include, exclude)
    named, inc = included_parameters(model, include, exclude)
    names = [n for n, _ in named]
    params = [named[i][1] for i in inc]
    sharded = any(is_sharded(p) for p in params)
    if sharded and granularity != "element":
        raise NotImplementedError(f"granularity={granularity!r} ranks whole rows or columns, which FSDP2 splits "
                                  "over ranks; use granularity='element', or make the mask with one process or DDP "
                                  "(hf-wagle attribute) and pass it in")
    ranges = [shard_range(p, *rank_world()) if sharded else (0, p.numel()) for p in params]
    for (a, b), p, j in zip(ranges, params, inc):
        if b - a != local_tensor(p).numel():
            raise NotImplementedError(f"{names[j]}: this rank holds {local_tensor(p).numel()} weights, not the "
                                      f"{b - a} of FSDP2's dim-0 sharding; compute the mask with one process or DDP")
    examples = {"forget": [], "retain": []}
    for stream, (part, data, used) in enumerate((("forget", forget, spec.uses_forget),
                                                 ("retain", retain, spec.uses_retain))):
        if not used:
            continue
        if data is None or len(data) == 0:
            raise ValueError(f"mask method {method!r} needs a {'non-empty ' if data is not None else ''}{part} "
                             "dataset")
        idx = subset_indices(len(data), num_samples, seed, stream)
        if part == "retain" and retain_sampling == "paired":  # one per forget example (tokenised just before)
            idx = np.random.default_rng([seed, 2]).integers(len(data), size=len(examples["forget"])).tolist()
        examples[part] = tokenize_dataset(data if idx == list(range(len(data))) else data.select(idx), tokenizer,
                                          prompt_template, max_length, f"{part} dataset")
        check_fits_model(examples[part], model, f"{part} dataset")
    forget_ex, retain_ex = examples["forget"], examples["retain"]

    pad = pad_id(tokenizer)
    n_batches = len(_batches(forget_ex, batch_size, sharded)) + len(_batches(retain_ex, batch_size, sharded))
    bar = _progress_bar(n_batches, f"attribution ({method})") if progress and n_batches else None
    g_f = g_r = None
    norms = {}
    try:
        if spec.uses_forget:
            was_training = model.training
            saved_flags = [p.requires_grad for _, p in named]
            model.eval()
            try:
                if spec.uses_gradients:  # gradients of the scored parameters only
                    wanted = {id(p) for p in params}
                    for _, p in named:
                        p.requires_grad_(id(p) in wanted)
                with adapter_disabled(model):
                    if spec.needs == "forget_inputs":
                        norms = input_feature_norms(model, params, forget_ex, batch_size, pad, bar)
                    else:
                        g_f = accumulate_gradients(model, params, forget_ex, batch_size, reduction, pad, bar,
                                                   accumulate_device)
                        if spec.uses_retain:
                            g_r = accumulate_gradients(model, params, retain_ex, batch_size, reduction, pad, bar,
                                                       accumulate_device)
            finally:
                for (_, p), flag in zip(named, saved_flags):
                    p.requires_grad_(flag)
                model.train(was_training)
    finally:
        if bar is not None:
            bar.close()

    with torch.no_grad():
        scores = []
        for j, p in enumerate(params):
            name = names[inc[j]]
            norm = norms.get(id(p))
            if norm is not None and norm[1] and sharded:  # Conv1D (in x out): this shard's input features
                norm = (norm[0][ranges[j][0] // p.shape[1]:ranges[j][1] // p.shape[1]], True)
            theta = local_tensor(p).detach()
            if g_f and g_f[j].device != theta.device:  # scored where the gradients are (accumulate_device)
                theta = theta.to(g_f[j].device)
            value = spec.score(theta, grad_forget=g_f[j] if g_f else None, grad_retain=g_r[j] if g_r else None,
                               name=name, mu=mu, eps=eps, seed=seed, input_norm=norm, offset=ranges[j][0],
                               full_shape=tuple(p.shape))
            scores.append(_as_scores(spec, value, theta, name))
        packed = select(scores, ratio, scope, granularity, [names[i] for i in inc], sharded)
        del scores, g_f, g_r
    packed = _gather_shards(packed, params) if sharded else _broadcast_packed(packed)
    result = {}
    chosen = dict(zip(inc, packed))
    for i, (name, p) in enumerate(named):
        result[name] = (chosen[i] if i in chosen else np.zeros((p.numel() + 7) // 8, np.uint8), tuple(p.shape))

    metadata = {
        "method": method, "ratio": ratio, "mu": mu, "reduction": reduction, "seed": seed, "scope": scope,
        "granularity": granularity, "retain_sampling": retain_sampling if spec.uses_retain else None, "include": include if include is None else list(_as_patterns(include, "")),
        "exclude": exclude if exclude is None else list(_as_patterns(exclude, "")), "num_samples": num_samples,
        "num_forget": len(forget_ex), "num_retain": len(retain_ex), "batch_size": batch_size,
        "forget_sha256": data_fingerprint(forget) if spec.uses_forget else "",
        "retain_sha256": data_fingerprint(retain) if spec.uses_retain else "",
        "model": getattr(getattr(model, "config", None), "_name_or_path", "") or "",
        "param_sha256": parameter_fingerprint((n, tuple(p.shape)) for n, p in named),
        "hf_wagle_version": __version__,
    }
    tied = tied_aliases(model)
    if tied:
        metadata["tied"] = tied
    if method == "grin":
        metadata["eps"] = eps
    return WeightMask.from_packed(result, metadata)


def _gather_shards(packed: list[np.ndarray], params: list[torch.Tensor]) -> list[np.ndarray]:
    """The full packed mask of every tensor from each rank's packed shard (`shard_range` order), one tensor at a
    time: extra memory is one tensor's mask at a byte per weight."""
    rank, world = rank_world()
    out = []
    for bits, p in zip(packed, params):
        ranges = [shard_range(p, r, world) for r in range(world)]
        width = max(b - a for a, b in ranges)
        mine = np.zeros(width, np.uint8)
        n = ranges[rank][1] - ranges[rank][0]
        mine[:n] = np.unpackbits(bits, count=n, bitorder="little")
        pieces = gather_from_ranks(torch.from_numpy(mine))
        full = np.concatenate([t.numpy()[:b - a] for t, (a, b) in zip(pieces, ranges)])
        out.append(np.packbits(full, bitorder="little"))
    return out


def _broadcast_packed(packed: list[np.ndarray]) -> list[np.ndarray]:
    """Under `torch.distributed`, every rank takes rank 0's selection (the scores are already identical up to
    all-reduce rounding; this makes the masks bit-identical)."""
    if rank_world()[1] == 1 or not packed:
        return packed
    flat = broadcast_from_main(torch.from_numpy(np.concatenate(packed))).numpy()
    out, offset = [], 0
    for p in packed:
        out.append(flat[offset:offset + p.size].copy())
        offset += p.size
    return out


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


def _progress_bar(total: int, desc: str):
    if rank_world()[0] != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False)
