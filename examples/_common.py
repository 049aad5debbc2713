"""Shared plumbing of the example scripts: their flags and YAML config, read by `hf_wagle.cli.parser` (the parser
of `hf-wagle` itself), with a `dry_run` override block; model loading; training."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_wagle.cli.common import read_yaml
from hf_wagle.cli.parser import WagleParser
from hf_wagle.cli.plugins import load_plugins


@dataclass
class ExampleArguments:
    """The flags of an example script; everything else is in its YAML config."""

    config: str = field(default="", metadata={"help": "the YAML config (default: the one next to the script)"})
    dry_run: bool = field(default=False, metadata={
        "help": "run the same code path on SmolLM2-135M-Instruct and the shipped real-knowledge scenario (CPU, no Hub "
                "downloads)"})
    model_dir: str | None = field(default=None, metadata={
        "help": "dry run: folder of the converted SmolLM2 (default: the hf_wagle cache)"})
    objective: str | None = field(default=None, metadata={
        "help": "override `training.objective` (e.g. grad_diff, npo, rmu)"})
    output_dir: str | None = field(default=None, metadata={"help": "override `output_dir`"})


def parse(description: str, default_config: str) -> WagleParser:
    """The script's parser (`parse_args(argv)`): `ExampleArguments` and `--plugins`."""
    parser = WagleParser(ExampleArguments, description=description, config=False)
    parser.set_defaults(config=str(Path(__file__).with_name(default_config)))
    return parser


def load_config(args) -> dict:
    """The YAML file, after the plugins it and --plugins name; `objective_overrides[--objective]` then, with
    --dry-run, the `dry_run` block are merged over it (one level deep). The `training` block is checked as
    `WagleConfig` keys (`training_args`)."""
    config = read_yaml(args.config)
    load_plugins(config.pop("plugins", None), f"plugins in {args.config}")
    load_plugins(args.plugins)
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
    training_args(config)  # unknown or bad keys: now, before any model loads
    return config


def training_args(config: dict):
    """`WagleConfig` from the `training` block and `output_dir` (no reports, no checkpoints unless the block says
    so), parsed as `hf-wagle unlearn` parses its keys: an unknown key is refused, naming it."""
    from hf_wagle import WagleConfig

    values = {"report_to": "none", "save_strategy": "no", **config["training"], "output_dir": config["output_dir"]}
    parser = WagleParser(WagleConfig, config=False, plugins=False)
    (args,) = parser.parse_mapping(values, source="the training block of the config")
    return args


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
    """Build `WagleConfig` from `config["training"]` and run `WagleTrainer`; returns the trainer (model unlearned)."""
    from hf_wagle import WagleTrainer

    args = training_args(config)
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
