"""Model and parameter helpers shared by every stage: base-model parameter names under PEFT wrapping, tied
parameters, the base model's outputs through an adapter, and the few collectives attribution and evaluation need."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

ADAPTER_PREFIXES = ("lora_", "shira_")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_name(name: str) -> str | None:
    """A parameter name without PEFT's wrapping (`.base_layer`), or None for an adapter's own parameter."""
    parts = name.split(".")
    if any(part.startswith(ADAPTER_PREFIXES) for part in parts):
        return None
    return ".".join(x for x in parts if x != "base_layer")


def base_named_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """`(name, parameter)` of the base model, with PEFT wrapping removed from the names
    (`base_model.model.` and `.base_layer`) and adapter parameters left out. Shared (tied) parameters appear once."""
    return [(name, p) for name, p in ((base_name(n), p) for n, p in _base(model).named_parameters()) if name]


def logical_shape(p: torch.Tensor) -> tuple[int, ...]:
    """The shape a weight has in the model's computation. A bitsandbytes 4-bit weight is stored packed (two values
    per byte, `(rows * columns / 2, 1)`) and keeps its own shape in `quant_state.shape`; every other tensor is what it
    looks like (8-bit weights keep theirs)."""
    state = getattr(p, "quant_state", None)
    return tuple(state.shape) if getattr(state, "shape", None) is not None else tuple(p.shape)


def is_quantized(p: torch.Tensor) -> bool:
    """Whether `p` is a bitsandbytes-quantised weight (4-bit packed or 8-bit): it holds no gradient of its own."""
    return type(p).__name__ in ("Params4bit", "Int8Params")


def dequantized(p: torch.Tensor, layer=None) -> torch.Tensor:
    """The fp32 weight a bitsandbytes layer computes with, in its logical shape; any other tensor as it is.

    4-bit: `dequantize_4bit` of the codes (NF4/FP4 level times the block's absmax). 8-bit (LLM.int8() row-wise):
    `W = CB * SCB[:, None] / 127` (`int8_vectorwise_dequant`), `SCB` on the weight until the layer's first forward
    moves it to `layer.state`."""
    if not is_quantized(p):
        return p
    import bitsandbytes.functional as bnb

    if type(p).__name__ == "Int8Params":
        scales = p.SCB if getattr(p, "SCB", None) is not None else getattr(getattr(layer, "state", None), "SCB", None)
        if scales is None:
            raise ValueError("an 8-bit weight without its row scales (SCB): pass the Linear8bitLt layer that holds it")
        return bnb.int8_vectorwise_dequant(p.data, scales).float()
    _check_not_repacked(p.quant_state)
    return bnb.dequantize_4bit(p.data, p.quant_state).float().reshape(p.quant_state.shape)


def quantized_layers(model) -> dict[int, torch.nn.Module]:
    """`{id(weight): layer}` of every bitsandbytes-quantised linear layer of `model`."""
    return {id(m.weight): m for m in model.modules() if is_quantized(getattr(m, "weight", None))}


def _check_not_repacked(state) -> None:
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError("this 4-bit model has run bitsandbytes' CPU inference kernel, which repacks each weight in "
                         "place with its scales rounded to bfloat16: gradients do not flow through it and its weights "
                         "are no longer the ones loaded. Load the model again and pass it in before any inference")


def keep_4bit_differentiable(model) -> None:
    """Turn off, on every bitsandbytes 4-bit layer of `model`, the CPU inference kernel that an eval-mode forward
    without gradients switches to for good: it repacks the weight in place (scales rounded to bfloat16) and has no
    backward, so a later training step gets no gradient through that layer, silently. A model already repacked is
    refused. Layers keep computing `x @ dequantize(W)^T`, as they do on a GPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            _check_not_repacked(getattr(module.weight, "quant_state", None))
            module.support_avx512bf16_for_cpu = False


def quantization_of(model) -> dict | None:
    """The base model's bitsandbytes quantisation (`config.quantization_config` as a dict: `load_in_4bit`,
    `bnb_4bit_quant_type`, ...), or None for a model in its full precision."""
    config = getattr(getattr(_base(model), "config", None), "quantization_config", None)
    if config is None:
        return None
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def tied_aliases(model) -> dict[str, str]:
    """`{alias: name}` for parameters registered under several names (a tied input embedding and output head):
    `name` is the one `base_named_parameters` keeps, in the same PEFT-free spelling."""
    first, aliases = {}, {}
    for name, p in _base(model).named_parameters(remove_duplicate=False):
        name = base_name(name)
        if name is None:
            continue
        if id(p) in first and first[id(p)] != name:
            aliases[name] = first[id(p)]
        first.setdefault(id(p), name)
    return aliases


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the first `nn.ModuleList` named `layers` (Llama, Mistral, Qwen, Gemma,
    ...) or `h` (GPT-2 style)."""
    for name, module in _base(model).named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h"):
            return module
    raise ValueError("cannot find the model's decoder layers (a ModuleList named `layers` or `h`)")


def rank_world() -> tuple[int, int]:
    """`(rank, world size)` under torch.distributed, `(0, 1)` without it.

    The collectives below use torch.distributed's process group directly rather than Accelerate's operations:
    Accelerate's `PartialState` does not see a group that a script initialised itself (under `torchrun` on CPU it
    reports one process), and its `reduce` would then silently act locally, giving each rank a different mask.
    """
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks_(tensors) -> None:
    """Replace each tensor by its sum over all ranks, in place; nothing on one process. A tensor the backend cannot
    reduce where it lies (host memory under NCCL) crosses to the backend's device and back, one at a time."""
    if rank_world()[1] == 1:
        return
    device = _device()
    for t in tensors:
        if t.device.type == device.type:
            dist.all_reduce(t)
        else:
            moved = t.to(device)
            dist.all_reduce(moved)
            t.copy_(moved)


def gather_from_ranks(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape and dtype on all ranks), in rank order, on the CPU; `[tensor]` on one
    process."""
    if rank_world()[1] == 1:
        return [tensor]
    tensor = tensor.to(_device())
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return [t.cpu() for t in out]


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (returned on the CPU); as is on one process."""
    if rank_world()[1] == 1:
        return tensor
    tensor = tensor.to(_device())
    dist.broadcast(tensor, src=0)
    return tensor.cpu()


@contextlib.contextmanager
def peft_wrapping():
    """Around wrapping a model with PEFT: `PeftModel` reads `model.is_gradient_checkpointing`, which transformers 5
    deprecates with a FutureWarning on every wrap; that one warning is silenced inside the block only (a user's own
    use of the attribute keeps it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model's outputs for a `PeftModel`; a no-op context for a plain model.

    Leaving PEFT's `disable_adapter()` re-marks every parameter of the active adapters trainable; the
    `requires_grad` flags are put back as they were, so modules frozen on purpose (RMU, empty masks) stay frozen.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def is_sharded(t: torch.Tensor) -> bool:
    """Whether `t` is a DTensor (an FSDP2 parameter or gradient)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2 parameters and gradients), sharing its storage; `t` itself otherwise."""
    return t.to_local() if is_sharded(t) else t


def as_shard(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`local`, this rank's shard of a tensor laid out as the FSDP2 (DTensor) `param`, as a DTensor (no
    communication)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, param.device_mesh, param.placements, shape=param.shape, stride=param.stride())


def norm_over_shards(local_norm: float, param: torch.Tensor) -> float:
    """`||g||` of a gradient laid out as the FSDP2 (DTensor) `param` is, from this rank's `||g_local||`: the square
    root of the squares summed over all ranks, divided by the number of replicas (HSDP holds each shard on
    `world / shards` ranks)."""
    total = torch.tensor([local_norm ** 2], dtype=torch.float64)
    sum_over_ranks_([total])
    shards = math.prod(param.device_mesh.size(i) for i, pl in enumerate(param.placements) if pl.is_shard())
    return math.sqrt(float(total[0]) * shards / rank_world()[1])


def reshard(model) -> None:
    """Free the unsharded parameters FSDP2 keeps after a forward pass without backward (its root module does not
    reshard after forward), so that `model.parameters()` are the sharded DTensors again; nothing otherwise (nothing
    for an object that is not a torch module)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, torch.nn.Module):
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's part of `full` (a tensor of `param`'s full shape) laid out as `param` is: the local shard for an
    FSDP2 (DTensor) parameter, cut locally without communication; all of it otherwise. On `param`'s device."""
    if not is_sharded(param):
        return full.to(param.device)
    from torch.distributed.tensor import distribute_tensor

    full = full.to(local_tensor(param).device)
    return local_tensor(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))


def shard_range(param: torch.Tensor, rank: int, world: int) -> tuple[int, int]:
    """`[start, stop)` of the flattened full tensor that `rank` holds of an FSDP2 parameter: dim-0 shards of
    `torch.chunk` sizes, rows `[r * c, min((r + 1) * c, rows))` with `c = ceil(rows / W)`, one mesh dimension
    spanning all ranks. A parameter that is not a DTensor counts as held whole by rank 0."""
    n = param.numel()
    if not is_sharded(param) or param.dim() == 0:
        return (0, n) if rank == 0 else (n, n)
    from torch.distributed.tensor import Shard

    if param.device_mesh.ndim != 1 or param.device_mesh.size() != world or tuple(param.placements) != (Shard(0),):
        raise NotImplementedError(
            f"attribution over shards supports FSDP2's dim-0 sharding on one mesh dimension spanning all {world} "
            f"ranks; a parameter of shape {tuple(param.shape)} has placements {param.placements} on "
            f"{param.device_mesh}. Compute the mask with one process or DDP (hf-wagle attribute) and pass it in")
    rows = param.shape[0]
    c = -(-rows // world)
    start, stop = min(rank * c, rows), min((rank + 1) * c, rows)
    cols = n // rows if rows else 0
    return start * cols, stop * cols
