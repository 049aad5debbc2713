"""Output folders on disk: writing one all at once, and reading the tensors and adapter config in one.

Pure Python at import (no torch), so the format registry built on it stays cheap to import.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

ADAPTER_STEM = "adapter_model"  # PEFT's weight file, `adapter_model.safetensors`
MODEL_STEM = "model"            # a full model's, `model.safetensors` or shards listed in `model.safetensors.index.json`
MASK_FILE = "wagle_mask.safetensors"
RECORD_FILE = "unlearning_record.json"
RESULTS_FILE = "unlearn_results.json"  # what `hf-wagle unlearn` writes beside a save

# What a saved run's folder holds that belongs to that run, and may be published: weights, configs, tokenizer, mask,
# record, card. Anything else (training_args.bin, references, checkpoints, a user's files) is not published, and a
# later save into the folder keeps it.
PUBLISHED = ("README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", "generation_config.json",
             "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", MASK_FILE,
             "mask_stats.json", "mask_heatmap.png", "export_report.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
             "merges.txt", RECORD_FILE)


def of_a_run(name: str) -> bool:
    """Whether a file name is one a save (or `hf-wagle unlearn`) writes for its run (`PUBLISHED`, `RESULTS_FILE`)."""
    return name == RESULTS_FILE or any(fnmatch.fnmatchcase(name, pattern) for pattern in PUBLISHED)


class NotConfined(ValueError):
    """A folder that changes weights outside its mask, or does not match its record: the CLI exits with status 1, as
    `hf-wagle verify` does for the same folder (2 is for input that cannot be checked at all)."""

    exit_status = 1


@contextmanager
def staged_directory(final):
    """Yield a temporary folder beside `final`; once the block finishes, publish it as `final` in one rename.

    What `final` holds that this save does not write is first moved into the staging folder (checkpoints, logs,
    `trainer_state.json`, a user's files), except the files of an earlier save (`of_a_run`: a mask, card, record,
    weights, configs). Then `final` is renamed aside, the staging folder renamed to `final`, and the old folder
    removed. A failure inside the block leaves `final` as it was; at no point does `final` hold files of two saves
    (an adapter of one run beside the mask or card of another)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.saving-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # it becomes `final`: a folder's usual mode, not mkdtemp's private 0700
    try:
        yield staging
        if final.is_dir():
            for path in final.iterdir():
                if not (staging / path.name).exists() and (path.is_dir() or not of_a_run(path.name)):
                    os.replace(path, staging / path.name)
            previous = Path(tempfile.mkdtemp(prefix=f".{final.name}.previous-", dir=final.parent))
            os.replace(final, previous / final.name)
            os.replace(staging, final)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def has_weights(directory: Path, stem: str) -> bool:
    """Whether `directory` holds `stem.safetensors` or a sharded `stem.safetensors.index.json`."""
    return (directory / f"{stem}.safetensors").exists() or (directory / f"{stem}.safetensors.index.json").exists()


def weight_files(directory: Path, stem: str) -> list[str]:
    """The files a loader reads, in its order of precedence: `stem.safetensors` when it exists (PEFT reads only it;
    transformers prefers it to an index), else the shards `stem.safetensors.index.json` lists (a full model only)."""
    index = directory / f"{stem}.safetensors.index.json"
    if (directory / f"{stem}.safetensors").exists() or stem == ADAPTER_STEM:
        return [f"{stem}.safetensors"]
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot verify: {index} is not a readable safetensors index ({e})") from None


def loader_problems(directory: Path, stem: str) -> list[str]:
    """Files beside the weights that a loader would read differently from what is audited: an index beside a single
    file (PEFT never reads an adapter index; transformers reads the single file first), a `.bin` weight file."""
    out = []
    if (directory / f"{stem}.safetensors.index.json").exists() and (
            stem == ADAPTER_STEM or (directory / f"{stem}.safetensors").exists()):
        out.append(f"{stem}.safetensors.index.json: an index the loader does not read beside "
                   f"{stem}.safetensors; remove it (other tools may read the shards it names instead)")
    out += [f"{p.name}: a pickled weight file; publish safetensors only" for p in sorted(directory.glob("*.bin"))
            if p.name != "training_args.bin"]
    return out


def read_tensors(directory: Path, stem: str):
    """`(name, tensor)` of the weight files a loader reads (`weight_files`)."""
    from safetensors import SafetensorError, safe_open

    files = weight_files(directory, stem)
    for file in files:
        try:
            with safe_open(str(directory / file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except (OSError, SafetensorError) as e:
            raise ValueError(f"cannot verify: {directory / file} is missing, truncated or corrupt ({e})") from None


def _handles(directory: Path, stem: str) -> dict:
    """Tensor name -> open safetensors handle, over the weight files a loader reads (headers only, no tensor read)."""
    from safetensors import SafetensorError, safe_open

    where = {}
    for file in weight_files(directory, stem):
        try:
            handle = safe_open(str(directory / file), framework="pt")
        except (OSError, SafetensorError) as e:
            raise ValueError(f"cannot verify: {directory / file} is missing, truncated or corrupt ({e})") from None
        where.update(dict.fromkeys(handle.keys(), handle))
    return where


def tensors_in_name_order(directory: Path, stem: str):
    """`(name, tensor)` of the weight files a loader reads, sorted by name, one tensor in memory at a time."""
    where = _handles(directory, stem)
    for name in sorted(where):
        yield name, where[name].get_tensor(name)


def tensor_names(directory: Path, stem: str) -> set[str]:
    """The names of the tensors `read_tensors` yields, from the files' headers alone."""
    return set(_handles(directory, stem))


def read_adapter_config(directory: Path) -> dict:
    """`adapter_config.json` of an adapter folder as a dict; a missing or unreadable file cannot be verified
    (ValueError)."""
    path = directory / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"cannot verify {directory}: no adapter_config.json, which PEFT needs to load the "
                         "adapter") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot verify {directory}: adapter_config.json is not readable JSON ({e})") from None
    return config if isinstance(config, dict) else {}  # a JSON value that is not an object names no peft_type


def peft_type(directory: Path) -> str | None:
    """The `peft_type` an adapter folder's config names, or None when there is no readable config."""
    try:
        return read_adapter_config(directory).get("peft_type")
    except ValueError:
        return None


def local_or_download(base) -> Path:
    """A base model's folder: `base` itself when it exists here, else its weights and configs from the Hub."""
    if Path(base).exists():
        return Path(base)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base, allow_patterns=["*.safetensors", "*.json"]))
