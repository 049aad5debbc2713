"""`hf-wagle demo`: unlearning end to end, printing what changed.

* `run_demo` (default): memorise a fictitious world with a small model trained from scratch, compute masks, unlearn
  with each (method, objective), print the table.
* `run_real_demo` (`--model smollm2`): the real pretrained SmolLM2-135M-Instruct forgets a real topic it knows
  (a scenario shipped in `hf_wagle/scenarios/`) and keeps other real knowledge.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from .config import WagleConfig
from .evaluation import answer_metrics, summarise
from .masking import compute_mask
from .trainer import WagleTrainer
from .world import WorldSpec, make_world, pretrained_world_model

COLUMNS = ("forget prob", "retain prob", "forget exact", "retain exact", "changeable")


def _row(model, tokenizer, world) -> dict:
    f = summarise(answer_metrics(model, tokenizer, world["forget"]))
    r = summarise(answer_metrics(model, tokenizer, world["retain"]))
    return {"forget prob": f["probability"], "retain prob": r["probability"], "forget exact": f["exact"],
            "retain exact": r["exact"]}


def format_table(rows: list[tuple[str, dict]], columns=COLUMNS) -> str:
    width = max(len(name) for name, _ in rows) + 2
    lines = ["run".ljust(width) + "".join(c.rjust(14) for c in columns)]
    for name, row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append(name.ljust(width) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


def run_demo(output_dir: str = "wagle_demo", steps: int = 30, mask_ratio: float = 0.8, lora: bool = True,
             methods=("dense", "wagle", "random"), objectives=("grad_diff", "npo"), log=print) -> list:
    """Memorise -> mask -> unlearn with every (method, objective) -> table. Returns the table rows."""
    from peft import LoraConfig
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.time()
    log("[1/4] fictitious world and a small Llama memorising it (cached after the first run)")
    world = make_world(WorldSpec())
    base, tokenizer, path = pretrained_world_model(log=log)
    log(f"      {len(world['forget'])} forget / {len(world['retain'])} retain QA pairs, "
        f"{sum(p.numel() for p in base.parameters()):,} parameters, model at {path}")
    rows = [("before unlearning", {**_row(base, tokenizer, world), "changeable": "-"})]
    masks = {}
    log(f"[2/4] attribution masks (ratio {mask_ratio}: the fraction of weights that may change)")
    for method in methods:
        if method != "dense":
            masks[method] = compute_mask(base, world["forget"], world["retain"], tokenizer, method=method,
                                         ratio=mask_ratio)
            log(f"      {method}: {masks[method]}")
    log(f"[3/4] unlearning, {steps} steps per run ({'masked LoRA adapters' if lora else 'full parameters'})")
    written = []
    for objective in objectives:
        for method in methods:
            name = f"{method}+{objective}"
            out = Path(output_dir) / name
            args = WagleConfig(
                output_dir=str(out), objective=objective, mask_method=None if method == "dense" else method,
                mask_ratio=mask_ratio, learning_rate=3e-3 if lora else 5e-4, max_steps=steps,
                per_device_train_batch_size=8, weight_decay=0.1, report_to="none", save_strategy="no",
                logging_strategy="no", use_cpu=True, seed=0,
            )
            trainer = WagleTrainer(
                model=copy.deepcopy(base), args=args, forget_dataset=world["forget"],
                retain_dataset=world["retain"], processing_class=tokenizer, mask=masks.get(method),
                peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear") if lora else None,
            )
            log(f"      {name}")
            trainer.remove_callback(PrinterCallback)  # the table below reports the runs
            trainer.train()
            trainer.save_model(str(out))
            written.append(out)
            rows.append((name, {**_row(trainer.model, tokenizer, world),
                                "changeable": f"{100 * trainer.enforced_mask.ratio:.1f}%"}))
    log("[4/4] results (prob = mean answer probability; exact = greedy answer reproduced exactly;\n"
        "      changeable = weights the run was allowed to change)\n")
    log(format_table(rows))
    log("\nadapters (stock PEFT format, with wagle_mask.safetensors and a model card) written to:")
    for out in written:
        log(f"  {out}")
    log(f"done in {time.time() - t0:.0f}s")
    return rows


# -- the real pretrained model ------------------------------------------------------------------------------------

REAL_COLUMNS = ("forget prob", "retain prob", "holdout prob", "forget mcq", "retain mcq")


def _real_row(model, tokenizer, scenario, template: str) -> dict:
    from .evaluation import mcq_accuracy

    prob = {split: summarise(answer_metrics(model, tokenizer, scenario[split], template))["probability"]
            for split in ("forget", "retain", "holdout")}
    return {"forget prob": prob["forget"], "retain prob": prob["retain"], "holdout prob": prob["holdout"],
            "forget mcq": mcq_accuracy(model, tokenizer, scenario["forget_mcq"], style="cloze"),
            "retain mcq": mcq_accuracy(model, tokenizer, scenario["retain_mcq"], style="cloze")}


def _answers(model, tokenizer, dataset, template: str, n: int) -> list[str]:
    from .data import prompt_ids
    from .evaluation.scoring import greedy_generate

    rows = dataset.select(range(min(n, len(dataset))))
    prompts = [prompt_ids(tokenizer, template, q) for q in rows["question"]]
    return [a.split("\n")[0] for a in greedy_generate(model, tokenizer, prompts, max_new_tokens=16)]


def run_real_demo(output_dir: str = "wagle_demo_smollm2", scenario: str = "element_symbols", steps: int = 12,
                  objective: str = "npo", mask_method: str | None = "wagle", mask_ratio: float = 0.5,
                  learning_rate: float = 1e-3, lora_r: int = 16, show: int = 4, model_dir=None, log=print) -> dict:
    """SmolLM2-135M-Instruct forgets a real topic it knows and keeps other real knowledge.

    Loads the model (`hf_wagle.real_model.smollm2_path`) and a shipped scenario, computes the mask, unlearns with
    a masked LoRA adapter (`target_modules="all-linear"`), saves and verifies it, and prints answer probabilities
    (forget / retain / held-out kept knowledge), cloze multiple-choice accuracy and the greedy answers before and
    after. Returns `{"before": row, "after": row, "answers": {...}, "verify": report, "output_dir": path}`.
    """
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as hf_logging

    from .real_model import load_scenario, smollm2_path
    from .verify import verify

    hf_logging.set_verbosity_error()
    t0 = time.time()
    path = smollm2_path(model_dir)
    log(f"[1/4] SmolLM2-135M-Instruct from {path} and the {scenario!r} scenario")
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = load_scenario(scenario)
    template = data["info"]["prompt_template"]
    log(f"      forget: {data['info']['forget_topic']} ({len(data['forget'])} QA); keep: {len(data['retain'])} "
        f"retain QA (trained on) and {len(data['holdout'])} held-out QA (never seen)")
    before = _real_row(base, tokenizer, data, template)
    shown = {split: (data[split].select(range(min(show, len(data[split]))))["question"],
                     _answers(base, tokenizer, data[split], template, show)) for split in ("forget", "holdout")}
    log(f"[2/4] {mask_method or 'dense'} mask (ratio {mask_ratio}) and {objective} unlearning, {steps} steps, "
        f"masked LoRA r={lora_r}")
    args = WagleConfig(
        output_dir=str(output_dir), objective=objective, mask_method=mask_method, mask_ratio=mask_ratio,
        learning_rate=learning_rate, max_steps=steps, per_device_train_batch_size=8, lr_scheduler_type="constant",
        weight_decay=0.0, prompt_template=template, report_to="none", save_strategy="no", logging_strategy="no",
        use_cpu=True, seed=0, disable_tqdm=True,
    )
    trainer = WagleTrainer(model=base, args=args, forget_dataset=data["forget"], retain_dataset=data["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    trainer.remove_callback(PrinterCallback)  # the table below reports the run
    trainer.train()
    trainer.save_model(str(output_dir))
    report = verify(output_dir)
    log("[3/4] after unlearning")
    after = _real_row(trainer.model, tokenizer, data, template)
    answers = {split: list(zip(questions, old, _answers(trainer.model, tokenizer, data[split], template, show)))
               for split, (questions, old) in shown.items()}
    log("[4/4] results (prob = mean answer probability, teacher forced; mcq = cloze multiple-choice accuracy)\n")
    log(format_table([("before unlearning", before), ("after unlearning", after)], REAL_COLUMNS))
    log("\nafter / before: " + ", ".join(f"{c} {after[c] / before[c]:.3g}x" for c in REAL_COLUMNS[:3]))
    for split, rows in answers.items():
        log(f"\n{'forgotten' if split == 'forget' else 'kept (held out)'}: question | before | after")
        for q, old, new in rows:
            log(f"  {q} | {old} | {new}")
    log(f"\nadapter: {output_dir} ({'confined to its mask' if report['confined'] else 'NOT CONFINED'}: "
        f"{report['changed_inside_mask']} weights changed inside, {report['changed_outside_mask']} outside)")
    log(f"done in {time.time() - t0:.0f}s")
    return {"before": before, "after": after, "answers": answers, "verify": report, "output_dir": str(output_dir)}
