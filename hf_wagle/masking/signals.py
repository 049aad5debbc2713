"""The signals attribution reads from data: fp32 gradient sums of the per-example NLL (G_f, G_r) and Wanda's input
feature norms, one pass over the examples each, shared over ranks.
"""

from __future__ import annotations

import math

import torch

from ..data import collate
from ..losses import sequence_nll
from ..modeling import is_quantized, is_sharded, local_tensor, logical_shape, rank_world, reshard, sum_over_ranks_


def batches(examples: list[dict], batch_size: int, same_count: bool = False) -> list[tuple[list[dict], float]]:
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

    A parameter that can hold a gradient takes it from autograd (set its `requires_grad` first). A
    bitsandbytes-quantised weight cannot: its sum is built from what passes through its linear layer,
    `G = sum_t dy_t^T x_t` over every token t (`x` the layer's input, `dy` the gradient of the loss at its output),
    which is the gradient with respect to the dequantised weight the layer computes with; the input embeddings'
    output is made to require a gradient so that `dy` exists with every parameter frozen.

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
    through = [is_quantized(local_tensor(p)) for p in params]  # sums from activations
    # fp32 parameters whose sums stay on their device sum in .grad itself (autograd adds each batch in place, as in
    # training); the others add each batch's gradient into fp32 buffers on `store`
    in_grad = [local_tensor(p).dtype == torch.float32 and store == device and not t for p, t in zip(params, through)]
    grads = [None if here else torch.zeros(logical_shape(local_tensor(p)), dtype=torch.float32, device=store)
             for p, here in zip(params, in_grad)]
    held = [p.grad for p in params]
    for p in params:
        p.grad = None
    hooks = []
    try:
        hooks = _activation_sums(model, [(p, g) for p, g, t in zip(params, grads, through) if t])
        for chunk, weight in batches(examples, batch_size, same_count=sharded):
            batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
            # under FSDP2, backward() also reduce-scatters each gradient into its parameter's sharded .grad
            (sequence_nll(model, batch).per_example_mean.sum() * weight).backward()
            for acc, p, t in zip(grads, params, through):
                if acc is not None and p.grad is not None and not t:
                    acc.add_(local_tensor(p.grad).to(store, torch.float32))
                    p.grad = None
            if progress is not None:
                progress.update(1)
        grads = [acc if acc is not None else local_tensor(p.grad) if p.grad is not None
                 else torch.zeros(local_tensor(p).shape, dtype=torch.float32, device=device)
                 for acc, p in zip(grads, params)]
    finally:
        for h in hooks:
            h.remove()
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


def _activation_sums(model, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
    """Hooks that add `dy^T x` (in fp32) of every linear layer computing with weight `p` into its `total` (the
    `pairs`), and one that makes the input embeddings' output require a gradient. Returns the handles to remove;
    registers nothing when a weight belongs to no linear layer."""
    if not pairs:
        return []
    owners = {}
    for module, weight, _ in _linear_layers(model):
        owners.setdefault(id(weight), []).append(module)
    if any(id(p) not in owners for p, _ in pairs):
        raise ValueError("a quantised weight belongs to no linear layer; attribution reads a quantised weight's "
                         "gradient from its layer's inputs and outputs")
    handles = [m.register_forward_hook(_OuterProduct(total)) for p, total in pairs for m in owners[id(p)]]
    handles.append(model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: out if out.requires_grad else out.requires_grad_()))
    return handles


class _OuterProduct:
    """Forward hook of a linear layer: keeps its input `x` (as it is) and, when the gradient `dy` of its output
    arrives, adds `dy^T x` over all tokens to `total` in fp32."""

    def __init__(self, total: torch.Tensor):
        self.total = total

    def __call__(self, module, args, out):
        x, version = args[0].detach(), args[0]._version

        def backward(dy):
            if x._version != version:
                raise RuntimeError("a linear layer's input was changed in place after the layer ran; attribution "
                                   "of a quantised weight needs it unchanged")
            dy2, x2 = dy.reshape(-1, dy.shape[-1]).float(), x.reshape(-1, x.shape[-1]).float()
            if self.total.device == x2.device:
                self.total.addmm_(dy2.t(), x2)
            else:
                self.total.add_((dy2.t() @ x2).to(self.total.device))

        out.register_hook(backward)


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
    sq = {id(w): torch.zeros(logical_shape(w)[0 if t else 1], dtype=torch.float64, device=device)
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
            for chunk, weight in batches(examples, batch_size, same_count=sharded):
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

