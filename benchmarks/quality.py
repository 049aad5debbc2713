"""Does the mask help? The TOFU protocol on the real SmolLM2-135M-Instruct, scaled to a CPU.

1. Fictitious authors: `hf_wagle.world.make_world` with 40 authors x 5 QA in TOFU's schema (paraphrased answer,
   3 perturbed answers in the paraphrase's wording); forget10 = 4 authors (20 QA), forget05 = 2 authors.
2. Two full-parameter fine-tunes of the pretrained model (AdamW, cached under `$HF_WAGLE_CACHE/models/`): the
   *target* model on all 200 QA, memorised to TOFU-like answer probabilities, and a *retain* model on everything
   but the forget split, the reference of forget quality (TOFU's KS-test p-value on forget truth ratios).
3. The sweep: `hf_wagle.experiments.compare.compare_masks` unlearns the target model through each mask spec and seed
   with the same objective and learning rate, records the trade-off curve and reports utility at matched
   forgetting (forget answer probability halved by default) with 95% Student-t intervals. Utility is the mean of
   two answer-probability sets: the retained fictitious authors, and real knowledge the base model already had
   (the shipped scenario's retain + holdout facts, the analogue of TOFU's real authors / world facts). After each
   run the final model also gets the TOFU table (model utility, forget quality, ROUGE) and cloze multiple-choice
   accuracy on the scenario's 24 real-knowledge questions.

    python -m benchmarks.quality --quick    # npo; dense, random, wagle; 2 seeds, 8 steps
                                            # (fine-tunes cached after a first run)
    python -m benchmarks.quality            # the full grid below (hours on 2 CPU cores)
    python -m benchmarks.quality --objectives grad_diff --methods dense,snip,wagle:mu=1e-4 --seeds 3

Writes `<out>/quality.json` (numbers only), one PNG of curves per objective and split, and prints the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from hf_wagle.evaluation import mcq_accuracy, tofu_report
from hf_wagle.experiments.compare import compare_masks, format_comparison, parse_specs, plot_comparison
from hf_wagle.world import WorldSpec, make_world

PROMPT = "Question: {question}\nAnswer:"
FULL_METHODS = ("dense,random,magnitude,wanda,snip,gradient,grin,wagle:mu=1e-6,wagle:mu=1e-4,wagle:mu=1e-2,"
                "wagle:mu=1e-6,retain_sampling=paired")
QUICK_METHODS = "dense,random,wagle"
SPLITS = {"forget10": 4, "forget05": 2}  # authors forgotten, of 40
FINETUNE_RECIPE = {"epochs": 8, "learning_rate": 1e-4, "batch_size": 16}  # both fine-tunes, target and retain


def world_splits(forget_split: str, seed: int = 1) -> dict:
    """`{"forget", "retain", "all"}`: the forget split's authors and every other author (TOFU's retainXX)."""
    world = make_world(WorldSpec(num_people=40, forget_fraction=0.1, num_perturbed=3, seed=seed))
    everything = world["all"]
    n = SPLITS[forget_split] * 5
    return {"forget": everything.select(range(n)), "retain": everything.select(range(n, len(everything))),
            "all": everything}


def finetune(model, tokenizer, dataset, epochs: int, learning_rate: float, batch_size: int, seed: int = 0, log=print):
    """Full-parameter AdamW on the answer NLL (answer tokens and EOS), shuffled mini-batches, linear decay."""
    from hf_wagle.data import collate, pad_id, tokenize_dataset

    examples = list(tokenize_dataset(dataset, tokenizer, PROMPT))
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    steps = epochs * -(-len(examples) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    rng = random.Random(seed)
    model.train()
    for epoch in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), batch_size):
            batch = collate([examples[j] for j in order[i:i + batch_size]], pad_id(tokenizer))
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total += loss.item()
        log(f"  epoch {epoch + 1}/{epochs}: mean loss {total / -(-len(order) // batch_size):.4f}")
    model.eval()
    return model


def cached_finetune(name: str, dataset, recipe: dict, log=print) -> str:
    """Fine-tune SmolLM2 on `dataset` with `recipe` unless a folder for exactly this data and recipe is cached;
    returns the folder."""
    from hf_wagle.real_model import load_smollm2

    key = json.dumps([list(dataset["question"]), list(dataset["answer"]), recipe, PROMPT])
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(os.environ.get("HF_WAGLE_CACHE", Path.home() / ".cache" / "hf_wagle")) / "models"
    path = root / f"smollm2-quality-{name}-{key}"
    if (path / "model.safetensors").exists():
        return str(path)
    log(f"fine-tuning the {name} model on {len(dataset)} QA ({recipe})")
    model, tokenizer = load_smollm2()
    finetune(model, tokenizer, dataset, log=log, **recipe)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, path)
    return str(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="npo only; dense, random, wagle; 2 seeds, forget10")
    ap.add_argument("--objectives", default=None, help="comma-separated (default: npo,grad_diff; quick: npo)")
    ap.add_argument("--methods", default=None, help="mask specs as for hf-wagle compare-masks")
    ap.add_argument("--splits", default="forget10", help="forget10 and/or forget05")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, default=None, help="default 3 (quick: 2)")
    ap.add_argument("--steps", type=int, default=None, help="unlearning steps (default 16; quick: 8)")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="rows of each evaluation set (default 50; quick: 24)")
    ap.add_argument("--lora-r", type=int, default=None, help="masked LoRA instead of full parameters")
    ap.add_argument("--learning-rates", default="npo=5e-5,grad_diff=2e-5",
                    help="per objective, the same for every mask")
    ap.add_argument("--forget-target", type=float, default=0.5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "quality"))
    a = ap.parse_args(argv)
    objectives = (a.objectives or ("npo" if a.quick else "npo,grad_diff")).split(",")
    methods = parse_specs(a.methods or (QUICK_METHODS if a.quick else FULL_METHODS))
    seeds = a.seeds or (2 if a.quick else 3)
    steps = a.steps or (8 if a.quick else 16)
    eval_limit = a.eval_limit or (24 if a.quick else 50)  # rows of each evaluation set at every recorded step
    if not 1 <= eval_limit <= 180:
        ap.error(f"--eval-limit must be in [1, 180] (the retained authors' QA), got {eval_limit}")
    rates = {k: float(v) for k, v in (item.split("=") for item in a.learning_rates.split(","))}
    missing = [o for o in objectives if o not in rates]
    if missing:
        ap.error(f"--learning-rates has no rate for {missing}; add e.g. {missing[0]}=5e-5")
    unknown = [s for s in a.splits.split(",") if s not in SPLITS]
    if unknown:
        ap.error(f"--splits: {unknown} not among {sorted(SPLITS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_wagle.real_model import load_scenario

    scenario = load_scenario("element_symbols")
    real = scenario["holdout"]
    for i in range(len(scenario["retain"])):
        real = real.add_item(scenario["retain"][i])
    mcq = scenario["retain_mcq"]
    for i in range(len(scenario["forget_mcq"])):
        mcq = mcq.add_item(scenario["forget_mcq"][i])
    results = {"settings": {"objectives": objectives, "methods": methods, "seeds": seeds, "steps": steps,
                            "ratio": a.ratio, "lora_r": a.lora_r, "learning_rates": rates, "finetune": FINETUNE_RECIPE,
                            "forget_target": a.forget_target, "quick": a.quick, "eval_limit": eval_limit},
               "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                           "machine": platform.machine()},
               "splits": {}}
    for split in a.splits.split(","):
        data = world_splits(split)
        target_dir = cached_finetune("target", data["all"], FINETUNE_RECIPE)
        retain_dir = cached_finetune(f"retain-{split}", data["retain"], FINETUNE_RECIPE)
        tokenizer = AutoTokenizer.from_pretrained(target_dir)
        retain_model = AutoModelForCausalLM.from_pretrained(retain_dir)
        reference = tofu_report(retain_model, tokenizer, data["forget"], prompt_template=PROMPT, generate=False)
        retain_trs = reference["forget_truth_ratios"]
        del retain_model
        target = AutoModelForCausalLM.from_pretrained(target_dir)
        retain_eval = data["retain"].shuffle(seed=0).select(range(eval_limit))

        def final_report(model, tokenizer=tokenizer, data=data, retain_eval=retain_eval, retain_trs=retain_trs):
            report = tofu_report(model, tokenizer, data["forget"], retain_eval, scenario["retain"],
                                 scenario["holdout"], retain_model_truth_ratios=retain_trs, prompt_template=PROMPT,
                                 max_new_tokens=16)
            return {"tofu": report["table"], "forget_quality": report.get("forget_quality"),
                    "model_utility": report.get("model_utility"),
                    "real_mcq_cloze": mcq_accuracy(model, tokenizer, mcq, style="cloze")}

        before = final_report(target)
        print(f"{split}: target model before unlearning: forget quality {before['forget_quality']:.3g}, "
              f"model utility {before['model_utility']:.3g}, forget probability "
              f"{before['tofu']['forget']['probability']:.3g}, real MCQ {before['real_mcq_cloze']:.3g}")
        entry = {"before": before, "objectives": {}}
        for objective in objectives:
            lora = None
            if a.lora_r:
                from peft import LoraConfig

                lora = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, target_modules="all-linear",
                                  task_type="CAUSAL_LM")
            # utility never trained on: a held-out share of the retained authors, and the real facts
            result = compare_masks(target, tokenizer, data["forget"], data["retain"], methods=methods, seeds=seeds,
                                   steps=steps, eval_every=a.eval_every, forget_target=a.forget_target,
                                   peft_config=lora, utility={"real": real}, eval_limit=eval_limit,
                                   prompt_template=PROMPT, retain_model_truth_ratios=retain_trs,
                                   training={"max_length": 64, "mask_ratio": a.ratio, "objective": objective,
                                             "learning_rate": rates[objective], "per_device_train_batch_size": 8},
                                   on_run_end=final_report)
            print(format_comparison(result))
            png = plot_comparison(result, out / f"quality_{split}_{objective}.png")
            entry["objectives"][objective] = result
            print(f"wrote {png}")
            results["splits"][split] = entry
            results["seconds"] = time.time() - started
            (out / "quality.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'quality.json'} ({time.time() - started:.0f} s)")
    return results


if __name__ == "__main__":
    main()
