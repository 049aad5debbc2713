"""Output folders on disk: writing one all at once, and reading the tensors and adapter config in one.

Pure Python at import (no torch), so the format registry built on it stays cheap to import.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import stat
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
             "merges.txt", RECORD_FILE, "model.sig")


# the largest JSON or text file a reader opens (records, configs, tokenizer files): far above any real one
MAX_TEXT_BYTES = 256 << 20


def regular_file(path) -> Path:
    """`path`, after checking that it (or what a link points to) is a regular file: a FIFO, a device (a link to
    `/dev/zero`), a socket or a folder is refused with a ValueError, before anything opens it."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)"
        raise ValueError(f"cannot read {path}: it is {kind}; replace it with the file itself")
    return path


def read_text(path, limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a regular file of at most `limit` bytes (`regular_file`; opened without blocking, so a FIFO put in
    its place after the check cannot hang the reader)."""
    path = regular_file(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"cannot read {path}: it is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"cannot read {path}: larger than {limit} bytes, more than such a file ever holds")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read {path}: not UTF-8 text ({e.reason})") from None


def read_json(path, limit: int = MAX_TEXT_BYTES):
    """A JSON file read with `read_text`; malformed JSON is a ValueError naming the file."""
    try:
        return json.loads(read_text(path, limit))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None


class NotConfined(ValueError):
    """A folder that changes weights outside its mask, or does not match its record: the CLI exits with status 1, as
    `hf-wagle verify` does for the same folder (2 is for input that cannot be checked at all)."""

    exit_status = 1


def check_destination(out, protected: dict[str, object]) -> None:
    """Refuse, before any work, an output folder that is, lies inside or contains one of the `protected` folders
    (`{what it is: path}`, e.g. the run being exported, the base model): a save replaces its whole folder, so saving
    there would delete them. Paths that do not exist locally (Hub ids) are skipped."""
    target = Path(out).expanduser().resolve()
    for what, path in protected.items():
        if path is None or not isinstance(path, (str, os.PathLike)) or not Path(path).exists():
            continue
        path = Path(path).expanduser().resolve()
        if target == path or path in target.parents or target in path.parents:
            relation = "is" if target == path else "lies inside" if path in target.parents else "contains"
            raise ValueError(f"output folder {out} {relation} {what} ({path}); saving there would replace it. Choose "
                             "an output folder outside it")


# Files that hold or describe a model: a folder holding one that no record there names is someone's model, which a
# save must not end up mixed with
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
                "adapter_config.json", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin",
                "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model", MASK_FILE)


def earlier_save_files(folder) -> set[str]:
    """The files of an earlier save in `folder`: those its record seals, the record, the card and the results.
    Unreadable records own nothing (their files are kept)."""
    path = Path(folder) / RECORD_FILE
    try:
        record = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("artifacts"), dict):
        return set()
    return {*record["artifacts"], RECORD_FILE, "README.md", RESULTS_FILE, "mask_stats.json", "mask_heatmap.png"}


def foreign_model_files(folder) -> list[str]:
    """Files in `folder` that hold or describe a model and belong to no earlier save there (`earlier_save_files`):
    a user's model, which a save into the folder would sit beside (or, before, delete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned = earlier_save_files(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in owned
                  and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in _MODEL_FILES))


def check_output_folder(folder, overwrite: bool = False,
                        how: str | None = "pass overwrite_output_dir=True (--overwrite_output_dir)") -> None:
    """Refuse, before any work, an output folder holding a model that is not an earlier save's
    (`foreign_model_files`), unless `overwrite`; a save keeps such files either way (it deletes only files it writes
    or an earlier save's)."""
    foreign = foreign_model_files(folder)
    if foreign and not overwrite:
        listed = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ValueError(f"output folder {folder} holds a model that no earlier save there wrote ({listed}); choose "
                         "an empty folder"
                         + (f", or {how} to save beside those files (they are kept)" if how else ""))


_HELD: dict[str, list] = {}  # lock path -> [open file, depth]: a process re-entering its own lock


@contextmanager
def output_lock(folder):
    """Hold an exclusive lock on saving into `folder` (a `.NAME.lock` file beside it, `fcntl.flock`, released and
    removed when the block ends; released when the process dies): a second save into the same folder, from this
    or another process, fails at once with a clear error instead of losing files. Re-entrant within a process."""
    folder = Path(folder).expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    key = str(folder.parent / f".{folder.name}.lock")
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: the save still stages and renames
        yield
        return
    while True:
        handle = open(key, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ValueError(f"another save into {folder} is running (lock {key}); wait for it to finish or choose "
                             "another output folder") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            if os.stat(key).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    _HELD[key] = [handle, 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            del _HELD[key]
            os.unlink(key)  # while still locked: a process that opened it before retries on the new file
            handle.close()  # closing releases the lock


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


@contextmanager
def staged_directory(final):
    """Yield a temporary folder beside `final`; once the block finishes, publish it as `final` in one rename.

    What `final` holds that this save does not write is moved into the staging folder first and kept (checkpoints,
    logs, a user's files), except the files of an earlier save there (`earlier_save_files`: the files its record
    seals, the record, card and results), which this save replaces as a whole. Then `final` is renamed aside, the
    staging folder renamed to `final`, and the old folder removed. A failure inside the block leaves `final` as it
    was; a full disk is an `OSError` that says so in one line. The save holds `output_lock(final)` throughout."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.saving-", dir=final.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # it becomes `final`: a folder's usual mode, not mkdtemp's private 0700
        try:
            try:
                yield staging
            except OSError as e:
                if e.errno in _NO_SPACE:
                    raise OSError(e.errno, f"no space left to save {final} ({e.strerror}); {final} is as it was "
                                           "before this save, nothing of it was kept") from None
                raise
            if final.is_dir():
                earlier = earlier_save_files(final)
                for path in final.iterdir():
                    if not (staging / path.name).exists() and path.name not in earlier:
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
        return sorted(set(read_json(index)["weight_map"].values()))
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
            with safe_open(str(regular_file(directory / file)), framework="pt") as f:
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
            handle = safe_open(str(regular_file(directory / file)), framework="pt")
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
        config = read_json(path)
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
    """A base model's folder: `base` itself when it exists here, else its weights and configs from the Hub. A path
    that is plainly local (`hf_wagle.options.is_local_path`) and missing is a ValueError, not a Hub lookup."""
    from .options import is_local_path

    if Path(base).exists():
        if not Path(base).is_dir():
            raise ValueError(f"base {base} is not a folder; pass the folder holding the base model")
        return Path(base)
    if is_local_path(str(base)):
        raise ValueError(f"base {base}: no such folder; pass the base model's folder or its Hub id")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base, allow_patterns=["*.safetensors", "*.json"]))
