"""The change a PEFT adapter folder makes, computed by PEFT's own code, one module at a time.

`adapter_config.json` is read into PEFT's config class (`PeftConfig.from_peft_type`), and the adapter is injected with
`inject_adapter_in_model` into a skeleton of the base model built on the meta device from the mask's weight names and
shapes: PEFT itself decides which modules it wraps (`target_modules`, `exclude_modules`, `layers_to_transform`,
`layers_pattern`), with which rank and scaling (`r`, `lora_alpha`, `use_rslora`, `rank_pattern`, `alpha_pattern`).
Each wrapped module then gets its saved tensors, mapped as PEFT maps them (the adapter name inserted after the
parameter's own name), and its change is the module's `get_delta_weight`: for LoRA `scaling * B @ A` (transposed
with `fan_in_fan_out`), for SHiRA `sparse(indices, values) * scaling`. A wrapped module the file holds no tensors for
is built on the CPU as PEFT initialises it when loading, and its change counted the same way. Memory: one module's
tensors at a time.
"""

from __future__ import annotations

from pathlib import Path

from ..io import read_adapter_config

_ADAPTER = "default"


def _skeleton(mask):
    """An `nn.Module` tree on the meta device with an `nn.Linear(in, out, bias=False)` at every 2-d `*.weight` the
    mask names, tied aliases included (a tied output head is a module PEFT can target), under the same module path
    (PEFT matches target modules by those names)."""
    import torch
    from torch import nn

    root = nn.Module()
    with torch.device("meta"):
        for name in [*mask.names(), *mask.metadata.get("tied", {})]:
            shape = mask.shape(mask.resolve(name))
            if not (name.endswith(".weight") and len(shape) == 2):
                continue
            *parents, leaf = name.removesuffix(".weight").split(".")
            node = root
            for part in parents:
                if not hasattr(node, part):
                    node.add_module(part, nn.Module())
                node = getattr(node, part)
            if not hasattr(node, leaf):
                node.add_module(leaf, nn.Linear(shape[1], shape[0], bias=False))
    return root


def peft_config_of(directory: Path):
    """`adapter_config.json` as PEFT's own config class; keys PEFT does not know are an error (PEFT would drop them
    with a warning, so what the file says is not what loads)."""
    import warnings

    from peft import PeftConfig

    raw = read_adapter_config(directory)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # PEFT warns, then drops, what it does not read
            return PeftConfig.from_peft_type(**raw)
    except (TypeError, ValueError, KeyError, UserWarning) as e:
        raise ValueError(f"cannot verify {directory}: PEFT cannot read its adapter_config.json as written "
                         f"({str(e).splitlines()[0]})") from None


def peft_deltas(directory: Path, mask, keyed, problems: list[str], key_prefix: str):
    """Yield `(weight name, delta)` for every module PEFT wraps when loading the adapter in `directory` over a model
    shaped as `mask` (module docstring). `keyed` is the `(key, tensor)` pairs PEFT loads from the weight file; they
    are mapped to the wrapped modules by the tuner's own `_remap_adapter_state_dict_for_load`, as
    `set_peft_model_state_dict` does. Saved keys PEFT would not load are appended to `problems`, except those for
    `modules_to_save` copies, which are yielded as `(key, None)` for the caller."""
    import copy

    import torch
    from peft import inject_adapter_in_model
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = peft_config_of(directory)
    injected = copy.deepcopy(config)
    if hasattr(injected, "mask_fn"):
        injected.mask_fn = None  # SHiRA: its indices come from the file; a random mask cannot be drawn on meta
    root = _skeleton(mask)
    try:
        inject_adapter_in_model(injected, root, adapter_name=_ADAPTER, low_cpu_mem_usage=True)
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as e:
        raise ValueError(f"cannot verify {directory}: PEFT cannot apply its adapter_config.json to a model with the "
                         f"mask's layers ({str(e).splitlines()[0]})") from None
    saved = {}
    for key, t in keyed:
        if ".modules_to_save." in key:
            yield key, None
        else:  # the skeleton is the bare model, as when PEFT injects into a transformers model: no prefix
            saved[key.removeprefix(key_prefix)] = t
    tuner = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    remapped = tuner._remap_adapter_state_dict_for_load(root, injected, _ADAPTER, saved)
    wrapped = {n: m for n, m in root.named_modules() if isinstance(m, BaseTunerLayer)}
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in remapped.items():
        owner = next((m for m in _parents(key) if m in wrapped), None)
        local = key[len(owner) + 1:] if owner else None
        if owner is None or local not in wrapped[owner].state_dict():
            problems.append(f"{key}: PEFT does not load it (no adapter tensor of that name in the modules "
                            "adapter_config.json targets)")
            continue
        per_module.setdefault(owner, {})[local] = t
    for name, layer in wrapped.items():
        mine = per_module.get(name, {})
        expected = [k for k in layer.state_dict() if not k.startswith("base_layer.")]
        if mine:
            missing = [k for k in expected if k not in mine]
            if missing:
                raise ValueError(f"cannot verify {directory}: {name} has {sorted(mine)} but not {missing}; PEFT "
                                 "would start the rest as it initialises them")
            try:
                layer.load_state_dict(mine, strict=False, assign=True)
            except RuntimeError as e:
                raise ValueError(f"cannot verify {directory}: PEFT cannot load {name}'s saved tensors under "
                                 f"adapter_config.json ({str(e).splitlines()[-1].strip()})") from None
        else:
            layer = _initialised(config, name, mask.shape(mask.resolve(f"{name}.weight")))
        try:
            with torch.no_grad():
                delta = layer.get_delta_weight(_ADAPTER)
            delta = (delta.to_dense() if delta.is_sparse else delta).float()
        except (RuntimeError, IndexError, KeyError) as e:
            raise ValueError(f"cannot verify {directory}: PEFT cannot form {name}'s change from its saved tensors "
                             f"({str(e).splitlines()[0]})") from None
        yield f"{name}.weight", delta
        layer.to("meta")


def _parents(module: str):
    """`a.b.c.d` -> `a.b.c`, `a.b`, `a`: the module paths a saved key may belong to, longest first."""
    parts = module.split(".")
    for i in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:i])


def _initialised(config, name: str, shape):
    """The tuner layer PEFT builds for `name` when the file holds none of its tensors: on the CPU, initialised."""
    import copy

    import torch
    from peft import inject_adapter_in_model
    from torch import nn

    *parents, leaf = name.split(".")
    root = node = nn.Module()
    for part in parents:
        node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(leaf, nn.Linear(shape[1], shape[0], bias=False, device="cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_adapter_in_model(copy.deepcopy(config), root, adapter_name=_ADAPTER)
    return root.get_submodule(name)
