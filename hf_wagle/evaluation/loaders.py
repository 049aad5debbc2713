"""Benchmark loaders: by Hub name (`datasets.load_dataset(name, config, split=...)`) or from a local folder.

A local folder mirrors the Hub layout: `<folder>/<config>/<split>.{jsonl,json,parquet}` or, for single-split
configs, `<folder>/<config>.{jsonl,json,parquet}`; a folder written by `Dataset.save_to_disk` works in either place.
"""

from __future__ import annotations

import os
from pathlib import Path

TOFU_FORGET_SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
WMDP_SUBSETS = ("bio", "cyber", "chem")
_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_split(source: str | os.PathLike, config: str, split: str = "train"):
    """One split of one config, from the Hub or from a local folder (see the module docstring)."""
    import datasets

    root = Path(source).expanduser()
    if not root.is_dir():
        if isinstance(source, os.PathLike) or str(source).startswith((".", "/", "~")) or root.exists():
            raise FileNotFoundError(f"{str(source)!r} is not a folder (nor a Hub dataset name)")
        return datasets.load_dataset(str(source), config, split=split)
    for stem in (root / config / split, root / config):
        if (stem / "dataset_info.json").exists() or (stem / "state.json").exists():
            return datasets.load_from_disk(str(stem))
        for ext, builder in _EXTENSIONS.items():
            path = stem.with_name(stem.name + ext)
            if path.exists():
                return datasets.load_dataset(builder, data_files=str(path), split="train")
    raise FileNotFoundError(f"{root} holds no {config}/{split}.jsonl, {config}.jsonl (or .json/.parquet), nor a "
                            f"saved dataset at {config}/{split} or {config}")


def load_tofu(source: str | os.PathLike = "locuslab/TOFU", forget_split: str = "forget10") -> dict:
    """TOFU for one forget split: `forget`/`retain` (training QA), `forget_eval`/`retain_eval` (with paraphrased and
    perturbed answers), `real_authors`, `world_facts`."""
    if forget_split not in TOFU_FORGET_SPLITS:
        raise ValueError(f"forget_split must be one of {sorted(TOFU_FORGET_SPLITS)}, got {forget_split!r}")
    configs = {
        "forget": forget_split, "retain": TOFU_FORGET_SPLITS[forget_split],
        "forget_eval": f"{forget_split}_perturbed", "retain_eval": "retain_perturbed",
        "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed",
    }
    return {key: load_split(source, config) for key, config in configs.items()}


def load_wmdp(source: str | os.PathLike = "cais/wmdp", subsets=("bio", "cyber")) -> dict:
    """WMDP multiple-choice test sets `{subset: Dataset(question, choices, answer)}` (configs `wmdp-<subset>`)."""
    subsets = [subsets] if isinstance(subsets, str) else list(subsets)
    bad = [s for s in subsets if s not in WMDP_SUBSETS]
    if bad or not subsets:
        raise ValueError(f"subsets must be among {WMDP_SUBSETS}, got {subsets}")
    return {s: load_split(source, f"wmdp-{s}", "test") for s in subsets}


def load_wmdp_corpora(source: str | os.PathLike = "cais/wmdp-corpora", subset: str = "cyber") -> dict:
    """WMDP unlearning corpora `{"forget": Dataset(text), "retain": Dataset(text)}` (`<subset>-forget-corpus`,
    `<subset>-retain-corpus`; the bio forget corpus is gated on the Hub)."""
    if subset not in ("bio", "cyber"):
        raise ValueError(f"subset must be 'bio' or 'cyber', got {subset!r}")
    return {half: load_split(source, f"{subset}-{half}-corpus") for half in ("forget", "retain")}


def load_muse(source: str | os.PathLike = "muse-bench/MUSE-News") -> dict:
    """MUSE evaluation data: `verbmem_forget` (prompt, gt), `knowmem_forget` / `knowmem_retain` (question, answer),
    `privleak_forget` / `privleak_holdout` (text); `source` is `muse-bench/MUSE-News`, `-Books` or a folder."""
    parts = {
        "verbmem_forget": ("verbmem", "forget"),
        "knowmem_forget": ("knowmem", "forget_qa"),
        "knowmem_retain": ("knowmem", "retain_qa"),
        "privleak_forget": ("privleak", "forget"),
        "privleak_holdout": ("privleak", "holdout"),
    }
    return {key: load_split(source, config, split) for key, (config, split) in parts.items()}
