"""`hf-wagle demo`: memorise a fictitious world, compute a WAGLE mask, unlearn, and print what changed."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from .attribution import compute_mask
from .config import WagleConfig
from .evaluation import answer_metrics, summarise
from .trainer import WagleTrainer
from .world import WorldSpec, make_world, pretrained_world_model

COLUMNS = ("forget prob", "retain prob", "forget exact", "retain exact", "changeable")


def _row(model, tokenizer, world) -> dict:
    f = summarise(answer_metrics(model, tokenizer, world["forget"]))
    r = summarise(answer_metrics(model, tokenizer, world["retain"]))
    return {"forget prob": f["probability"], "retain prob": r["probability"], "forget exact": f["exact"],
            "retain exact": r["exact"]}


def format_table(rows: list[tuple[str, dict]]) -> str:
    width = max(len(name) for name, _ in rows) + 2
    lines = ["run".ljust(width) + "".join(c.rjust(14) for c in COLUMNS)]
    for name, row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in COLUMNS]
        lines.append(name.ljust(width) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


def run_demo(output_dir: str = "wagle_demo", steps: int = 30, mask_ratio: float = 0.8, lora: bool = True,
             methods=("dense", "wagle", "random"), objectives=("grad_diff", "npo"), log=print) -> list:
    """Memorise -> mask -> unlearn with every (method, objective) -> table. Returns the table rows."""
    from peft import LoraConfig
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
