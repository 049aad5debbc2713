"""`hf-wagle unlearn --config cfg.yaml [--key value ...]`: its own keys (`UnlearnArguments`); `WagleConfig` holds
every other one."""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import Command, QuantizedBase, check_checkpoint, check_model, load_data, read_eval_sets
from .plugins import register_command


@dataclass
class UnlearnArguments(QuantizedBase):
    """The keys of `hf-wagle unlearn` that are not `WagleConfig`'s: the model, the data, the adapter."""

    model_name_or_path: str = field(metadata={"help": "base model: Hub id or local folder"})
    forget_file: str = field(metadata={"help": "forget data: .json/.jsonl/.parquet/.csv, a save_to_disk folder, a Hub "
                                               "dataset name (with forget_config/forget_split) or scenario:NAME/SPLIT "
                                               "(a shipped scenario)"})
    retain_file: str = field(metadata={"help": "retain data, same forms"})
    forget_config: str | None = field(default=None, metadata={
        "help": "config of a Hub dataset (e.g. forget10 of locuslab/TOFU); a local folder in the Hub layout holds it "
                "as <config>.jsonl or <config>/<split>.jsonl"})
    forget_split: str = field(default="train", metadata={"help": "split of the forget data set"})
    retain_config: str | None = field(default=None, metadata={"help": "config of the retain Hub dataset"})
    retain_split: str = field(default="train", metadata={"help": "split of the retain data set"})
    base_model: str | None = field(default=None, metadata={
        "help": "Hub id the card and adapter_config.json name as the base, when model_name_or_path is a local copy "
                "of it (a local path is never published)"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})
    use_peft: bool = field(default=True, metadata={"help": "train a masked LoRA adapter (else full parameters)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"],
                                           metadata={"help": "LoRA target modules"})
    evaluate: bool = field(default=False, metadata={
        "help": "score the forget, retain (trained on), held-out and neighbour sets before and after (answer "
                "probability, answered, ROUGE-L), into the card, the record and unlearn_results.json (sets "
                "do_eval; targets always evaluate)"})
    heldout_file: str | None = field(default=None, metadata={
        "help": "held-out utility data, never trained on (same forms as forget_file); default: retain_holdout of the "
                "retain rows"})
    neighbour_file: str | None = field(default=None, metadata={
        "help": "neighbour facts near the forget topic that should be kept, never trained on (same forms)"})
    eval_files: dict | str | None = field(default=None, metadata={
        "help": "more evaluation sets never trained on, as NAME: FILE (a YAML mapping, or NAME=FILE,...): `entity` "
                "(other facts about the forget set's subjects, kept), `topic` (facts of a forgotten topic never "
                "trained on, to be forgotten too) or any name (kept); see forget_kind"})
    mask_retain_file: str | None = field(default=None, metadata={
        "help": "retain data for the attribution alone, in place of retain_file (same forms): e.g. the forget set's "
                "neighbourhood, so the mask leaves out the weights it needs; never trained on, and sharing no row "
                "with an evaluation set"})
    mask_dir: str | None = field(default=None, metadata={
        "help": "a mask saved by `hf-wagle attribute` (its folder or wagle_mask.safetensors), used instead of "
                "computing one (mask_method and the other mask_* keys are then not used)"})


def lora_config(script):
    """The `LoraConfig` of `use_peft`, `lora_r`, `lora_alpha` and `lora_target_modules` (None: full parameters)."""
    if not script.use_peft:
        return None
    from peft import LoraConfig

    targets = script.lora_target_modules
    return LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, task_type="CAUSAL_LM",
                      target_modules=targets[0] if targets == ["all-linear"] else targets)


@register_command("unlearn")
class Unlearn(Command):
    """Attribution -> unlearning (-> evaluation, targets) -> save -> verify, configured by one YAML file
    (`--config`) whose keys are those below: `UnlearnArguments`' and `WagleConfig`'s (mask_options and
    objective_args as mappings, targets and plugins as lists). Flags win over the file. Exit status: 0 done, 1 a
    change outside the mask, 2 bad input, 3 the run's targets were not met (the folder is written and says so)."""

    help = ("unlearn from a YAML config (model, data, every WagleConfig key), save and verify the adapter; "
            "`hf-wagle unlearn --help` lists the keys")

    def arguments(self) -> dict[str, type]:
        from ..config import WagleConfig

        return {"script": UnlearnArguments, "training": WagleConfig}

    def run(self, args) -> int:
        import json
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

        from ..evaluation.targets import explain
        from ..hub import public_name, write_model_card
        from ..io import RESULTS_FILE
        from ..mask import WeightMask
        from ..record import update_record, verdict_of
        from ..trainer import WagleTrainer
        from ..verify import verify

        script, training = args.script, args.training
        if script.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {script.dtype!r}")
        check_model(script.model_name_or_path, "model_name_or_path")
        resume = check_checkpoint(training.resume_from_checkpoint)
        if script.base_model is not None and public_name(script.base_model) is None:
            raise ValueError(f"base_model {script.base_model!r}: expected a Hub id such as org/name, not a local path")
        forget = load_data(script.forget_file, "forget_file", script.forget_config, script.forget_split)
        retain = load_data(script.retain_file, "retain_file", script.retain_config, script.retain_split)
        eval_sets = read_eval_sets(script)
        mask_retain = load_data(script.mask_retain_file, "mask_retain_file") if script.mask_retain_file else None
        if script.evaluate:
            training.do_eval = True
        quantization = script.bnb_config(script.dtype)
        if quantization is not None and not script.use_peft:
            raise ValueError("a quantised base holds no trainable weights: set use_peft: true to train a masked LoRA "
                             "over it")
        tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, dtype=getattr(torch, script.dtype),
                                                     quantization_config=quantization)
        if script.base_model:  # what PEFT writes as base_model_name_or_path and the card names as base_model
            model.name_or_path = model.config._name_or_path = script.base_model
        peft_config = lora_config(script)
        mask = WeightMask.load(script.mask_dir, model=model) if script.mask_dir else None
        trainer = WagleTrainer(model=model, args=training, forget_dataset=forget, retain_dataset=retain,
                               processing_class=tokenizer, peft_config=peft_config, mask=mask, eval_datasets=eval_sets,
                               mask_retain_dataset=mask_retain)
        trainer.remove_callback(PrinterCallback)
        trainer.train(resume_from_checkpoint=resume)  # the Trainer's exact resume (weights, optimizer, data order)
        trainer.save_model(training.output_dir)
        trainer.accelerator.wait_for_everyone()  # under accelerate launch: the main process has written the folder
        if not trainer.is_world_process_zero():
            return 0
        out = Path(training.output_dir)
        masked = trainer._masked
        report = verify(out, base=None if script.use_peft else script.model_name_or_path) if masked else None
        if masked:
            trainer.verification = report
            update_record(out, verification=verdict_of(report))
            write_model_card(out, trainer)  # now with the verdict and the record's new digest
        engine = "fsdp2" if trainer.is_fsdp_enabled else ("ddp" if trainer.args.world_size > 1 else "single process")
        results = trainer.results
        summary = {"output_dir": str(out), "confined": report["confined"] if masked else None,
                   "steps": trainer.state.global_step, "processes": trainer.args.world_size, "engine": engine,
                   "changeable": trainer.enforced_mask.num_selected, "total": trainer.enforced_mask.num_total,
                   "evaluation": results,
                   "history": trainer.evaluation.history if trainer.evaluation is not None else None}
        (out / RESULTS_FILE).write_text(json.dumps(summary, indent=2))
        confinement = (f"confined to its mask: {'yes' if report['confined'] else 'NO'}" if masked else
                       "dense run: no mask, nothing confines the change")
        print(f"unlearned {script.model_name_or_path} in {summary['steps']} steps; {summary['changeable']} of "
              f"{summary['total']} weights could change; {confinement}")
        if results:
            for name, value in results["after"].items():
                if name in results["before"] and name != "gap":
                    print(f"  {name:<24} {results['before'][name]:.4g} -> {value:.4g}")
            for name, what in results["sets"].items():
                print(f"  {name}: {what}")
            if results.get("targets"):
                print(explain(results["targets"]))
        print(f"wrote {out}")
        if masked and not report["confined"]:
            return 1
        return 3 if results and results.get("targets") and not results["targets"]["met"] else 0
