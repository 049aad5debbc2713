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
* `ShiraExport` (verify only): a SHiRA adapter written by `export_adapter` from a full-parameter run; audited through
  its sparse entries (`shira_indices`, `shira_weight`).

`export_adapter` turns a full-parameter run's change into a stock-PEFT adapter: SHiRA (exact wherever float32 allows)
or a truncated-SVD LoRA (with its error).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .mask import WeightMask, project_rows_columns
from .modeling import base_named_parameters, is_sharded, shard_like, tied_aliases


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
    and the gradient masks. An FSDP2 (DTensor) parameter gets this rank's shard of its mask, and one with nothing
    selected an all-False mask rather than freezing: FSDP2 fixed which parameters take gradients when it sharded.
    """
    enforced, grad_masks = {}, {}
    for name, p in base_named_parameters(model):
        m = mask[name] if mask is not None else torch.ones(p.shape, dtype=torch.bool)
        if not p.requires_grad:
            m = torch.zeros_like(m)
        elif not m.any() and not is_sharded(p):
            p.requires_grad_(False)
        elif not m.all():
            grad_masks[p] = shard_like(m, p)
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


def adapter_config_problems(directory: Path, peft_type: str, neutral: set, why: dict) -> list[str]:
    """What in `adapter_config.json` (of type `peft_type`) would let the loaded adapter move weights outside its
    mask: a setting outside `neutral` with a non-default value is a problem when `why` explains it; an unknown one,
    or a missing or unreadable file, cannot be verified (ValueError)."""
    path = directory / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"cannot verify {directory}: no adapter_config.json, which PEFT needs to load the adapter")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot verify {directory}: adapter_config.json is not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != peft_type:
        raise ValueError(f"cannot verify {directory}: adapter_config.json is not a {peft_type} config "
                         f"(peft_type {config.get('peft_type') if isinstance(config, dict) else None!r})")
    problems = []
    for key, value in config.items():
        if key in neutral or _neutral_value(key, value):
            continue
        if key not in why:
            raise ValueError(f"cannot verify {directory}: adapter_config.json sets {key}={value!r}, which hf_wagle "
                             "does not know; it cannot tell whether PEFT would move base weights with it")
        problems.append(f"adapter_config.json: {key}={value!r}: {why[key]}, outside any mask")
    return problems


def lora_config_problems(directory: Path) -> list[str]:
    """`adapter_config_problems` of a LoRA adapter: settings PEFT applies when loading (DoRA, PiSSA/OLoRA-style
    initialisation, layer replication, biases, ...) are problems."""
    return adapter_config_problems(directory, "LORA", _LORA_NEUTRAL, _LORA_WHY)


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
        return (directory / "adapter_model.safetensors").exists() and _peft_type(directory) != "SHIRA"

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


# adapter_config.json of a SHiRA adapter: settings that never move base weights (the initial values and the random
# mask are replaced by the saved weights and indices when PEFT loads it), and those that would
_SHIRA_NEUTRAL = {"auto_mapping", "base_model_name_or_path", "inference_mode", "init_weights", "mask_type",
                  "peft_type", "peft_version", "r", "random_seed", "revision", "target_modules", "task_type"}
_SHIRA_WHY = {"modules_to_save": "full copies of modules are trained and saved",
              "fan_in_fan_out": "the change is applied transposed"}


def _peft_type(directory: Path) -> str | None:
    try:
        config = json.loads((directory / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("peft_type") if isinstance(config, dict) else None


class ShiraExport(Confinement):
    """A SHiRA adapter (`export_adapter(..., format="shira")`): each targeted linear weight changes by
    `sparse(shira_indices, shira_weight)`, so the changed weights are the indices whose value is not zero."""

    kind = "shira"

    def holds(self, directory):
        return (directory / "adapter_model.safetensors").exists() and _peft_type(directory) == "SHIRA"

    def changes(self, directory, mask, base, problems):
        problems += adapter_config_problems(directory, "SHIRA", _SHIRA_NEUTRAL, _SHIRA_WHY)
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in _tensors(directory, "adapter_model"):
            module, _, field = key.removeprefix("base_model.model.").rpartition(".shira_")
            if not module:
                problems.append(f"{key}: a trained tensor that is not part of a SHiRA layer")
                continue
            parts.setdefault(module, {})[field.split(".")[0]] = t
        for module, wi in parts.items():
            name = f"{module}.weight"
            if set(wi) != {"weight", "indices"} or name not in mask:
                raise ValueError(f"cannot verify {directory}: {module} has {sorted(wi)} (needs SHiRA weight and "
                                 "indices) or its weight is not in the mask")
            values, index = wi["weight"].float(), wi["indices"].long()
            out_f, in_f = mask.shape(name)
            if index.dim() != 2 or index.shape != (2, values.numel()) or (index < 0).any() \
                    or (index[0] >= out_f).any() or (index[1] >= in_f).any():
                raise ValueError(f"cannot verify {directory}: {module}'s SHiRA indices do not fit its "
                                 f"{out_f} x {in_f} weight or its {values.numel()} values")
            flat = index[0] * in_f + index[1]
            if flat.unique().numel() != flat.numel():
                problems.append(f"{name}: SHiRA indices repeat, so values add up at the same weight")
            changed = torch.zeros(out_f * in_f, dtype=torch.bool)
            changed[flat[values != 0]] = True
            yield name, changed.view(out_f, in_f), bool(torch.isfinite(values).all())


CONFINEMENTS = (ShiraExport(), LoraConfinement(), GradientMaskConfinement())


def confinement_for(model) -> Confinement:
    """The confinement of a model about to be trained: masked LoRA for a `PeftModel`, gradient masks otherwise."""
    from peft import PeftModel

    kind = "lora" if isinstance(model, PeftModel) else "full"
    return next(c for c in CONFINEMENTS if c.kind == kind)


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
    mask selects all of its weight. SHiRA exports: every non-zero entry must sit inside the mask, with distinct,
    in-range indices and finite values. Full-model folders need `base` (a local folder or Hub id): every weight must
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


# -- exporting a full-parameter run as an adapter -------------------------------------------------------------------

EXPORT_REPORT = "export_report.json"
EXPORT_FORMATS = ("shira", "lora")


@contextmanager
def staged_directory(final):
    """Yield a temporary folder beside `final`; once the block finishes, move its files into `final` (renames on one
    file system). A failure inside the block leaves `final` as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.saving-", dir=final.parent))
    try:
        yield staging
        final.mkdir(exist_ok=True)
        for path in staging.iterdir():
            if (final / path.name).is_dir():
                shutil.rmtree(final / path.name)
            os.replace(path, final / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def nearest_delta(base: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """fp32 `d` that makes `(base.float() + d).to(base.dtype)`, which is how PEFT applies a SHiRA change, equal to
    `trained` wherever float arithmetic allows, and nearest to it elsewhere.

    `trained - base` is exact whenever the two are within a factor 2 of each other (Sterbenz), and then
    `base + d == trained`. Otherwise `d` is stepped one float at a time toward `trained` while that brings the sum
    closer. A few weights may stay unreachable: `base + d` can only land on multiples of the smaller float spacing
    of `base` and `d`, so a weight driven from 0.5 to 1e-9 ends 1 ulp of `base` away. Callers count them."""
    b, u = base.float(), trained.float()
    d = u - b
    for _ in range(8):
        got = (b + d).to(base.dtype).float()
        bad = (got != u).nonzero(as_tuple=True)
        if not bad[0].numel():
            break
        toward = torch.where(got[bad] < u[bad], torch.tensor(float("inf")), torch.tensor(float("-inf")))
        step = torch.nextafter(d[bad], toward)
        better = ((b[bad] + step).to(base.dtype).float() - u[bad]).abs() < (got[bad] - u[bad]).abs()
        if not better.any():
            break
        d[bad] = torch.where(better, step, d[bad])
    return d


def masked_changes(trained, base_model, mask: WeightMask) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{weight name: (base, trained)}` of every parameter that changed; raises if a change leaves the mask, is not
    finite, or sits in a parameter that is not the weight of an `nn.Linear` (an adapter can only hold those)."""
    trained_params = dict(base_named_parameters(trained))
    linear = {f"{n}.weight" for n, m in base_model.named_modules() if isinstance(m, torch.nn.Linear)}
    shared = set(tied_aliases(base_model)) | set(tied_aliases(base_model).values())
    changes, unsupported = {}, []
    for name, b in base_named_parameters(base_model):
        if name not in trained_params:
            raise ValueError(f"the trained model has no parameter {name}; export needs the base it was trained from")
        u = trained_params[name].detach().to("cpu")
        b = b.detach().to("cpu")
        if u.shape != b.shape:
            raise ValueError(f"{name}: shape {tuple(u.shape)} differs from the base's {tuple(b.shape)}")
        changed = u != b
        if not changed.any():
            continue
        if not torch.isfinite(u).all():
            raise ValueError(f"{name}: non-finite values in the trained model; nothing was exported")
        if name not in mask or bool((changed & ~mask[name]).any()):
            raise ValueError(f"{name}: changed outside the mask; this is not the base the run started from, or not "
                             "its mask")
        if name not in linear or name in shared:
            unsupported.append(name)
            continue
        changes[name] = (b, u.to(b.dtype))
    if unsupported:
        raise ValueError(f"{len(unsupported)} changed parameters are not untied linear weights, which an adapter "
                         f"cannot hold: {unsupported[:3]}; train with mask_include/mask_exclude so that only linear "
                         "layers are selected (e.g. mask_include: ['*proj.weight']), or ship the full model")
    if not changes:
        raise ValueError("the trained model equals the base model: nothing to export")
    return changes


def _shira_layout(changes: dict, mask: WeightMask) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """SHiRA's rank r (one per adapter: every targeted `m x n` layer holds exactly `r (m + n)` entries) and, per
    layer, `(indices 2 x r(m+n), exact delta values)`: the changed weights first, then zero-valued padding taken
    from unchanged weights inside the mask, then outside it."""
    need = {name: int((u != b).sum()) for name, (b, u) in changes.items()}
    r = max(-(-need[name] // sum(b.shape)) for name, (b, _) in changes.items())
    too_small = [name for name, (b, _) in changes.items() if r * sum(b.shape) > b.numel()]
    if too_small:
        raise ValueError(f"SHiRA needs r={r} entries per row+column to hold the largest change, more than "
                         f"{too_small[0]} ({tuple(changes[too_small[0]][0].shape)}) has weights; export format='lora' "
                         "or ship the full model")
    layout = {}
    for name, (b, u) in changes.items():
        count = r * sum(b.shape)
        changed = (u != b).reshape(-1)
        inside = mask[name].reshape(-1) & ~changed
        order = torch.cat([changed.nonzero().squeeze(1), inside.nonzero().squeeze(1),
                           (~inside & ~changed).nonzero().squeeze(1)])[:count]
        order = order.sort().values
        values = nearest_delta(b, u).reshape(-1)[order]
        index = torch.stack([order // b.shape[1], order % b.shape[1]]).to(torch.int32)
        layout[name] = (index, values)
    return r, layout


def _applied_error(changes: dict, layout: dict) -> tuple[int, float]:
    """`(weights where base + SHiRA change != trained, largest absolute difference there)`, as PEFT applies it."""
    inexact, worst = 0, 0.0
    for name, (b, u) in changes.items():
        index, values = layout[name]
        merged = b.float().clone()
        merged[index[0].long(), index[1].long()] += values
        diff = (merged.to(b.dtype).float() - u.float()).abs()
        inexact += int((diff != 0).sum())
        worst = max(worst, float(diff.max()))
    return inexact, worst


def _lora_layout(changes: dict, rank: int) -> tuple[dict, dict, float]:
    """Per layer `(B: out x rank, A: rank x in)` of the rank-`rank` truncated SVD of the change, computed on the
    rows and columns the change touches (so `B @ A` is zero elsewhere), and the fidelity report:
    `relative_error = ||delta - B A||_F / ||delta||_F = sqrt(sum_{i>k} s_i^2 / sum_i s_i^2)` and
    `energy_kept = sum_{i<=k} s_i^2 / sum_i s_i^2`; and the overall relative error over all layers,
    `sqrt(sum_layers lost energy / sum_layers energy)`."""
    layout, report, lost_sum, total_sum = {}, {}, 0.0, 0.0
    for name, (b, u) in changes.items():
        delta = u.double() - b.double()
        rows, cols = delta.ne(0).any(1), delta.ne(0).any(0)
        U, S, Vh = torch.linalg.svd(delta[rows][:, cols], full_matrices=False)
        k = min(rank, S.numel())
        root = S[:k].sqrt()
        B = torch.zeros(b.shape[0], rank, dtype=torch.float64)
        A = torch.zeros(rank, b.shape[1], dtype=torch.float64)
        B[rows.nonzero().squeeze(1)[:, None], torch.arange(k)[None, :]] = U[:, :k] * root
        A[torch.arange(k)[:, None], cols.nonzero().squeeze(1)[None, :]] = root[:, None] * Vh[:k]
        energy = S.pow(2)
        total = float(energy.sum())
        kept = float(energy[:k].sum())
        report[name] = {"relative_error": math.sqrt(max(0.0, total - kept) / total), "energy_kept": kept / total,
                        "rank_of_change": int((S > S[0] * 1e-12).sum()) if S.numel() else 0,
                        "rows": int(rows.sum()), "columns": int(cols.sum())}
        layout[name] = (B.float(), A.float(), rows, cols)
        lost_sum, total_sum = lost_sum + max(0.0, total - kept), total_sum + total
    return layout, report, math.sqrt(lost_sum / total_sum)


def check_export_options(format: str, rank, scales) -> list[float] | None:
    """Raise before any work on a bad `export_adapter` option; returns the scales as floats (None: one adapter)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    if format == "lora" and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"format='lora' needs a rank (an int >= 1), got {rank!r}")
    if scales is None:
        return None
    scales = [float(s) for s in scales]
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales}")
    return scales


def export_folders(output_dir, scales) -> list[Path]:
    """Where `export_adapter` writes: `output_dir`, or `output_dir/scale_<s>` for each of the given scales."""
    return [Path(output_dir)] if scales is None else [Path(output_dir) / f"scale_{s:g}" for s in scales]


def export_adapter(trained, base_model, mask: WeightMask, output_dir, format: str = "shira", rank: int | None = None,
                   scales=None, base_name: str | None = None) -> dict:
    """Write the change `trained - base` of a full-parameter run as a stock-PEFT adapter in `output_dir`, with its
    mask, `export_report.json` and a card.

    * `format="shira"`: a SHiRA adapter. Loaded or merged with PEFT, `base + sparse(indices, values)` equals the
      trained weights bit for bit wherever float32 can express it (`nearest_delta`); the report counts the weights
      where it cannot (`inexact_weights`, typically a weight driven close to zero) and the largest difference
      there (`max_abs_error`, 1 ulp of the base weight). The shipped mask is the run's mask.
    * `format="lora"`, `rank=k`: the rank-k truncated SVD of each changed layer (`alpha = r`, so `B @ A` is the
      change), with its per-layer relative error and energy kept in the report. `B @ A` is confined to the rows x
      columns the change touches, and that row x column mask is what ships.

    `scales` (e.g. `[0.25, 0.5, 1.0]`) writes one adapter per scale `s` into `output_dir/scale_<s>`, holding
    `s x` the change (a staged roll-out: deploy the gentlest that forgets enough; the exactness figures hold for
    scale 1 only); the default is one adapter at scale 1 in `output_dir` (`export_folders`). `base_model` is wrapped
    by PEFT while writing and unwrapped afterwards. Returns the report (with `folders`, the folders written).
    Nothing is written when a check fails."""
    from peft import LoraConfig, ShiraConfig, get_peft_model

    from .hub import export_card

    scales = check_export_options(format, rank, scales)
    changes = masked_changes(trained, base_model, mask)
    modules = [name.removesuffix(".weight") for name in changes]
    report = {"format": format, "scales": scales or [1.0], "layers": {}, "changed_weights": 0}
    if format == "shira":
        r, layout = _shira_layout(changes, mask)
        config = ShiraConfig(r=r, target_modules=modules, task_type="CAUSAL_LM")
        shipped = mask
        inexact, worst = _applied_error(changes, layout)
        report.update(rank=r, exact=inexact == 0, inexact_weights=inexact, max_abs_error=worst)
        for name, (index, values) in layout.items():
            report["layers"][name] = {"entries": int(values.numel()), "changed": int((values != 0).sum())}
    else:
        layout, report["layers"], overall = _lora_layout(changes, rank)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, task_type="CAUSAL_LM")
        hull = {name: torch.zeros(p.shape, dtype=torch.bool) for name, p in base_named_parameters(base_model)}
        for name, (_, _, rows, cols) in layout.items():
            hull[name] = rows[:, None] & cols[None, :]
        shipped = WeightMask(hull, {**mask.metadata, "enforced_by": "lora_svd_export"})
        report.update(rank=rank, exact=False, relative_error=overall,
                      max_relative_error=max(v["relative_error"] for v in report["layers"].values()))
    report["changed_weights"] = sum(int((u != b).sum()) for b, u in changes.values())
    base_name = base_name or getattr(base_model, "name_or_path", None)
    peft_model = get_peft_model(base_model, config)
    try:
        layers = dict(peft_model.get_base_model().named_modules())
        with staged_directory(output_dir) as staging:
            for scale, final in zip(scales or [1.0], export_folders(output_dir, scales)):
                for name in changes:
                    layer = layers[name.removesuffix(".weight")]
                    with torch.no_grad():
                        if format == "shira":
                            index, values = layout[name]
                            layer.shira_indices["default"] = index.to(layer.shira_weight["default"].device)
                            layer.shira_weight["default"].copy_(values * scale if scale != 1.0 else values)
                        else:
                            B, A = layout[name][:2]
                            layer.lora_B["default"].weight.copy_(B * scale)
                            layer.lora_A["default"].weight.copy_(A)
                folder = staging / final.relative_to(output_dir)
                peft_model.save_pretrained(str(folder))
                shipped.save(folder)
                scaled = {**report, "scale": scale}
                if scale != 1.0 and format == "shira":  # exactness is that of the whole change
                    scaled.update(exact=None, inexact_weights=None, max_abs_error=None)
                (folder / EXPORT_REPORT).write_text(json.dumps(scaled, indent=2))
                export_card(scaled, base_name, mask.metadata.get("method")).save(str(folder / "README.md"))
    finally:
        peft_model.unload()
    report["folders"] = [str(f) for f in export_folders(output_dir, scales)]
    return report
