"""Shared plumbing of the example scripts: YAML config with a `dry_run` override block, model loading, training."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import yaml


def parse(description: str, default_config: str):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=str(Path(__file__).with_name(default_config)))
    p.add_argument("--dry-run", action="store_true",
                   help="run the same code path on SmolLM2-135M-Instruct and the shipped real-knowledge scenario "
                        "(CPU, no Hub downloads)")
    p.add_argument("--model-dir", help="dry run: folder of the converted SmolLM2 (default: the hf_wagle cache)")
    p.add_argument("--objective", help="override `training.objective` (e.g. grad_diff, npo, rmu)")
    p.add_argument("--output-dir", help="override `output_dir`")
    return p


def load_config(args) -> dict:
    """The YAML file; `objective_overrides[--objective]` then, with --dry-run, the `dry_run` block are merged over
    it (one level deep)."""
    config = yaml.safe_load(Path(args.config).read_text())
    overrides = config.pop("objective_overrides", None) or {}
    if args.objective:
        config["training"]["objective"] = args.objective
        config["training"].update(overrides.get(args.objective, {}))
    if args.dry_run:
        for key, value in (config.pop("dry_run", None) or {}).items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
    else:
        config.pop("dry_run", None)
    if args.output_dir:
        config["output_dir"] = args.output_dir
    return config


def load_model(config: dict, args):
    """`(model, tokenizer)`: the configured Hub model, or with --dry-run SmolLM2-135M-Instruct (fp32)."""
    import torch

    if args.dry_run:
        from hf_wagle.real_model import load_smollm2

        return load_smollm2(args.model_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if config["training"].get("bf16") else None
    return AutoModelForCausalLM.from_pretrained(config["model"], dtype=dtype), tokenizer


def unlearn(model, tokenizer, forget, retain, config: dict):
    """Build `WagleConfig(**config["training"])` and run `WagleTrainer`; returns the trainer (model unlearned)."""
    from hf_wagle import WagleConfig, WagleTrainer

    training = dict(config["training"])
    args = WagleConfig(output_dir=config["output_dir"], report_to="none", save_strategy="no", **training)
    peft_config = None
    if config.get("lora"):
        from peft import LoraConfig

        peft_config = LoraConfig(**config["lora"])
    trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=forget, retain_dataset=retain,
                           processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.save_model(config["output_dir"])
    return trainer


def write_results(config: dict, results: dict) -> Path:
    """Numbers only (no data text) to `<output_dir>/results.json`."""
    path = Path(config["output_dir"]) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


def scenario():
    """The dry run's data: the shipped real-knowledge scenario (`hf_wagle.real_model.load_scenario`)."""
    from hf_wagle.real_model import load_scenario

    return load_scenario("element_symbols")


def head(dataset, config: dict):
    """The first `eval_limit` rows (all when unset): quick evaluations."""
    n = config.get("eval_limit")
    return dataset if not n else dataset.select(range(min(n, len(dataset))))
