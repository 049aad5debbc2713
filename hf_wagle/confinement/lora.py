"""Masked LoRA. LoRA's change of a linear weight is `delta = (alpha / r) * B @ A` with `B: out x r`, `A: r x in`.

Zero rows of B give zero rows of delta and zero columns of A give zero columns, so LoRA holds exactly a row x column
mask `rows[:, None] & cols[None, :]`. Each targeted weight's element mask is projected to such rows/columns
(`hf_wagle.mask.project_rows_columns`), B's rows and A's columns outside them are zeroed and gradient masks keep
them zero; the saved adapter is audited through `B @ A` (`hf_wagle.formats.lora`).
"""

from __future__ import annotations

import torch

from ..mask import WeightMask, project_rows_columns
from ..modeling import base_named_parameters, logical_shape, tied_aliases
from .base import Confinement, enforced_metadata, register_confinement


def check_lora_config(peft_config, masked: bool) -> None:
    """Raise before any work if `peft_config` cannot be confined to a mask exactly."""
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise NotImplementedError(
            f"peft_config must be a peft.LoraConfig, got {type(peft_config).__name__}; other adapter types are not "
            "supported for unlearning yet"
        )
    if getattr(peft_config, "use_dora", False):
        raise ValueError("use_dora=True rescales whole weight columns, which no mask can confine; set use_dora=False")
    if peft_config.bias != "none" or getattr(peft_config, "lora_bias", False):
        raise ValueError("LoraConfig(bias=...) / lora_bias=True train biases that shift every output feature, outside "
                         "any mask; use bias='none' and lora_bias=False")
    init = peft_config.init_lora_weights
    if init not in (True, "gaussian") or getattr(peft_config, "loftq_config", None):
        raise ValueError(
            f"init_lora_weights={init!r} moves part of each base weight into the adapter, quantises it, or (False) "
            "starts the adapter as a random change, so the model does not start as the base and the mask cannot "
            "hold; use init_lora_weights=True or 'gaussian'"
        )
    if getattr(peft_config, "trainable_token_indices", None):
        raise ValueError("trainable_token_indices trains embedding rows outside LoRA's factors; leave it unset")
    if masked and peft_config.modules_to_save:
        raise ValueError(
            "modules_to_save trains full copies of modules, outside the mask; leave it empty, or set mask_method=None"
        )


def lora_modules(peft_model) -> list[tuple[str, torch.nn.Module]]:
    """`(base weight name, LoRA layer)` for every LoRA-wrapped layer; raises unless each wraps an `nn.Linear`."""
    from peft.tuners.lora import LoraLayer

    tied = tied_aliases(peft_model)
    shared = set(tied) | set(tied.values())
    out = []
    for name, module in peft_model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            if not isinstance(module.get_base_layer(), torch.nn.Linear):
                raise NotImplementedError(
                    f"{name} is a {type(module.get_base_layer()).__name__}; masked LoRA supports nn.Linear targets "
                    "only. Restrict `target_modules` to linear projections."
                )
            if f"{name}.weight" in shared:
                raise ValueError(
                    f"{name} shares its weight with another module (tied input embedding and output head). A LoRA on "
                    "it changes only this module, but merging it changes the shared tensor, so the merged model "
                    f"would differ from the trained one. Leave {name} out of `target_modules` ('all-linear' does)."
                )
            out.append((f"{name}.weight", module))
    if not out:
        raise ValueError("the PEFT model has no LoRA layers; check `target_modules`")
    return out


def confine_lora(peft_model, element_mask: WeightMask | None) -> tuple[WeightMask, dict[torch.Tensor, torch.Tensor]]:
    """Confine every active LoRA adapter of `peft_model` to the row x column projection of `element_mask`.

    Returns `(enforced, grad_masks)`: `enforced` is the mask of base weights LoRA can now change (structured on
    the targeted weights, False elsewhere); `grad_masks` maps each LoRA factor to the bool mask its gradient must
    be multiplied by. With `element_mask=None` (dense LoRA) every targeted weight is enforced whole.
    """
    modules = dict(lora_modules(peft_model))
    enforced, grad_masks = {}, {}
    for name, p in base_named_parameters(peft_model):
        if name not in modules:
            enforced[name] = torch.zeros(logical_shape(p), dtype=torch.bool)
            continue
        module = modules[name]
        trainable = any(module.lora_A[a].weight.requires_grad for a in module.active_adapters)
        if element_mask is None or not trainable:
            enforced[name] = torch.full(logical_shape(p), trainable, dtype=torch.bool)
            continue
        rows, cols = project_rows_columns(element_mask[name])
        enforced[name] = rows[:, None] & cols[None, :]
        for adapter in module.active_adapters:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            rows_d, cols_d = rows.to(b.device), cols.to(a.device)
            with torch.no_grad():
                a.mul_(cols_d[None, :])
                b.mul_(rows_d[:, None])
            if not rows.any():
                a.requires_grad_(False)
                b.requires_grad_(False)
            else:
                grad_masks[a] = cols_d[None, :].expand_as(a).contiguous()
                grad_masks[b] = rows_d[:, None].expand_as(b).contiguous()
    return WeightMask(enforced, enforced_metadata(peft_model, element_mask, "lora_rows_columns")), grad_masks


@register_confinement
class LoraConfinement(Confinement):
    kind = "lora"

    def accepts(self, model):
        from peft import PeftModel

        return isinstance(model, PeftModel)

    def check(self, model):
        lora_modules(model)

    def confine(self, model, mask):
        return confine_lora(model, mask)

    def describe(self, model, mask, enforced):
        if mask is None:
            return None
        targeted = {n for n, _ in lora_modules(model)}
        outside = sum(mask.count(n) for n in mask.names() if n not in targeted)
        return (f"LoRA holds {enforced.num_selected} of the {mask.num_selected} weights the "
                f"{mask.metadata.get('method') or 'given'} mask selects: a row x column projection on the "
                f"{len(targeted)} targeted linear layers. The {outside} selected weights of other parameters "
                "(embeddings, a tied output head, norms, untargeted layers) stay unchanged.")
