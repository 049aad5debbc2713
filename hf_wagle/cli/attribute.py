"""`hf-wagle attribute`: its own keys (`AttributeArguments`); every mask option is a field of `MaskConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..options import DEFAULT_MAX_LENGTH, DEFAULT_PROMPT_TEMPLATE
from .common import Command, QuantizedBase, check_device, check_model, join_processes, leave_processes, load_data
from .plugins import register_command


@dataclass
class AttributeArguments(QuantizedBase):
    """What `hf-wagle attribute` needs besides the mask options: the model, the data and where the mask goes."""

    model: str = field(metadata={"help": "model: Hub id or local folder"})
    out: str = field(metadata={"help": "folder for wagle_mask.safetensors, mask_stats.json, mask_heatmap.png"})
    forget: str | None = field(default=None, metadata={
        "help": "forget data: .json/.jsonl/.parquet/.csv file, a save_to_disk folder, scenario:NAME/SPLIT or a Hub "
                "dataset name"})
    retain: str | None = field(default=None, metadata={"help": "retain data, same forms (needed by wagle and grin)"})
    seed: int = field(default=0, metadata={"help": "seed of sampled subsets and random masks"})
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "tokens per example (longer ones are cut)"})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={
        "help": "QA prompt with {question}, or 'chat' for the tokenizer's chat template (default: %(default)r)"})
    forget_tokens: Literal["answer", "key"] = field(default="answer", metadata={
        "help": "the forget tokens scored: each whole answer, or its key tokens alone (`answer_key`, else derived), "
                "as a run with forget_tokens: key unlearns them and attributes its own mask (QA data)"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "weights' dtype while scoring (gradients are summed in float32)"})
    device: str | None = field(default=None, metadata={"help": "e.g. cuda:0 (default: where the model loads)"})
    fsdp: bool = field(default=False, metadata={
        "help": "under torchrun/accelerate launch, shard the model with FSDP2 (each decoder layer, then the whole "
                "model) so that gradients and scores exist only as each rank's shards; without it, several processes "
                "split the data and each holds the whole model"})


@register_command("attribute")
class Attribute(Command):
    """Score a model's weights on forget/retain data with a registered mask method, write the mask, print its stats
    and save a heat map (layers x module types). The mask options are `MaskConfig`'s fields (`--method`, `--ratio`,
    `--options eps=1e-10`, ...); `--config file.yaml` sets any option by its name. Several processes
    (torchrun, accelerate launch) split the data, or with --fsdp shard the model."""

    help = "score a model's weights on forget/retain data and save the mask"

    def arguments(self) -> dict[str, type]:
        from ..masking.config import MaskConfig

        return {"script": AttributeArguments, "mask": MaskConfig}

    def add_arguments(self, parser) -> None:
        for action in parser._actions:
            if action.dest == "noise_std":  # a MaskConfig field that applies when unlearning
                action.help += " Not used here: the noise is added when unlearning starts."

    def run(self, args) -> int:
        import json
        import os
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..masking import compute_mask, get_mask_method

        script, config = args.script, args.mask
        check_model(script.model)
        check_device(script.device)
        if config.method is None:
            raise ValueError("--method: attribute makes a mask; name a mask method (e.g. wagle), not none")
        get_mask_method(config.method).resolve_options(config.options)  # an unknown method or option: now
        if script.fsdp and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise ValueError("--fsdp shards the model over several processes; launch with torchrun or accelerate "
                             "launch (e.g. torchrun --nproc_per_node 8 -m hf_wagle.cli attribute --fsdp ...)")
        quantization = script.bnb_config(script.dtype)
        if quantization is not None and script.fsdp:
            raise ValueError("--fsdp shards full-precision weights; a quantised model is attributed whole in every "
                             "process (drop --fsdp, or --quantization)")
        if Path(script.out).exists() and not Path(script.out).is_dir():
            raise ValueError(f"--out {script.out} is a file; give a folder for the mask, its stats and heat map")
        forget = load_data(script.forget, "forget") if script.forget else None
        retain = load_data(script.retain, "retain") if script.retain else None
        tokenizer = AutoTokenizer.from_pretrained(script.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if script.forget_tokens == "key":
            forget = _key_tokens(forget, tokenizer, script)
        # bitsandbytes places a quantised model when it loads (it cannot be moved after): on --device, or under a
        # launcher on this process's GPU
        device = script.device or (int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ
                                   and torch.cuda.is_available() else None)
        model = AutoModelForCausalLM.from_pretrained(script.model, dtype=getattr(torch, script.dtype),
                                                     quantization_config=quantization,
                                                     device_map={"": device} if quantization and device is not None
                                                     else None)
        if script.device and not quantization:
            model.to(script.device)
        main = join_processes(model, script.fsdp)
        mask = compute_mask(model, forget, retain, tokenizer, config=config, seed=script.seed,
                            prompt_template=script.prompt_template, max_length=script.max_length)
        leave_processes()
        if not main:  # every rank holds the same mask; the main process writes it
            return 0
        out = Path(script.out)
        path = mask.save(out)
        stats = mask.stats()
        (out / "mask_stats.json").write_text(json.dumps({"metadata": mask.metadata, "stats": stats}, indent=2))
        png = mask.plot_heatmap(out / "mask_heatmap.png", title=f"{config.method} mask, ratio {config.ratio:g}: "
                                                                f"{Path(script.model.rstrip('/')).name}")
        print(mask.format_stats())
        bits = path.stat().st_size * 8 / max(1, mask.num_total)
        print(f"wrote {path} ({bits:.3f} bits per weight), {out / 'mask_stats.json'} and {png}")
        return 0


def _key_tokens(forget, tokenizer, script):
    """The forget rows tokenised with labels on each answer's key tokens alone, as `WagleTrainer` attributes a run with
    `forget_tokens="key"`."""
    from datasets import Dataset

    from ..data import dataset_shape, tokenize_dataset
    from ..evaluation.measure import answer_keys

    if forget is None or dataset_shape(forget, "forget") != "qa":
        raise ValueError("--forget_tokens key scores the tokens of each answer's fact, which needs QA forget rows "
                         "(question, answer, optionally answer_key); drop it or give QA data")
    return Dataset.from_list(tokenize_dataset(forget, tokenizer, script.prompt_template, script.max_length, "forget",
                                              keys=answer_keys(forget)))
