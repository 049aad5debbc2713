"""Publishing a saved folder: audited against its mask, an allow-list of files, local paths removed."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging

from ..io import PUBLISHED, NotConfined, read_json, read_text
from ..mask import MASK_FILE, WeightMask
from ..record import check_record, read_record, unmet_targets
from ..verify import verify
from .names import public_name

logger = logging.get_logger(__name__)


def stage_for_hub(folder, staging) -> list[str]:
    """Copy what may be published from `folder` into `staging`, with local paths removed from
    `adapter_config.json` (`base_model_name_or_path`), `config.json` (`_name_or_path`) and the mask's metadata
    (`model`). Returns what was left out, with the reason."""
    folder, staging = Path(folder), Path(staging)
    left_out = []
    for path in sorted(folder.iterdir()):
        if not any(fnmatch.fnmatchcase(path.name, pattern) for pattern in PUBLISHED):
            left_out.append(f"{path.name} (not part of a published adapter or model)")
        elif path.is_symlink() or not path.is_file():
            left_out.append(f"{path.name} (a link or not a regular file)")
        elif path.name in ("adapter_config.json", "config.json"):
            config = read_json(path)
            key = "base_model_name_or_path" if path.name == "adapter_config.json" else "_name_or_path"
            if isinstance(config, dict) and key in config and config[key] != public_name(config[key]):
                config[key] = public_name(config[key])
                (staging / path.name).write_text(json.dumps(config, indent=2, sort_keys=True))
            else:  # nothing local in it: the bytes as saved (and signed)
                shutil.copyfile(path, staging / path.name)
        elif path.name == MASK_FILE:
            mask = WeightMask.load(path)
            mask.metadata["model"] = public_name(mask.metadata.get("model")) or ""
            mask.save(staging)
        elif path.name == "mask_stats.json":
            stats = read_json(path)
            meta = stats.get("metadata") if isinstance(stats, dict) else None
            if isinstance(meta, dict) and "model" in meta:
                meta["model"] = public_name(meta["model"]) or ""
            (staging / path.name).write_text(json.dumps(stats, indent=2))
        else:
            shutil.copyfile(path, staging / path.name)
    return left_out


def push_to_hub(folder, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload unlearned adapter (hf_wagle)", base=None, api=None,
                dry_run: bool = False, allow_unmet_targets: bool = False, sign_key=None, require_signature=None,
                allow_no_record: bool = False):
    """Upload a folder written by `WagleTrainer.save_model` to the Hub (card included).

    Only the files in `PUBLISHED` are staged, never through a link, and local paths are removed from the configs and
    the mask (`stage_for_hub`); the staged copy is then audited with `hf_wagle.verify` (pass `base` for a full model)
    and against its record: a copy that changes weights outside its mask, lacks its weights or mask (a link is not
    staged) or does not match its record is refused. `api` is an `HfApi`-like object (default
    `HfApi(token=token)`). Returns the commit info of `upload_folder`; with `dry_run`, nothing is sent and the
    result is `{"files": [...], "left_out": [...]}`. A run whose record (`unlearning_record.json`) says it did not
    meet its targets is refused unless `allow_unmet_targets`; a dense run (its record says no mask) is published
    without a confinement audit, as it claims none. The card (README.md) must name the record's digest (it was
    written for this run). A folder without a record is refused unless `allow_no_record`: nothing would tie what is
    published to a run (its adapter config, tokenizer and base are unchecked).

    Signatures (`hf_wagle.signing`): `require_signature=PUBLIC_KEY` refuses a folder whose staged copy, exactly the
    bytes uploaded, does not carry a valid signature by that key (a config that names a local base path is
    rewritten when staged, so sign such a folder at push time); `sign_key=PRIVATE_KEY` signs the staged copy, and
    the signature is uploaded with it.
    """
    from huggingface_hub import HfApi

    record = read_record(folder)
    if record is None and not allow_no_record:
        raise ValueError(f"refusing to publish {folder}: it holds no unlearning_record.json, so nothing ties it to a "
                         "run (its adapter config, tokenizer and base are unchecked); save it with "
                         "WagleTrainer.save_model, or publish it anyway with --allow-no-record")
    unmet = unmet_targets(record)
    if unmet and not allow_unmet_targets:
        raise ValueError(f"refusing to publish {folder}: {unmet}; publish anyway with --allow-unmet-targets "
                         "(allow_unmet_targets=True), and the card says so")
    card = os.path.join(folder, "README.md")
    if not os.path.lexists(card):
        raise FileNotFoundError(f"{folder} has no README.md model card; save it with WagleTrainer.save_model")
    card_text = read_text(card)  # a folder, a FIFO or a device in its place is refused here
    if record is not None and (not record.get("digest") or record["digest"] not in card_text):
        raise NotConfined(f"refusing to publish {folder}: README.md does not name the record's digest "
                          f"{record.get('digest')}; it was written for another run or edited (save again, or "
                          "rewrite it with hf_wagle.hub.write_model_card)")
    with tempfile.TemporaryDirectory(prefix="hf_wagle_push_") as staging:
        left_out = stage_for_hub(folder, staging)
        if require_signature is not None:
            from ..signing import verify_signature

            verify_signature(staging, public_key=require_signature)
        # what is checked is the staged copy, exactly what would be uploaded
        dense = record is not None and record.get("masked") is False and not os.path.exists(
            os.path.join(staging, MASK_FILE))
        if not dense:
            report = verify(staging, base=base)
            if not report["confined"]:
                raise NotConfined(f"refusing to publish {folder}: {'; '.join(report['problems'][:3])}")
        mismatch = check_record(staging, record) if record else []
        if mismatch:
            raise NotConfined(f"refusing to publish {folder}: it does not match its record "
                             f"({'; '.join(mismatch[:3])})")
        if sign_key is not None:
            from ..signing import sign_folder

            sign_folder(staging, sign_key)
        if dry_run:
            return {"files": sorted(os.listdir(staging)), "left_out": left_out}
        if left_out:
            logger.warning(f"not uploaded from {folder}: {', '.join(left_out)}")
        api = api or HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=staging,
                                     commit_message=commit_message)
        except (OSError, ValueError):  # offline mode, HTTP errors, bad repo ids: already clear
            raise
        except Exception as e:  # the HTTP client's own connection errors
            raise ConnectionError(f"could not reach the Hub to push {repo_id} ({type(e).__name__}: {e})") from e
