"""`unlearning_record.json`: the evidence of a run, saved beside its adapter or model (and in its checkpoints and
exports), never holding data text.

What it holds: the package versions; the base model's public name and a digest of its weights; a digest of each data
set as tokenised (forget, retain as trained on, and the evaluation sets) with its row count; the settings (objective
and its arguments, mask settings, optimiser, seed, prompt template); the mask actually enforced (its checksum,
counts); the targets and whether they were met; every score before and after; the `verify` verdict; the digest of
every file a loader reads (weights, the mask, adapter or model config, generation config, tokenizer and chat template
files, `export_report.json`); start and end times; later audits, appended.

Digests are SHA-256. A tensor file's digest covers, for every tensor in name order, its name, dtype, shape and bytes
(not the file's bytes: safetensors headers may order metadata differently for equal tensors). A data set's digest
covers the token ids and labels of every example in order. A JSON file's digest is that of its canonical JSON (sorted
keys, no spaces), with the base model's name in `adapter_config.json` / `config.json` as it is published
(`hf_wagle.hub.names.public_name`), so the copy `push` uploads has the digest of the saved one; any other file's is
the SHA-256 of its bytes. The record's own `digest` is the SHA-256 of its canonical JSON without the `digest` and
`audits` keys; the card shows it, so a copy can be compared with what was published. Later audits (`hf-wagle
evaluate --audit-by NAME`, `hf-wagle audit`) are appended to `audits` as a chain: each holds its own digest, the
record digest it refers to and the digest of the audit before it, so appending one never invalidates the original
entries, and removing or reordering one in the middle breaks the chain.

What a self-computed seal proves, and what not: it detects any edit made without recomputing the digests (a
changed config, a swapped tokenizer id, an edited score). Anyone can recompute SHA-256, so a folder rewritten
wholesale (new weights, mask and record, all re-sealed), or with its last audits removed, passes; a signature over
the folder (`hf-wagle sign`, `hf_wagle.signing`) is what rules that out. Torch-free at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from .io import RECORD_FILE, read_json, regular_file
from .version import __version__

RECORD_VERSION = 2
_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
# every other file a loader (PEFT, transformers, a tokenizer) or the export's card reads: sealed by the record
SEALED_FILES = ("adapter_config.json", "config.json", "generation_config.json", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
                "export_report.json")
_PUBLISHED_NAME_KEYS = {"adapter_config.json": "base_model_name_or_path", "config.json": "_name_or_path"}


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
    """The digest of a file (module docstring): a safetensors file's tensors; a `WeightMask` file by its own
    checksum, which covers its bits, index and metadata; a JSON file's canonical JSON (`json:`); any other file's
    bytes (`bytes:`)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix == ".json":
        value = read_json(path)
        key = _PUBLISHED_NAME_KEYS.get(path.name)
        if isinstance(value, dict) and key in value:
            from .options import public_name

            value = {**value, key: public_name(value[key])}
        return "json:" + _canonical_digest(value)
    if path.suffix != ".safetensors":
        return "bytes:" + _bytes_digest(path)
    with safe_open(str(regular_file(path)), framework="pt") as f:
        meta = f.metadata() or {}
        if "wagle.sha256" in meta:
            return "mask:" + meta["wagle.sha256"]
        return tensors_digest((k, f.get_tensor(k)) for k in f.keys())


def _bytes_digest(path) -> str:
    path = regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_files(folder) -> list[Path]:
    """What a record seals in a saved folder: the weight files (shards included), the mask and `SEALED_FILES`, where
    present (links included: a loader follows them; anything that is not a regular file is refused when read)."""
    from .mask import MASK_FILE

    folder = Path(folder)
    files = [folder / n for n in (*_WEIGHT_FILES, MASK_FILE, *SEALED_FILES) if (folder / n).exists()]
    return files + sorted(p for p in folder.glob("model-*-of-*.safetensors") if p.exists())


def artifact_digests(folder) -> dict[str, str]:
    return {p.name: file_digest(p) for p in artifact_files(folder)}


def examples_digest(examples: list[dict]) -> str:
    """SHA-256 of the token ids and labels of tokenised examples, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([list(ex["input_ids"]), list(ex.get("labels", []))], separators=(",", ":")).encode())
    return h.hexdigest()


def data_entry(dataset, tokenizer, prompt_template: str, max_length, subjects: bool = False) -> dict:
    """The rows' count and `examples_digest` as plain QA/text tokenisation gives them (whatever tokens the run's
    options trained on: the record's settings say how it read them); with `subjects`, also the SHA-256 of the
    `subject` column."""
    from .data import tokenize_dataset

    examples = tokenize_dataset(dataset, tokenizer, prompt_template, max_length)
    entry = {"rows": len(examples), "sha256": examples_digest(examples)}
    if subjects:
        entry["subjects_sha256"] = _canonical_digest(list(dataset["subject"]))
    return entry


def _canonical_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def record_digest(record: dict) -> str:
    """The seal: everything but `digest` and the later `audits` (each audit carries its own digest)."""
    return _canonical_digest({k: v for k, v in record.items() if k not in ("digest", "audits")})


def append_audit(folder, entry: dict) -> dict:
    """Append a later audit to the record in `folder` without touching the sealed entries: `entry` gets `when`, the
    record's digest it refers to, the digest of the audit before it (`previous_digest`, None for the first) and its
    own `digest` (SHA-256 of the rest of it). A record whose seal or chain is already broken is refused: an audit
    must not vouch for a folder it cannot tie to its run."""
    record = read_record(folder)
    if record is None:
        raise ValueError(f"{folder} holds no {RECORD_FILE} to append an audit to")
    broken = seal_problems(record)
    if broken:
        raise ValueError(f"refusing to append an audit to {folder}: {broken[0]}")
    audits = record.get("audits") or []
    entry = {**entry, "when": _now(), "record_digest": record.get("digest"),
             "previous_digest": audits[-1]["digest"] if audits else None}
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
            "max_length", "retain_holdout", "forget_tokens", "forget_perturbation", "sam_rho", "gnp_gamma",
            "smooth_sigma", "disruption_masking", "weight_averaging_start", "forget_folds", "forget_kind", "targets",
            "utility_floor", "target_eval_steps", "stop_at_targets")
    out = {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in keys}
    out.update(objective_args=objective_args, mask=dataclasses.asdict(args.mask_config) if trainer._masked else None,
               world_size=args.world_size)
    return out


def run_record(trainer, folder=None) -> dict:
    """The record of a `WagleTrainer` run whose files were just written to `folder` (None: no files yet)."""
    from .options import public_name

    results = trainer.results or {}
    enforced = trainer.enforced_mask
    provenance = trainer.provenance
    record = {
        "record_version": RECORD_VERSION, "versions": versions(),
        "base_model": {"name": public_name(provenance.get("base_name")),
                       "weights_sha256": provenance.get("base_weights_sha256"),
                       "source": provenance.get("base_source"),
                       "quantization": provenance.get("base_quantization")},
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
    if not os.path.lexists(path):
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        raise ValueError(f"cannot verify: {path} does not hold a record (a JSON object)")
    malformed = record_shape_problems(record)
    if malformed:
        raise ValueError(f"cannot verify: {path} is malformed: {malformed[0]}")
    return record


def _is(value, *types) -> bool:
    return any(value is None if t is None else isinstance(value, t) and not (t is int and isinstance(value, bool))
               for t in types)


def record_shape_problems(record: dict) -> list[str]:
    """Fields of a record that do not have the shape its readers rely on (one line each): a record written by hand or
    edited can hold anything, and a reader must say so rather than fail inside."""
    out = []

    def want(ok: bool, what: str):
        if not ok:
            out.append(what)

    want(_is(record.get("digest"), str, None), "digest is not a string")
    want(_is(record.get("artifacts"), dict, None) and all(isinstance(k, str) and isinstance(v, str) for k, v in
                                                          (record.get("artifacts") or {}).items()),
         "artifacts is not a mapping of file names to digests")
    audits = record.get("audits")
    want(_is(audits, list, None) and all(isinstance(a, dict) for a in audits or []), "audits is not a list of objects")
    want(_is(record.get("masked"), bool, None), "masked is not true or false")
    mask = record.get("mask")
    want(_is(mask, dict, None) and all(_is((mask or {}).get(k), int, None) for k in ("selected", "total")),
         "mask is not an object with integer selected and total counts")
    base = record.get("base_model")
    want(_is(base, dict, None) and all(_is((base or {}).get(k), str, None) for k in ("name", "weights_sha256")),
         "base_model is not an object with a name and weights_sha256")
    for key in ("settings", "evaluation", "verification", "export", "versions"):
        want(_is(record.get(key), dict, None), f"{key} is not an object")
    data = record.get("data")
    want(_is(data, dict, None), "data is not an object")
    for split, entry in (data or {}).items() if isinstance(data, dict) else ():
        want(isinstance(entry, dict) and _is(entry.get("rows"), int) and _is(entry.get("sha256"), str),
             f"data.{split} is not an object with rows and sha256")
        held = entry.get("held_out") if isinstance(entry, dict) else None
        want(_is(held, None) or isinstance(held, dict) and _is(held.get("fraction"), float, int)
             and _is(held.get("seed"), int), f"data.{split}.held_out is not an object with fraction and seed")
    targets = record.get("targets")
    want(_is(targets, dict, None), "targets is not an object")
    if isinstance(targets, dict):
        want(targets.get("met") in (True, False, None), "targets.met is not true, false or null")
        per = targets.get("per_target", [])
        want(isinstance(per, list) and all(isinstance(r, dict) and isinstance(r.get("target"), str)
                                           and isinstance(r.get("holds"), bool) for r in per),
             "targets.per_target is not a list of objects with a target and whether it holds")
        empty = targets.get("vacuous", [])
        want(isinstance(empty, list) and all(isinstance(v, str) for v in empty), "targets.vacuous is not a list of "
                                                                                 "texts")
    return out


def check_record(folder, record: dict | None = None) -> list[str]:
    """What does not match between a folder and its record: the record's own digest, and the digest of every weight
    file and mask it names (a file it names that is missing, or one it does not name, counts too)."""
    record = read_record(folder) if record is None else record
    if record is None:
        return []
    problems = seal_problems(record)
    problems += mask_count_problems(folder, record)
    named = record.get("artifacts") or {}
    actual = artifact_digests(folder)
    for name in sorted(set(named) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: named by the record but missing")
        elif name not in named:
            problems.append(f"{name}: present but not named by the record")
        elif named[name] != actual[name]:
            problems.append(f"{name}: its content differs from what the record names")
    return problems


def seal_problems(record: dict) -> list[str]:
    """The record's own digest, and its chain of audits: each must match its digest, name the record's digest and
    the digest of the audit before it."""
    problems = []
    if record.get("digest") != record_digest(record):
        problems.append(f"{RECORD_FILE}: its digest does not match its content (edited after it was sealed)")
    previous = None
    for i, audit in enumerate(record.get("audits") or []):
        body = {k: v for k, v in audit.items() if k != "digest"}
        if audit.get("digest") != _canonical_digest(body):
            problems.append(f"{RECORD_FILE}: audit {i} does not match its digest (edited after it was appended)")
        if audit.get("record_digest") != record.get("digest"):
            problems.append(f"{RECORD_FILE}: audit {i} names record digest {str(audit.get('record_digest'))[:12]}..., "
                            "not this record's: it was made for another run or another version of it")
        if audit.get("previous_digest") != previous:
            problems.append(f"{RECORD_FILE}: audit {i} does not follow the audit before it (one was removed, added "
                            "or reordered)")
        previous = audit.get("digest")
    return problems


def mask_count_problems(folder, record: dict) -> list[str]:
    """The shipped mask's counts against those the record names for the run's mask."""
    from .mask import MASK_FILE, WeightMask

    named = record.get("mask")
    if not named or not Path(folder, MASK_FILE).exists():
        return []
    mask = WeightMask.load(folder)
    if (named.get("selected"), named.get("total")) != (mask.num_selected, mask.num_total):
        return [f"{MASK_FILE}: selects {mask.num_selected} of {mask.num_total} weights; the record's run mask "
                f"selects {named.get('selected')} of {named.get('total')}"]
    return []


def audit_chain(record: dict | None) -> list[dict]:
    """What each appended audit says, one entry per audit in order: kind, by, when, and whether it is chained."""
    if not record:
        return []
    return [{"kind": a.get("kind"), "by": a.get("by"), "when": a.get("when"), "digest": a.get("digest")}
            for a in record.get("audits") or []]


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
    subjects = "subjects_sha256" in entry
    if subjects and "subject" not in getattr(dataset, "column_names", ()):
        return f"{path} has no `subject` column, and the run read each {split} row's subject"
    got = data_entry(dataset, tokenizer, settings.get("prompt_template"), settings.get("max_length"), subjects)
    if got["sha256"] != entry["sha256"]:
        return (f"{path} is not the {split} data of the record ({got['rows']} rows tokenised to "
                f"{got['sha256'][:12]}..., the record names {entry['rows']} rows, {entry['sha256'][:12]}...)")
    if subjects and got["subjects_sha256"] != entry["subjects_sha256"]:
        return f"{path} holds the {split} rows of the record, but other subjects than the run read"
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
    if not missed and targets.get("vacuous"):
        return f"the run's targets cannot fail ({'; '.join(targets['vacuous'])})"
    return f"the run did not meet its targets ({', '.join(missed)})"
