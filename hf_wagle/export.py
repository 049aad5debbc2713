"""`export_adapter`: a full-parameter run's change `trained - base` as a stock-PEFT adapter, in any exportable format
(`hf_wagle.formats`): SHiRA (exact wherever float32 allows) or a truncated-SVD LoRA (with its error)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .formats import export_formats, get_format
from .io import staged_directory
from .mask import WeightMask
from .modeling import base_named_parameters, peft_wrapping, tied_aliases
from .record import artifact_digests, save_record

EXPORT_REPORT = "export_report.json"


def check_export_options(format: str, rank, scales) -> list[float] | None:
    """Raise before any work on a bad `export_adapter` option; returns the scales as floats (None: one adapter)."""
    if format not in export_formats():
        raise ValueError(f"format must be one of {export_formats()}, got {format!r}")
    get_format(format).check_options(rank=rank)
    if scales is None:
        return None
    scales = [float(s) for s in scales]
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales}")
    return scales


def export_folders(output_dir, scales) -> list[Path]:
    """Where `export_adapter` writes: `output_dir`, or `output_dir/scale_<s>` for each of the given scales."""
    return [Path(output_dir)] if scales is None else [Path(output_dir) / f"scale_{s:g}" for s in scales]


def masked_changes(trained, base_model, mask: WeightMask, strict: bool = False) -> tuple[dict, dict]:
    """`({weight name: (base, trained)}, dropped)` of every parameter that changed; raises if a change leaves the mask
    or is not finite. A changed parameter that is not the weight of an untied `nn.Linear` (a norm, a bias, an
    embedding: the adapter formats hold only those) goes to `dropped`, `{name: {"changed", "max_abs_change",
    "relative_change"}}` with `relative_change = ||trained - base|| / ||base||`; with `strict` it is refused."""
    trained_params = dict(base_named_parameters(trained))
    linear = {f"{n}.weight" for n, m in base_model.named_modules() if isinstance(m, torch.nn.Linear)}
    shared = set(tied_aliases(base_model)) | set(tied_aliases(base_model).values())
    changes, unsupported = {}, {}
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
            delta = (u.to(torch.float64) - b.to(torch.float64))
            unsupported[name] = {"changed": int(changed.sum()), "max_abs_change": float(delta.abs().max()),
                                 "relative_change": float(delta.norm() / b.to(torch.float64).norm().clamp(min=1e-30))}
            continue
        changes[name] = (b, u.to(b.dtype))
    if unsupported and strict:
        raise ValueError(f"{len(unsupported)} changed parameters are not untied linear weights, which an adapter "
                         f"cannot hold: {list(unsupported)[:3]}; train with mask_include/mask_exclude so that only "
                         "linear layers are selected (e.g. mask_include: ['*proj.weight']), ship the full model, or "
                         "export without strict (those changes are then left out, and the report says by how much)")
    if not changes:
        raise ValueError("no changed linear weight to export" + (f" (only {list(unsupported)[:3]}, which an adapter "
                                                                 "cannot hold)" if unsupported else
                                                                 ": the trained model equals the base model"))
    return changes, unsupported


def export_adapter(trained, base_model, mask: WeightMask, output_dir, format: str = "shira", rank: int | None = None,
                   scales=None, base_name: str | None = None,
                   write_card: Callable[[Path, dict, str | None, str | None], None] | None = None,
                   record: dict | None = None, strict: bool = False) -> dict:
    """Write the change `trained - base` of a full-parameter run as a stock-PEFT adapter in `output_dir`, with its
    mask, `export_report.json` and a card written by `write_card(folder, report, base_name, mask_method)` (default
    `hf_wagle.hub.write_export_card`).

    Changed parameters an adapter cannot hold (norms, biases, embeddings, tied weights) are left out and listed in
    `report["dropped"]` with how much each changed (`masked_changes`); `strict=True` refuses them instead.

    `format` is an exportable format (`hf_wagle.formats.export_formats()`), whose `build` holds the change:
    `"shira"` exactly wherever float32 allows (the report counts `inexact_weights` and `max_abs_error`), `"lora"`
    with `rank=k` as the rank-k truncated SVD of each changed layer (the report has each layer's relative error and
    energy kept). `scales` (e.g. `[0.25, 0.5, 1.0]`) writes one adapter per scale `s` into `output_dir/scale_<s>`,
    holding `s x` the change (a staged roll-out: deploy the gentlest that forgets enough; the exactness figures hold
    for scale 1 only); the default is one adapter at scale 1 in `output_dir` (`export_folders`). `base_model` is
    wrapped by PEFT while writing and unwrapped afterwards. `record` is the run's `unlearning_record.json`: each
    export carries it (without the run's audits, which are chained to the run's folder), with an `export` entry
    (format, scale, fidelity, the run record's digest) and the export's own file digests, sealed again (the card
    reads it). Returns the report (with `folders`, the folders written).
    Nothing is written when a check fails."""
    if write_card is None:  # the usual card; a caller may pass its own writer
        from .hub import write_export_card as write_card

    from peft import get_peft_model, set_peft_model_state_dict

    scales = check_export_options(format, rank, scales)
    fmt = get_format(format)
    changes, dropped = masked_changes(trained, base_model, mask, strict)
    built = fmt.build(changes, mask, rank=rank)
    report = {"format": format, "scales": scales or [1.0], "layers": {}, "changed_weights": 0, **built.report}
    report["changed_weights"] = sum(int((u != b).sum()) for b, u in changes.values())
    report["dropped"] = dropped
    report["dropped_weights"] = sum(d["changed"] for d in dropped.values())
    base_name = base_name or getattr(base_model, "name_or_path", None)
    with peft_wrapping():
        peft_model = get_peft_model(base_model, built.config)
    try:
        with staged_directory(output_dir) as staging:
            for scale, final in zip(scales or [1.0], export_folders(output_dir, scales)):
                tensors, scaled = fmt.scaled(built.tensors, report, scale)
                with torch.no_grad():
                    loaded = set_peft_model_state_dict(peft_model, tensors)
                if loaded.unexpected_keys:
                    raise ValueError(f"format {format!r} built tensors the adapter has no place for: "
                                     f"{loaded.unexpected_keys[:3]}")
                folder = staging / final.relative_to(output_dir)
                peft_model.save_pretrained(str(folder), save_embedding_layers=False)  # base weights stay out
                built.mask.save(folder)
                (folder / EXPORT_REPORT).write_text(json.dumps(scaled, indent=2))
                if record is not None:
                    save_record(folder, {**record, "artifacts": artifact_digests(folder), "audits": [], "export": {
                        "format": format, "scale": scale, "fidelity": fmt.fidelity(scaled),
                        "run_record_digest": record.get("digest")}})
                write_card(folder, scaled, base_name, mask.metadata.get("method"))
    finally:
        peft_model.unload()
    report["folders"] = [str(f) for f in export_folders(output_dir, scales)]
    return report
