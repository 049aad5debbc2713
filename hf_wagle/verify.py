"""`verify`: audit a saved result against the mask it ships, whatever its format (`hf_wagle.formats`)."""

from __future__ import annotations

from pathlib import Path

from .formats import format_of
from .io import MODEL_STEM, local_or_download, read_adapter_config, tensor_names, tensors_in_name_order
from .mask import WeightMask
from .options import public_name
from .record import audit_chain, base_matches, check_record, read_record


def verify(directory, base=None) -> dict:
    """Audit an unlearning output folder against the mask it ships (`wagle_mask.safetensors`).

    The folder's format (`hf_wagle.formats.format_of`) says which weights changed: for a LoRA adapter, `B @ A` of
    every pair (any other trained tensor, e.g. `modules_to_save`, is unconfined unless the mask selects all of its
    weight); for a SHiRA adapter, its non-zero entries (with distinct, in-range indices); for a full model, every
    weight that is not bit-identical to `base` (a local folder or Hub id, needed then). Each change must sit inside
    the mask and be finite, and the adapter's config must not move base weights when PEFT loads it. Returns a report
    whose `"confined"` is True only when every check passes. When the folder holds an `unlearning_record.json`,
    `report["record"]` gives its digest and what in the folder does not match it (`hf_wagle.record.check_record`).
    With `base`, the mask must name only tensors the base model has (`foreign_mask_names`), and
    `report["base_matches_record"]` says whether its weights are the ones the record's run started from (None when
    the record holds no digest of them).
    """
    directory = Path(directory)
    mask = WeightMask.load(directory)
    fmt = format_of(directory)
    problems, checked, outside_total, inside_total = [], 0, 0, 0
    for name, changed, finite in fmt.changes(directory, mask, base, problems):
        checked += 1
        if not finite:
            problems.append(f"{name}: non-finite values")
        if name not in mask:
            if bool(changed.any()):
                problems.append(f"{name}: changed but absent from the mask")
            continue
        inside = int((changed & mask[name]).sum())
        outside = int(changed.sum()) - inside
        outside_total += outside
        inside_total += inside
        if outside:
            problems.append(f"{name}: {outside} weights change outside the mask")
    record = read_record(directory)
    same_base = None
    record_problems = [] if record is None else check_record(directory, record) + named_base_problems(directory,
                                                                                                       record)
    if base is not None:
        base_dir = local_or_download(base)
        problems += foreign_mask_names(mask, base_dir)
        same_base = base_matches(record, tensors_in_name_order(base_dir, MODEL_STEM), in_name_order=True)
        if same_base is False:
            record_problems.append(f"{base} is not the base the record's run started from (its weights differ from "
                                   "the recorded digest): base plus this change is not the model the run measured")
    return {"directory": str(directory), "kind": fmt.name, "confined": not problems, "tensors_checked": checked,
            "changed_inside_mask": inside_total, "changed_outside_mask": outside_total,
            "mask_ratio": mask.ratio, "mask_metadata": mask.metadata, "problems": problems,
            "record": None if record is None else {"digest": record.get("digest"), "problems": record_problems,
                                                   "audits": audit_chain(record)},
            "base_matches_record": same_base}


def named_base_problems(directory: Path, record: dict) -> list[str]:
    """The base an adapter's config makes loaders fetch (`base_model_name_or_path`, `revision`, as published) must
    be the base the record names: `AutoPeftModelForCausalLM` loads whatever the config names."""
    if not (directory / "adapter_config.json").exists():
        return []
    config = read_adapter_config(directory)
    named = (record.get("base_model") or {}).get("name")
    problems = []
    if public_name(config.get("base_model_name_or_path")) != named:
        problems.append(f"adapter_config.json names base {public_name(config.get('base_model_name_or_path'))!r}, "
                        f"the record's run started from {named!r}: a loader following the config loads another base")
    if config.get("revision") not in (None, (record.get("base_model") or {}).get("revision")):
        problems.append(f"adapter_config.json pins revision {config.get('revision')!r}, which the record does not "
                        "name: a loader would fetch that revision of the base")
    return problems


def foreign_mask_names(mask: WeightMask, base_dir) -> list[str]:
    """A problem when the mask names tensors the base checkpoint does not hold (under the name or a tied alias): the
    mask was made for another model, so its ratio and coverage say nothing about this one."""
    held = tensor_names(Path(base_dir), MODEL_STEM)
    aliases: dict[str, set[str]] = {}
    for alias, name in mask.metadata.get("tied", {}).items():
        aliases.setdefault(name, set()).add(alias)
    foreign = [n for n in mask.names() if n not in held and not aliases.get(n, set()) & held]
    if not foreign:
        return []
    return [f"the mask names {len(foreign)} tensor(s) the base model does not have (first: {foreign[0]}); it was "
            "made for another model"]

