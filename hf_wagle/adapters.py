"""How a training mode keeps its change inside a mask, and how a saved result is audited against it.

Each mode is a `Confinement`, chosen in one place (`confinement_for`), with its own check (before any work),
confine (turn an element mask into what training can actually change, plus gradient masks that keep it so) and
verify (read a saved folder and say which weights changed):

* `GradientMaskConfinement` (full parameters): parameters with nothing selected are frozen and the partly selected
  ones have their gradient multiplied by the mask; a saved model is compared bit for bit with its base.
* `LoraConfinement` (masked LoRA). LoRA's change of a linear weight is `delta = (alpha / r) * B @ A` with
  `B: out x r`, `A: r x in`. Zero rows of B give zero rows of delta and zero columns of A give zero columns, so LoRA
  holds exactly a row x column mask `rows[:, None] & cols[None, :]`. Each targeted weight's element mask is projected
  to such rows/columns (`hf_wagle.mask.project_rows_columns`), B's rows and A's columns outside them are zeroed and
  gradient masks keep them zero; a saved adapter is audited through `B @ A`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .mask import WeightMask, project_rows_columns
from .modeling import base_named_parameters, tied_aliases


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
    if init not in (True, False, "gaussian") or getattr(peft_config, "loftq_config", None):
        raise ValueError(
            f"init_lora_weights={init!r} moves part of each base weight into the adapter (or quantises it), so the "
            "base model is no longer untouched and the mask cannot hold; use init_lora_weights=True or 'gaussian'"
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
            enforced[name] = torch.zeros(p.shape, dtype=torch.bool)
            continue
        module = modules[name]
        trainable = any(module.lora_A[a].weight.requires_grad for a in module.active_adapters)
        if element_mask is None or not trainable:
            enforced[name] = torch.full(p.shape, trainable, dtype=torch.bool)
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
    return WeightMask(enforced, _enforced_metadata(peft_model, element_mask, "lora_rows_columns")), grad_masks


def confine_parameters(model, mask: WeightMask | None) -> tuple[WeightMask, dict[torch.Tensor, torch.Tensor]]:
    """Full-parameter training: freeze parameters with nothing selected, gradient-mask the partly selected ones.

    Returns the enforced mask (the given mask, restricted to trainable parameters; all weights when `mask` is None)
    and the gradient masks.
    """
    enforced, grad_masks = {}, {}
    for name, p in base_named_parameters(model):
        m = mask[name] if mask is not None else torch.ones(p.shape, dtype=torch.bool)
        if not p.requires_grad:
            m = torch.zeros_like(m)
        elif not m.any():
            p.requires_grad_(False)
        elif not m.all():
            grad_masks[p] = m.to(p.device)
        enforced[name] = m
    return WeightMask(enforced, _enforced_metadata(model, mask, "gradient_mask")), grad_masks


def _enforced_metadata(model, mask: WeightMask | None, enforced_by: str) -> dict:
    meta = dict(mask.metadata) if mask is not None else {"method": None}
    meta["enforced_by"] = enforced_by
    tied = tied_aliases(model)
    if tied:
        meta["tied"] = tied
    return meta


# adapter_config.json: settings that never move base weights, and the value every other setting must keep
_LORA_NEUTRAL = {"alpha_pattern", "auto_mapping", "base_model_name_or_path", "exclude_modules", "inference_mode",
                 "layers_pattern", "layers_to_transform", "lora_alpha", "lora_dropout", "megatron_core",
                 "modules_to_save", "peft_type", "peft_version", "qalora_group_size", "r", "rank_pattern", "revision",
                 "target_modules", "task_type", "use_rslora"}
_LORA_WHY = {
    "use_dora": "DoRA rescales whole weight columns",
    "init_lora_weights": "this initialisation moves part of each base weight into the adapter when it loads",
    "layer_replication": "replicated layers change the model's structure",
    "bias": "trained biases shift every output feature",
    "lora_bias": "a LoRA bias shifts every output feature",
    "fan_in_fan_out": "the change is applied transposed",
    "trainable_token_indices": "embedding rows are trained outside the LoRA factors",
    "ensure_weight_tying": "the change is tied into other modules",
    "target_parameters": "raw parameters are adapted outside the audited linear layers",
    "use_qalora": "QALoRA changes how the change is applied",
    "loftq_config": "LoftQ re-quantises the base weights",
}


def _neutral_value(key: str, value) -> bool:
    if key == "bias":
        return value == "none"
    if key == "init_lora_weights":
        return value in (True, False, "gaussian")
    return value in (None, False, [], {}, "", 0)


def lora_config_problems(directory: Path) -> list[str]:
    """What in `adapter_config.json` would let the loaded adapter move weights outside its mask.

    Settings PEFT applies when loading (DoRA, PiSSA/OLoRA-style initialisation, layer replication, biases, ...)
    are problems; an unknown setting with a non-default value, or a missing or unreadable file, cannot be verified
    (ValueError).
    """
    path = directory / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"cannot verify {directory}: no adapter_config.json, which PEFT needs to load the adapter")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot verify {directory}: adapter_config.json is not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"cannot verify {directory}: adapter_config.json is not a LoRA config "
                         f"(peft_type {config.get('peft_type') if isinstance(config, dict) else None!r})")
    problems = []
    for key, value in config.items():
        if key in _LORA_NEUTRAL or _neutral_value(key, value):
            continue
        if key not in _LORA_WHY:
            raise ValueError(f"cannot verify {directory}: adapter_config.json sets {key}={value!r}, which hf_wagle "
                             "does not know; it cannot tell whether PEFT would move base weights with it")
        problems.append(f"adapter_config.json: {key}={value!r}: {_LORA_WHY[key]}, outside any mask")
    return problems


class Confinement:
    """One way of keeping training inside a mask (see the module docstring)."""

    kind = ""

    def check(self, model) -> None:
        """Raise before any work if `model` cannot be confined this way."""

    def confine(self, model, mask: WeightMask | None) -> tuple[WeightMask, dict[torch.Tensor, torch.Tensor]]:
        """`(enforced mask, {parameter: bool gradient mask})`; prepares `model` so that only the enforced mask moves."""
        raise NotImplementedError

    def describe(self, model, mask: WeightMask | None, enforced: WeightMask) -> str | None:
        """A line for the log on what the mode could hold of `mask`, or None."""
        return None

    def holds(self, directory: Path) -> bool:
        """Whether a saved folder is this mode's output."""
        raise NotImplementedError

    def changes(self, directory: Path, mask: WeightMask, base, problems: list[str]):
        """Yield `(base weight name, bool tensor of changed weights, all finite)` for a saved folder; append what is
        wrong beyond that to `problems`."""
        raise NotImplementedError


class GradientMaskConfinement(Confinement):
    kind = "full"

    def confine(self, model, mask):
        return confine_parameters(model, mask)

    def holds(self, directory):
        return (directory / "model.safetensors").exists() or (directory / "model.safetensors.index.json").exists()

    def changes(self, directory, mask, base, problems):
        if base is None:
            raise ValueError(f"{directory} holds a full model; pass the base model (--base) to compare against")
        base_dir = Path(base) if Path(base).exists() else Path(_download(base))
        trained = dict(_tensors(directory, "model"))
        for name, b in _tensors(base_dir, "model"):
            if name not in trained:
                continue
            t = trained[name]
            if t.shape != b.shape:
                problems.append(f"{name}: shape {tuple(t.shape)} differs from the base's {tuple(b.shape)}")
                continue
            if t.dtype != b.dtype:
                if not (t.is_floating_point() and b.is_floating_point() and t.element_size() > b.element_size()):
                    problems.append(f"{name}: saved as {t.dtype}, which cannot hold the base's {b.dtype} values "
                                    "exactly, so off-mask weights are not bit-identical; save in the base's dtype")
                    continue
                b = b.to(t.dtype)  # an exact upcast (e.g. a bf16 base trained and saved in fp32)
            # bit patterns, so -0.0 vs 0.0 or a changed NaN payload count as changes
            bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
            yield name, t.view(bits) != b.view(bits), bool(torch.isfinite(t).all())


class LoraConfinement(Confinement):
    kind = "lora"

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

    def holds(self, directory):
        return (directory / "adapter_model.safetensors").exists()

    def changes(self, directory, mask, base, problems):
        problems += lora_config_problems(directory)
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in _tensors(directory, "adapter_model"):
            parts = key.split(".")
            factor = next((x for x in ("lora_A", "lora_B") if x in parts), None)
            if factor is not None and parts[-1] == "weight":
                module = ".".join(parts[:parts.index(factor)]).removeprefix("base_model.model.")
                factors.setdefault(module, {})[factor] = t.float()
            elif factor is not None:
                problems.append(f"{key}: a LoRA {parts[-1]} changes every output feature, outside any mask")
            else:
                name = key.removeprefix("base_model.model.").replace(".modules_to_save", "")
                if name not in mask or not bool(mask[name].all()):
                    problems.append(f"{key}: a full trained tensor that the mask does not cover")
        for module, ab in factors.items():
            if set(ab) != {"lora_A", "lora_B"}:
                raise ValueError(f"cannot verify {directory}: {module} has {sorted(ab)} but not both LoRA factors")
            name = f"{module}.weight"
            delta = ab["lora_B"] @ ab["lora_A"]
            if name in mask and tuple(delta.shape) != tuple(mask.shape(name)):
                raise ValueError(f"cannot verify {directory}: {name} changes a {tuple(delta.shape)} weight but the "
                                 f"mask has shape {tuple(mask.shape(name))}; the mask does not fit this adapter")
            yield name, delta != 0, bool(torch.isfinite(delta).all())


CONFINEMENTS = (LoraConfinement(), GradientMaskConfinement())


def confinement_for(model) -> Confinement:
    """The confinement of a model about to be trained: masked LoRA for a `PeftModel`, gradient masks otherwise."""
    from peft import PeftModel

    return CONFINEMENTS[0] if isinstance(model, PeftModel) else CONFINEMENTS[1]


def _tensors(directory: Path, stem: str):
    """`(name, tensor)` of `stem.safetensors`, or of every shard listed in `stem.safetensors.index.json`."""
    from safetensors import SafetensorError, safe_open

    index = directory / f"{stem}.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else \
        [f"{stem}.safetensors"]
    for file in files:
        try:
            with safe_open(str(directory / file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except (OSError, SafetensorError) as e:
            raise ValueError(f"cannot verify: {directory / file} is missing, truncated or corrupt ({e})") from None


def verify(directory, base=None) -> dict:
    """Audit an unlearning output folder against the mask it ships (`wagle_mask.safetensors`).

    Adapter folders (`adapter_model.safetensors`): for every LoRA pair, `B @ A` must be exactly zero outside the
    mask of its base weight and finite; any other trained tensor (e.g. `modules_to_save`) is unconfined unless the
    mask selects all of its weight. Full-model folders need `base` (a local folder or Hub id): every weight must
    be finite and bit-identical to the base model outside the mask. Returns a report whose `"confined"` is True
    only when every check passes.
    """
    directory = Path(directory)
    mask = WeightMask.load(directory)
    problems, modules, outside_total, inside_total = [], 0, 0, 0

    def check(name: str, changed: torch.Tensor, finite: bool):
        """`changed`: bool tensor, True where the weight differs from the base model's."""
        nonlocal outside_total, inside_total, modules
        modules += 1
        if not finite:
            problems.append(f"{name}: non-finite values")
        if name not in mask:
            if bool(changed.any()):
                problems.append(f"{name}: changed but absent from the mask")
            return
        m = mask[name]
        inside = int((changed & m).sum())
        outside = int(changed.sum()) - inside
        outside_total += outside
        inside_total += inside
        if outside:
            problems.append(f"{name}: {outside} weights change outside the mask")

    confinement = next((c for c in CONFINEMENTS if c.holds(directory)), None)
    if confinement is None:
        raise ValueError(f"{directory} holds neither an adapter (adapter_model.safetensors) nor a model "
                         "(model.safetensors); point at a folder written by WagleTrainer.save_model")
    kind = confinement.kind
    for name, changed, finite in confinement.changes(directory, mask, base, problems):
        check(name, changed, finite)
    return {"directory": str(directory), "kind": kind, "confined": not problems, "tensors_checked": modules,
            "changed_inside_mask": inside_total, "changed_outside_mask": outside_total,
            "mask_ratio": mask.ratio, "mask_metadata": mask.metadata, "problems": problems}


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=["*.safetensors", "*.json"])
