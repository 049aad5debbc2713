"""`compute_mask`: score every weight with a registered mask method and keep the top `ratio` fraction.

The pipeline: check the options -> tokenise the data the method needs -> signals (G_f, G_r or input norms) ->
scores (the method) -> selection (`select`) -> the same mask on every rank -> a `WeightMask` with its metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import torch

from ..data import check_fits_model, pad_id, tokenize_dataset
from ..hub.names import public_name
from ..mask import WeightMask, parameter_fingerprint
from ..modeling import (
    adapter_disabled,
    broadcast_from_main,
    dequantized,
    gather_from_ranks,
    is_quantized,
    is_sharded,
    keep_4bit_differentiable,
    local_tensor,
    logical_shape,
    quantized_layers,
    rank_world,
    shard_range,
    tied_aliases,
)
from ..options import DEFAULT_PROMPT_TEMPLATE, parse_bytes
from ..version import __version__
from .config import MASK_FIELDS, MaskConfig
from .methods import get_mask_method
from .registry import MaskMethod
from .scores import StoredScores, as_scores
from .selection import check_selects_something, included_parameters, select
from .signals import accumulate_gradients, batches, input_feature_norms


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


def mask_config(config: MaskConfig | None = None, **overrides) -> tuple[MaskConfig, MaskMethod, dict]:
    """`(config, method, method options)`: `config` (default `MaskConfig()`) with `overrides` applied, where a
    keyword that is not a `MaskConfig` field is one of the method's own options (`eps=` for grin), all checked."""
    config = config or MaskConfig()
    fields = {k: v for k, v in overrides.items() if k in MASK_FIELDS}
    extra = {k: v for k, v in overrides.items() if k not in MASK_FIELDS}
    config = config.replace(**fields) if fields else config
    if config.method is None:
        raise ValueError("compute_mask needs a mask method (method=None means dense unlearning: no mask)")
    method = get_mask_method(config.method)
    return config, method, method.resolve_options({**config.options, **extra})


def _examples(config: MaskConfig, method: MaskMethod, forget, retain, tokenizer, model, seed, prompt_template,
              max_length) -> dict[str, list[dict]]:
    """The tokenised forget and retain examples `method` needs (subsets and pairing per `config`)."""
    examples = {"forget": [], "retain": []}
    for stream, (part, data, used) in enumerate((("forget", forget, method.uses_forget),
                                                 ("retain", retain, method.uses_retain))):
        if not used:
            continue
        if data is None or len(data) == 0:
            raise ValueError(f"mask method {method.name!r} needs a {'non-empty ' if data is not None else ''}{part} "
                             "dataset")
        idx = subset_indices(len(data), config.num_samples, seed, stream)
        if part == "retain" and config.retain_sampling == "paired":  # one per forget example (tokenised just before)
            idx = np.random.default_rng([seed, 2]).integers(len(data), size=len(examples["forget"])).tolist()
        examples[part] = tokenize_dataset(data if idx == list(range(len(data))) else data.select(idx), tokenizer,
                                          prompt_template, max_length, f"{part} dataset")
        check_fits_model(examples[part], model, f"{part} dataset")
    return examples


def _signals(model, named, params, method: MaskMethod, config: MaskConfig, examples, pad, progress):
    """`(G_f, G_r, input norms)` as `method` needs them, taken in eval mode with adapters disabled, gradients of
    the scored parameters only; the model's flags and mode are restored after."""
    g_f = g_r = None
    norms = {}
    if not method.uses_forget:
        return g_f, g_r, norms
    was_training = model.training
    saved_flags = [p.requires_grad for _, p in named]
    model.eval()
    try:
        if method.uses_gradients:
            wanted = {id(p) for p in params}
            for _, p in named:
                p.requires_grad_(id(p) in wanted and p.is_floating_point() and not is_quantized(p))
        with adapter_disabled(model):
            if method.needs == "forget_inputs":
                norms = input_feature_norms(model, params, examples["forget"], config.batch_size, pad, progress)
            else:
                kw = dict(reduction=config.reduction, pad_token_id=pad, progress=progress,
                          accumulate_device=config.accumulate_device)
                g_f = accumulate_gradients(model, params, examples["forget"], config.batch_size, **kw)
                if method.uses_retain:
                    g_r = accumulate_gradients(model, params, examples["retain"], config.batch_size, **kw)
    finally:
        for (_, p), flag in zip(named, saved_flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return g_f, g_r, norms


def compute_mask(model, forget, retain, tokenizer=None, config: MaskConfig | None = None, *, seed: int = 0,
                 prompt_template: str = DEFAULT_PROMPT_TEMPLATE, max_length: int | None = None,
                 progress: bool = True, **overrides) -> WeightMask:
    """Score every weight of `model` with the mask method `config.method` and keep the top `config.ratio` fraction
    (the weights that may change).

    `config` is a `MaskConfig`; keywords override its fields (`method="grin", ratio=0.5`), and keywords that are
    not fields are the method's own options (`eps=1e-10` for grin). `forget`/`retain` are `datasets.Dataset`s in any
    shape `hf_wagle.data` accepts (`retain` may be None for methods that do not use it, `forget` too for methods
    that need no data). `num_samples` scores on a deterministic subset of that many forget and that many retain
    examples (`subset_indices`, streams 0 and 1). `retain_sampling="paired"` builds G_r as the WAGLE authors' code
    does: one retain example per forget example, drawn with replacement by `numpy.random.default_rng([seed, 2])`;
    `"all"` (default) sums the whole retain set (or its subset). `accumulate_device="cpu"` keeps G_f and G_r
    (4 bytes per weight each) in host memory and scores there one parameter at a time. `progress` shows a tqdm bar
    over the attribution batches on rank 0. Names in the returned mask are the base model's `named_parameters()`
    names (all of them; excluded ones are all False), also when `model` is a `PeftModel`; `mask.metadata` records
    how it was made.

    An FSDP2 model (`fully_shard`, DTensor parameters sharded on dim 0) is attributed shard by shard: G_f, G_r and
    the scores exist only as each rank's shards (8 bytes per weight / W), the radix select sums its histograms over
    ranks, and the selected shards are gathered one tensor at a time, so every rank returns the same full mask, the
    one a single process would select from the same scores (granularity "element" only).

    `memory_budget` bounds the fp32 gradient sums held at once: the scored weights are taken in consecutive groups
    that fit it, one pass over the data per group (`_passes`), each group scored as soon as its sums exist and its
    scores kept in host memory (a quantised weight's always), so the mask is the one a single pass selects. A
    bitsandbytes-quantised base (4-bit or 8-bit linear layers) is attributed too: such a weight's sums come from its
    layer's inputs and output gradients (`accumulate_gradients`), its scores from the dequantised weight, and the mask
    has the weights' logical shapes.
    """
    if isinstance(tokenizer, MaskConfig):
        raise TypeError("compute_mask(model, forget, retain, tokenizer, config): pass the MaskConfig as config=")
    config, method, options = mask_config(config, **overrides)
    keep_4bit_differentiable(model)
    check_selects_something(model, config.ratio, config.scope, config.include, config.exclude)
    named, inc = included_parameters(model, config.include, config.exclude)
    names = [n for n, _ in named]
    params = [named[i][1] for i in inc]
    sharded = any(is_sharded(p) for p in params)
    ranges = _shard_ranges(params, [names[i] for i in inc], config, sharded)
    groups = _passes(params, [names[i] for i in inc], method, config, sharded)
    examples = _examples(config, method, forget, retain, tokenizer, model, seed, prompt_template, max_length)
    pad = pad_id(tokenizer)
    n_batches = sum(len(batches(examples[p], config.batch_size, sharded)) for p in ("forget", "retain"))
    bar = _progress_bar(n_batches * len(groups), f"attribution ({method.name})") if progress and n_batches else None
    scores, layers = [], quantized_layers(model)
    try:
        for group in groups:
            g_f, g_r, norms = _signals(model, named, [params[j] for j in group], method, config, examples, pad, bar)
            with torch.no_grad():
                for k, j in enumerate(group):
                    p, name = params[j], names[inc[j]]
                    norm = norms.get(id(p))
                    if norm is not None and norm[1] and sharded:  # Conv1D (in x out): this shard's input features
                        norm = (norm[0][ranges[j][0] // p.shape[1]:ranges[j][1] // p.shape[1]], True)
                    theta = dequantized(local_tensor(p), layers.get(id(p))).detach()
                    if g_f and g_f[k].device != theta.device:  # scored where the gradients are (accumulate_device)
                        theta = theta.to(g_f[k].device)
                    value = method.score(theta, grad_forget=g_f[k] if g_f else None,
                                         grad_retain=g_r[k] if g_r else None, name=name, mu=config.mu, seed=seed,
                                         input_norm=norm, offset=ranges[j][0], full_shape=logical_shape(p),
                                         **options)
                    value = as_scores(method.name, value, theta, name)
                    # under a budget the scores wait in host memory; a quantised weight's lazy scores would keep
                    # its dequantised copy alive: they are made now, in host memory
                    if config.memory_budget is not None or is_quantized(p):
                        value = _in_host_memory(value)
                    scores.append(value)
                    for sums in (g_f, g_r):  # a tensor's sums are dropped once it is scored
                        if sums:
                            sums[k] = None
            del g_f, g_r, norms
    finally:
        if bar is not None:
            bar.close()
    with torch.no_grad():
        packed = select(scores, config.ratio, config.scope, config.granularity, [names[i] for i in inc], sharded)
    del scores
    packed = _gather_shards(packed, params) if sharded else _broadcast_packed(packed)
    chosen = dict(zip(inc, packed))
    result = {name: (chosen[i] if i in chosen else np.zeros((math.prod(logical_shape(p)) + 7) // 8, np.uint8),
                     logical_shape(p)) for i, (name, p) in enumerate(named)}
    metadata = _metadata(model, named, config, method, options, examples, forget, retain, seed)
    metadata["passes"] = len(groups)
    return WeightMask.from_packed(result, metadata)


def _in_host_memory(scores):
    """`scores` as `StoredScores` in host memory (made chunk by chunk when they are lazy)."""
    if isinstance(scores, StoredScores):
        scores.flat = scores.flat.cpu()
        return scores
    return StoredScores(torch.cat([scores.chunk(i).cpu() for i in range(scores.num_chunks)]).reshape(scores.shape))


def _passes(params, names, method: MaskMethod, config: MaskConfig, sharded: bool) -> list[list[int]]:
    """The scored parameters in consecutive groups whose fp32 gradient sums (4 bytes per weight, times 2 for a
    method that uses G_f and G_r) fit `config.memory_budget`, one pass over the data each; one group without a
    budget or for a method that takes no gradients. Refused before any work when one parameter alone does not fit."""
    budget = parse_bytes("mask_memory_budget", config.memory_budget)
    if budget is None or not method.uses_gradients:
        return [list(range(len(params)))]
    if sharded:
        raise NotImplementedError("mask_memory_budget takes the weights in groups over several passes; an FSDP2 "
                                  "model already holds only its shard's sums: leave the budget unset there")
    per_weight = 8 if method.uses_retain else 4
    groups, used = [[]], 0
    for j, (p, name) in enumerate(zip(params, names)):
        need = math.prod(logical_shape(p)) * per_weight
        if need > budget:
            raise ValueError(f"mask_memory_budget {config.memory_budget} ({budget} bytes) is smaller than the gradient "
                             f"sums of {name} alone ({need} bytes: {per_weight} per weight); raise it to at least "
                             f"{need} bytes")
        if used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(j)
        used += need
    return groups


def _shard_ranges(params, names, config: MaskConfig, sharded: bool) -> list[tuple[int, int]]:
    """Each scored parameter's flat range on this rank (the whole tensor unless FSDP2 shards it on dim 0)."""
    if sharded and config.granularity != "element":
        raise NotImplementedError(f"granularity={config.granularity!r} ranks whole rows or columns, which FSDP2 "
                                  "splits over ranks; use granularity='element', or make the mask with one process "
                                  "or DDP (hf-wagle attribute) and pass it in")
    ranges = [shard_range(p, *rank_world()) if sharded else (0, p.numel()) for p in params]
    for (a, b), p, name in zip(ranges, params, names):
        if b - a != local_tensor(p).numel():
            raise NotImplementedError(f"{name}: this rank holds {local_tensor(p).numel()} weights, not the "
                                      f"{b - a} of FSDP2's dim-0 sharding; compute the mask with one process or DDP")
    return ranges


def _metadata(model, named, config: MaskConfig, method: MaskMethod, options: dict, examples, forget, retain,
              seed: int) -> dict:
    """How the mask was made: every `MaskConfig` field that shaped it, the method's options, data and model hashes."""
    fields = dataclasses.asdict(config)
    # where and in how many passes the sums were taken does not shape the mask; noise is recorded when it is applied
    for unused in ("options", "accumulate_device", "memory_budget", "noise_std"):
        fields.pop(unused)
    metadata = {
        **fields, "seed": seed,
        "retain_sampling": config.retain_sampling if method.uses_retain else None,
        "num_forget": len(examples["forget"]), "num_retain": len(examples["retain"]),
        "forget_sha256": data_fingerprint(forget) if method.uses_forget else "",
        "retain_sha256": data_fingerprint(retain) if method.uses_retain else "",
        "model": public_name(getattr(getattr(model, "config", None), "_name_or_path", "")) or "",  # never a path
        "param_sha256": parameter_fingerprint((n, logical_shape(p)) for n, p in named),
        "hf_wagle_version": __version__,
    }
    if options:
        metadata["options"] = options
    tied = tied_aliases(model)
    if tied:
        metadata["tied"] = tied
    return metadata


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


def _progress_bar(total: int, desc: str):
    if rank_world()[0] != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False)
