"""Weight attribution: score every weight, keep the top `ratio` fraction as a `WeightMask`.

Gradients are those of the plain next-token NLL at the current weights theta:
`G_f = sum_i d/dtheta [ (1/n_i) sum_t nll_it ]` over forget examples i (token mean within an example, summed over
examples; with `reduction="mean"` divided by the example count), and `G_r` the same over the retain examples.
They are accumulated in fp32 whatever the model's dtype, and the result does not depend on `batch_size`.

Scores (elementwise):

* `wagle`:     S = | theta * G_f - (1/mu) * G_r * G_f |   (Jia et al. 2024; mu is the diagonal-Hessian constant)
* `snip`:      S = | theta * G_f |
* `gradient`:  S = | G_f |                                  (SalUn-style saliency)
* `grin`:      S = | G_f | / (| G_r | + eps)                (gradient ratio, eps = 1e-12)
* `magnitude`: S = | theta |
* `random`:    S ~ U(0, 1), seeded by `seed`

Selection is one global ranking over all parameters (embeddings, norms and `lm_head` included): the
`k = round(ratio * N)` largest scores are kept. The threshold is found exactly by a two-pass radix select over
the fp32 bit patterns (no sorted copy of the scores); ties at the threshold go to the parameter that comes first
in `named_parameters()` order, then to the lower flat index.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from .config import DEFAULT_PROMPT_TEMPLATE, MASK_METHODS as METHODS
from .data import collate, tokenize_dataset
from .mask import WeightMask
from .objectives import sequence_nll

_NEEDS_FORGET = {"wagle", "snip", "gradient", "grin"}
_NEEDS_RETAIN = {"wagle", "grin"}
_ADAPTER_PREFIXES = ("lora_", "shira_")


def base_named_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """`(name, parameter)` of the base model, with PEFT wrapping removed from the names
    (`base_model.model.` and `.base_layer`) and adapter parameters left out. Shared (tied) parameters appear once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = []
    for name, p in base.named_parameters():
        parts = name.split(".")
        if any(part.startswith(_ADAPTER_PREFIXES) for part in parts):
            continue
        out.append((".".join(x for x in parts if x != "base_layer"), p))
    return out


def _check_options(method, ratio, mu, reduction, batch_size):
    if method not in METHODS:
        raise ValueError(f"unknown mask method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio is the fraction of weights that may change and must lie in [0, 1], got {ratio}")
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def accumulate_gradients(model, params: list[torch.Tensor], examples: list[dict], batch_size: int,
                         reduction: str = "sum", pad_token_id: int | None = None) -> list[torch.Tensor]:
    """fp32 `sum_i grad (per-example token-mean NLL_i)` over `examples` (divided by their count for "mean").

    Under `torch.distributed`, rank r takes examples r, r+W, ... and the sums are all-reduced, so every rank
    returns the same gradients.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = params[0].device
    grads = [torch.zeros(p.shape, dtype=torch.float32, device=device) for p in params]
    mine = examples[rank::world]
    for start in range(0, len(mine), batch_size):
        batch = {k: v.to(device) for k, v in collate(mine[start:start + batch_size], pad_token_id).items()}
        loss = sequence_nll(model, batch).per_example_mean.sum()
        for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                acc.add_(g.float())
    if world > 1:
        for g in grads:
            dist.all_reduce(g)
    bad = [i for i, g in enumerate(grads) if not torch.isfinite(g).all()]
    if bad:
        raise FloatingPointError(f"non-finite gradients in {len(bad)} parameters during attribution; check the model "
                                 "and data (a model in fp16 may overflow: load it in bf16 or fp32)")
    if reduction == "mean":
        for g in grads:
            g.div_(max(1, len(examples)))
    return grads


def score(method: str, theta: torch.Tensor, g_f: torch.Tensor | None, g_r: torch.Tensor | None, mu: float,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """The fp32 score of one parameter tensor (see the module docstring). May overwrite `g_f` to save memory."""
    if method == "wagle":
        return g_f.mul_(theta.float() - g_r / mu).abs_()
    if method == "snip":
        return g_f.mul_(theta.float()).abs_()
    if method == "gradient":
        return g_f.abs_()
    if method == "grin":
        return g_f.abs_().div_(g_r.abs() + 1e-12)
    if method == "magnitude":
        return theta.detach().float().abs()
    if method == "random":
        return torch.rand(theta.shape, generator=generator).to(theta.device)
    raise ValueError(method)


def select_top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Bool masks keeping exactly the k largest of all (non-negative, finite) scores; ties as in the module doc.

    Radix select: non-negative fp32 values order like their int32 bit patterns, so a histogram of the high 16 bits
    finds the threshold's bucket and a second of the low 16 bits inside it the exact threshold. Extra memory is one
    int32 tensor the size of the largest parameter.
    """
    total = sum(s.numel() for s in scores)
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    if k >= total:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    bits = [s.contiguous().view(torch.int32) for s in scores]

    def kth_bucket(hist: torch.Tensor, k: int) -> tuple[int, int]:
        above = hist.flip(0).cumsum(0).flip(0)  # above[b] = count in buckets >= b
        b = int((above >= k).nonzero().max())
        return b, k - (int(above[b + 1]) if b + 1 < len(hist) else 0)

    high = sum(torch.bincount((b >> 16).reshape(-1), minlength=1 << 16).cpu() for b in bits)
    hi, k_in = kth_bucket(high, k)
    low = sum(torch.bincount((b[(b >> 16) == hi] & 0xFFFF), minlength=1 << 16).cpu() for b in bits)
    lo, ties_needed = kth_bucket(low, k_in)
    threshold = (hi << 16) | lo
    masks = []
    for b in bits:
        m = b > threshold
        if ties_needed > 0:
            tied = (b == threshold).reshape(-1)
            take = tied.cumsum(0) <= ties_needed
            m.reshape(-1)[tied & take] = True
            ties_needed -= min(ties_needed, int(tied.sum()))
        masks.append(m)
    return masks


def compute_mask(model, forget, retain, tokenizer=None, method: str = "wagle", ratio: float = 0.8,
                 mu: float = 1e-6, reduction: str = "sum", batch_size: int = 8, seed: int = 0,
                 prompt_template: str = DEFAULT_PROMPT_TEMPLATE, max_length: int | None = None) -> WeightMask:
    """Score every weight of `model` with `method` and keep the top `ratio` fraction (the weights that may change).

    `forget`/`retain` are `datasets.Dataset`s in any shape `hf_wagle.data` accepts. Names in the returned mask are
    the base model's `named_parameters()` names, also when `model` is a `PeftModel`.
    """
    _check_options(method, ratio, mu, reduction, batch_size)
    named = base_named_parameters(model)
    names, params = [n for n, _ in named], [p for _, p in named]
    g_f = g_r = [None] * len(params)
    n_forget = n_retain = 0
    if method in _NEEDS_FORGET:
        forget_ex = tokenize_dataset(forget, tokenizer, prompt_template, max_length, "forget dataset")
        retain_ex = tokenize_dataset(retain, tokenizer, prompt_template, max_length, "retain dataset") \
            if method in _NEEDS_RETAIN else []
        n_forget, n_retain = len(forget_ex), len(retain_ex)
        if not forget_ex or (method in _NEEDS_RETAIN and not retain_ex):
            raise ValueError(f"mask method {method!r} needs a non-empty forget"
                             + (" and retain" if method in _NEEDS_RETAIN else "") + " dataset")
        pad = getattr(tokenizer, "pad_token_id", None)
        was_training = model.training
        saved_flags = [p.requires_grad for p in params]
        model.eval()
        try:
            for p in params:
                p.requires_grad_(True)
            with _adapter_disabled(model):
                g_f = accumulate_gradients(model, params, forget_ex, batch_size, reduction, pad)
                if retain_ex:
                    g_r = accumulate_gradients(model, params, retain_ex, batch_size, reduction, pad)
        finally:
            for p, flag in zip(params, saved_flags):
                p.requires_grad_(flag)
            model.train(was_training)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scores = [score(method, p, gf, gr, mu, generator) for p, gf, gr in zip(params, g_f, g_r)]
        total = sum(s.numel() for s in scores)
        selected = select_top_k(scores, round(ratio * total))
    metadata = {"method": method, "ratio": ratio, "mu": mu, "reduction": reduction, "seed": seed,
                "num_forget": n_forget, "num_retain": n_retain,
                "model": getattr(getattr(model, "config", None), "_name_or_path", "") or ""}
    return WeightMask(dict(zip(names, selected)), metadata)


def _adapter_disabled(model):
    """The base model's outputs for a `PeftModel`; a no-op context for a plain model."""
    from peft import PeftModel

    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
