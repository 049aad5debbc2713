"""`hf-wagle compare-masks`: its keys (`CompareMasksArguments`); a mask spec's options are `MaskConfig`'s fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..masking.config import SPEC_KEYS
from ..options import DEFAULT_PROMPT_TEMPLATE
from .common import Command, check_model, load_data
from .plugins import register_command


@dataclass
class CompareMasksArguments:
    """What `hf-wagle compare-masks` takes: the model and data, the mask specs, and the one unlearning recipe every
    spec runs with."""

    model: str = field(metadata={"help": "model: Hub id or local folder (loaded afresh for every run)"})
    forget: str = field(metadata={"help": "forget QA data (question, answer): file, folder or scenario:"})
    retain: str = field(metadata={"help": "retain QA data, same forms; also the first utility set"})
    out: str = field(metadata={"help": "folder for compare_masks.json and compare_masks.png"})
    utility: list[str] | None = field(default=None, metadata={
        "action": "extend", "metavar": "NAME=FILE",
        "help": "another QA set whose answer probability counts as utility (e.g. held-out facts the model should "
                "keep); repeatable"})
    methods: str = field(default="dense,random,wagle", metadata={
        "help": "comma-separated mask specs: dense (no mask) or a mask method, with options after a colon, e.g. "
                f"wagle:mu=1e-4,scope=per_layer or grin:eps=1e-10 (keys: {', '.join(SPEC_KEYS)}, or the method's "
                "own options)"})
    ratio: float = field(default=0.5, metadata={"help": "fraction of weights each mask lets change"})
    objective: str = field(default="npo", metadata={"help": "unlearning objective, the same for every mask"})
    seeds: int = field(default=2, metadata={"help": "runs per mask (seeds 0..N-1: data order, random masks, LoRA "
                                                    "init)"})
    steps: int = field(default=20, metadata={"help": "optimizer steps per run"})
    learning_rate: float = field(default=1e-5, metadata={"help": "constant learning rate"})
    batch_size: int = field(default=8, metadata={"help": "forget (and retain) examples per step"})
    eval_every: int = field(default=2, metadata={"help": "record the curve every N steps"})
    forget_target: float = field(default=0.5, metadata={
        "help": "matched forgetting: forget probability at most this fraction of its start"})
    eval_limit: int = field(default=32, metadata={"help": "rows of each set scored at every recorded step"})
    lora_r: int | None = field(default=None, metadata={
        "help": "train a masked LoRA of this rank (default: full parameters)"})
    max_length: int = field(default=128, metadata={"help": "tokens per training example"})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={
        "help": "QA prompt with {question}, or 'chat' for the tokenizer's chat template (default: %(default)r)"})


@register_command("compare-masks")
class CompareMasks(Command):
    """Unlearn a model through several masks and seeds, and compare the utility each keeps at matched forgetting,
    with 95% intervals (`hf_wagle.experiments.compare`). `--config file.yaml` sets any option by its name."""

    help = "unlearn through several masks and seeds; compare utility at matched forgetting, with 95%% intervals"

    def arguments(self) -> dict[str, type]:
        return {"script": CompareMasksArguments}

    def run(self, args) -> int:
        import json
        import shlex
        import sys
        from pathlib import Path

        from transformers import AutoTokenizer

        from ..experiments.compare import compare_masks, format_comparison, parse_specs, plot_comparison, spec_options
        from ..masking.config import MaskConfig

        a = args.script
        check_model(a.model)
        for spec in parse_specs(a.methods):
            spec_options(spec)
        MaskConfig(ratio=a.ratio)  # checks it
        out = Path(a.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {a.out} is a file; give a folder for compare_masks.json and its plot")
        utility = {}
        for item in a.utility or []:
            name, sep, path = item.partition("=")
            if not sep or not name:
                raise ValueError(f"--utility {item}: expected NAME=FILE")
            utility[name] = load_data(path, f"utility {name}")
        forget, retain = load_data(a.forget, "forget"), load_data(a.retain, "retain")
        tokenizer = AutoTokenizer.from_pretrained(a.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        result = compare_masks(a.model, tokenizer, forget, retain, methods=a.methods, ratio=a.ratio,
                               objective=a.objective, seeds=a.seeds, steps=a.steps, learning_rate=a.learning_rate,
                               batch_size=a.batch_size, eval_every=a.eval_every, forget_target=a.forget_target,
                               utility={"retain": retain, **utility}, eval_limit=a.eval_limit, lora_r=a.lora_r,
                               prompt_template=a.prompt_template, training={"max_length": a.max_length})
        out.mkdir(parents=True, exist_ok=True)
        result["model"] = Path(a.model.rstrip("/")).name
        result["command"] = shlex.join(["hf-wagle", *sys.argv[1:]]) if Path(sys.argv[0]).name == "hf-wagle" else None
        (out / "compare_masks.json").write_text(json.dumps(result, indent=2))
        png = plot_comparison(result, out / "compare_masks.png")
        print(format_comparison(result))
        print(f"wrote {out / 'compare_masks.json'} and {png}")
        return 0
