"""`unlearning_record.json`: the evidence of a run, saved beside its adapter or model (and in its checkpoints and
exports), never holding data text.

What it holds: the package versions; the base model's public name and a digest of its weights; a digest of each data
set as tokenised (forget, retain as trained on, and the evaluation sets) with its row count; the settings (objective
and its arguments, mask settings, optimiser, seed, prompt template); the mask actually enforced (its checksum,
counts); the targets and whether they were met; every score before and after; the `verify` verdict; the digest of
every weight file and of the mask file it sits beside; start and end times; later audits, appended.

Digests are SHA-256. A tensor file's digest covers, for every tensor in name order, its name, dtype, shape and bytes
(not the file's bytes: safetensors headers may order metadata differently for equal tensors). A data set's digest
covers the token ids and labels of every example in order. The record's own `digest` is the SHA-256 of its canonical
JSON (sorted keys, no spaces) without the `digest` and `audits` keys; the card shows it, so a copy can be compared
with what was published. Later audits (`hf-wagle evaluate --audit-by NAME`) are appended to `audits`, each with its
own digest and the record digest it refers to, so appending one never invalidates the original entries. Torch-free at
import.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from .io import RECORD_FILE
from .version import __version__

RECORD_VERSION = 1
_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")


def tensors_digest(named_tensors, in_name_order: bool = False) -> str:
    """SHA-256 over `(name, dtype, shape, bytes)` of `(name, tensor)` pairs, in name order (`in_name_order`: the
    pairs already come in that order, so they are hashed one at a time as they come)."""
    h = hashlib.sha256()
    for name, t in named_tensors if in_name_order else sorted(named_tensors, key=lambda x: x[0]):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def _raw_bytes(t) -> bytes:
    import torch

    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def file_digest(path) -> str:
    """The digest of a safetensors file's tensors (module docstring); a `WeightMask` file by its own checksum, which
    covers its bits, index and metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "wagle.sha256" in meta:
            return "mask:" + meta["wagle.sha256"]
        return tensors_digest((k, f.get_tensor(k)) for k in f.keys())


def artifact_files(folder) -> list[Path]:
    """The weight files and the mask of a saved folder (shards of a sharded model included)."""
    from .mask import MASK_FILE

    folder = Path(folder)
    files = [folder / n for n in (*_WEIGHT_FILES, MASK_FILE) if (folder / n).is_file()]
    return files + sorted(p for p in folder.glob("model-*-of-*.safetensors") if p.is_file())


def artifact_digests(folder) -> dict[str, str]:
    return {p.name: file_digest(p) for p in artifact_files(folder)}


def examples_digest(examples: list[dict]) -> str:
    """SHA-256 of the token ids and labels of tokenised examples, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([list(ex["input_ids"]), list(ex.get("labels", []))], separators=(",", ":")).encode())
    return h.hexdigest()


def data_entry(dataset, tokenizer, prompt_template: str, max_length) -> dict:
    from .data import tokenize_dataset

    examples = tokenize_dataset(dataset, tokenizer, prompt_template, max_length)
    return {"rows": len(examples), "sha256": examples_digest(examples)}


def _canonical_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def record_digest(record: dict) -> str:
    """The seal: everything but `digest` and the later `audits` (each audit carries its own digest)."""
    return _canonical_digest({k: v for k, v in record.items() if k not in ("digest", "audits")})


def append_audit(folder, entry: dict) -> dict:
    """Append a later audit to the record in `folder` without touching the sealed entries: `entry` gets `when`, the
    record's digest it refers to, and its own `digest` (SHA-256 of the rest of it)."""
    record = read_record(folder)
    if record is None:
        raise ValueError(f"{folder} holds no {RECORD_FILE} to append an audit to")
    entry = {**entry, "when": _now(), "record_digest": record.get("digest")}
    entry["digest"] = _canonical_digest(entry)
    record.setdefault("audits", []).append(entry)
    path = Path(folder, RECORD_FILE)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    return entry


def versions() -> dict:
    import peft
    import torch
    import transformers

    return {"hf_wagle": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def settings_of(trainer) -> dict:
    """The settings a run was made with (numbers and names; refusal texts only counted)."""
    import dataclasses

    args = trainer.args
    objective_args = dataclasses.asdict(trainer.objective.args) if trainer.objective.args is not None else None
    for k, v in (objective_args or {}).items():
        if isinstance(v, (list, tuple)) and any(isinstance(x, str) for x in v):
            objective_args[k] = f"{len(v)} texts"
    keys = ("objective", "retain_loss", "forget_weight", "retain_weight", "learning_rate", "lr_scheduler_type",
            "weight_decay", "max_grad_norm", "max_steps", "num_train_epochs", "per_device_train_batch_size",
            "gradient_accumulation_steps", "optim", "seed", "full_determinism", "bf16", "fp16", "prompt_template",
            "max_length", "retain_holdout", "targets", "target_eval_steps", "stop_at_targets")
    out = {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in keys}
    out.update(objective_args=objective_args, mask=dataclasses.asdict(args.mask_config) if trainer._masked else None,
               world_size=args.world_size)
    return out


def run_record(trainer, folder=None) -> dict:
    """The record of a `WagleTrainer` run whose files were just written to `folder` (None: no files yet)."""
    from .hub.names import public_name

    results = trainer.results or {}
    enforced = trainer.enforced_mask
    provenance = trainer.provenance
    record = {
        "record_version": RECORD_VERSION, "versions": versions(),
        "base_model": {"name": public_name(provenance.get("base_name")),
                       "weights_sha256": provenance.get("base_weights_sha256"),
                       "source": provenance.get("base_source")},
        "data": provenance.get("data", {}), "settings": settings_of(trainer),
        "masked": trainer._masked,
        "mask": None if not trainer._masked else {
            "method": trainer.mask.metadata.get("method", "given") if trainer.mask is not None else None,
            "selected": enforced.num_selected, "total": enforced.num_total,
            "enforced_by": enforced.metadata.get("enforced_by", "")},
        "steps": trainer.state.global_step,
        "targets": results.get("targets") or ({"targets": trainer.args.targets, "met": None}
                                              if trainer.args.targets else None),
        "evaluation": {k: results[k] for k in ("before", "after", "sets") if k in results} or None,
        "verification": verdict_of(trainer.verification),
        "artifacts": artifact_digests(folder) if folder is not None else {},
        "started": provenance.get("started"), "saved": _now(), "audits": [],
    }
    record["digest"] = record_digest(record)
    return record


def base_matches(record: dict | None, named_tensors, in_name_order: bool = False) -> bool | None:
    """Whether a base's `(name, tensor)` pairs (PEFT-free names: a loaded model's `base_named_parameters`, or a
    checkpoint's tensors) have the digest the record names for the run's base (`tensors_digest`; a base loaded in
    another dtype than the run's also differs). None when the record holds none."""
    recorded = ((record or {}).get("base_model") or {}).get("weights_sha256")
    if not recorded:
        return None
    return tensors_digest(named_tensors, in_name_order) == recorded


def verdict_of(report: dict | None) -> dict | None:
    """The part of a `verify` report a record keeps."""
    if report is None:
        return None
    return {k: report[k] for k in ("kind", "confined", "tensors_checked", "changed_inside_mask",
                                   "changed_outside_mask") if k in report}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_record(output_dir, trainer) -> dict:
    record = run_record(trainer, output_dir)
    save_record(output_dir, record)
    return record


def save_record(folder, record: dict) -> None:
    """Seal (`digest`) and write a record into `folder`."""
    record = {**record, "digest": record_digest(record)}
    path = Path(folder, RECORD_FILE)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def update_record(folder, **fields) -> dict | None:
    """Set top-level `fields` of the record in `folder` and seal it again (None when there is no record)."""
    record = read_record(folder)
    if record is None:
        return None
    record.update(fields)
    save_record(folder, record)
    return read_record(folder)


def read_record(folder) -> dict | None:
    """The record in `folder`, or None when there is none; an unreadable one is a ValueError."""
    path = Path(folder, RECORD_FILE)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a record (a JSON object)")
    return record


def check_record(folder, record: dict | None = None) -> list[str]:
    """What does not match between a folder and its record: the record's own digest, and the digest of every weight
    file and mask it names (a file it names that is missing, or one it does not name, counts too)."""
    record = read_record(folder) if record is None else record
    if record is None:
        return []
    problems = []
    if record.get("digest") != record_digest(record):
        problems.append(f"{RECORD_FILE}: its digest does not match its content (edited after it was sealed)")
    for i, audit in enumerate(record.get("audits") or []):
        body = {k: v for k, v in audit.items() if k != "digest"}
        if not isinstance(audit, dict) or audit.get("digest") != _canonical_digest(body):
            problems.append(f"{RECORD_FILE}: audit {i} does not match its digest (edited after it was appended)")
    named = record.get("artifacts") or {}
    actual = artifact_digests(folder)
    for name in sorted(set(named) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: named by the record but missing")
        elif name not in named:
            problems.append(f"{name}: present but not named by the record")
        elif named[name] != actual[name]:
            problems.append(f"{name}: its tensors differ from those the record names")
    return problems


def check_data(folder, split: str, path) -> str | None:
    """Whether the data file `path` is the `split` data the record names (re-tokenised as the run did, with the
    tokenizer saved in `folder`; for `retain`, minus the rows the run held out). None when it is; else why not."""
    from transformers import AutoTokenizer

    from .cli.common import load_data

    record = read_record(folder)
    if record is None:
        return f"{folder} holds no {RECORD_FILE}"
    entry = (record.get("data") or {}).get(split)
    if entry is None:
        return f"the record names no {split} data"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):
        return f"cannot check data: {folder} holds no tokenizer to re-tokenise it with"
    settings = record.get("settings") or {}
    dataset = load_data(str(path), split)
    if split == "retain" and entry.get("held_out"):
        from .evaluation.measure import split_holdout

        dataset, _ = split_holdout(dataset, entry["held_out"]["fraction"], entry["held_out"]["seed"])
    got = data_entry(dataset, tokenizer, settings.get("prompt_template"), settings.get("max_length"))
    if got["sha256"] != entry["sha256"]:
        return (f"{path} is not the {split} data of the record ({got['rows']} rows tokenised to "
                f"{got['sha256'][:12]}..., the record names {entry['rows']} rows, {entry['sha256'][:12]}...)")
    return None


def unmet_targets(record: dict | None) -> str | None:
    """Why a record's run may not be published as done: its targets were not met (or never evaluated); else None."""
    targets = (record or {}).get("targets")
    if not targets:
        return None
    if targets.get("met") is True:
        return None
    if targets.get("met") is None:
        return f"the run's targets {targets.get('targets')} were never evaluated to the end"
    missed = [r["target"] for r in targets.get("per_target", []) if not r["holds"]]
    return f"the run did not meet its targets ({', '.join(missed)})"
