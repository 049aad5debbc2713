"""The README's numbers about SmolLM2-135M and its shipped scenario, measured in one run.

1. Mean answer probability of each scenario split, plain prompt and chat template.
2. Multiple choice on the scenario's 24 questions: letter style (the WMDP/MMLU format) against cloze (`acc`, and
   `acc_norm`, normalised by the choice's length in characters as lm-eval does), and which letters the letter style
   picks.
3. Attribution's two retain conventions (`retain_sampling="all"` vs `"paired"`): the share of selected weights that
   both masks select, at ratio 0.8, on SmolLM2 + the scenario and on the world model, for mu 1e-6 and 1e-3.

    python benchmarks/real_model_facts.py     # about 2 minutes on 2 CPU cores (SmolLM2 fetched once)

Writes `benchmarks/results/real_model_facts.json` and prints it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hf_wagle import compute_mask
from hf_wagle.evaluation import answer_metrics, mcq_accuracy, mcq_predictions, summarise
from hf_wagle.real_model import load_scenario, load_smollm2
from hf_wagle.world import make_world, pretrained_world_model


def overlap(a, b) -> float:
    """Share of `a`'s selected weights that `b` selects too."""
    return sum(int((a[n] & b[n]).sum()) for n in a.names()) / a.num_selected


def retain_conventions(model, tokenizer, forget, retain, mus=(1e-6, 1e-3), seeds=(0,)) -> dict:
    out = {}
    for mu in mus:
        for seed in seeds:
            kw = dict(ratio=0.8, mu=mu, seed=seed, progress=False)
            every = compute_mask(model, forget, retain, tokenizer, **kw)
            paired = compute_mask(model, forget, retain, tokenizer, retain_sampling="paired", **kw)
            out[f"mu={mu:g},seed={seed}"] = overlap(every, paired)
    return out


def main() -> None:
    model, tokenizer = load_smollm2()
    scenario = load_scenario("element_symbols")
    result = {"answer_probability": {}, "mcq": {}, "retain_conventions": {}}
    for template in ("Question: {question}\nAnswer:", "chat"):
        result["answer_probability"][template] = {
            split: summarise(answer_metrics(model, tokenizer, scenario[split], template))["probability"]
            for split in ("forget", "retain", "holdout")}
    for split in ("forget_mcq", "retain_mcq"):
        data = scenario[split]
        letters = mcq_predictions(model, tokenizer, data, style="letter")
        result["mcq"][split] = {
            "n": len(data), "letter": mcq_accuracy(model, tokenizer, data, style="letter"),
            "letters_picked": dict(Counter("ABCD"[i] for i in letters)),
            "cloze_acc": mcq_accuracy(model, tokenizer, data, style="cloze"),
            "cloze_acc_norm": mcq_accuracy(model, tokenizer, data, style="cloze", length_normalized=True)}
    result["retain_conventions"]["smollm2_scenario"] = retain_conventions(
        model, tokenizer, scenario["forget"], scenario["retain"])
    world = make_world()
    world_model, world_tokenizer, _ = pretrained_world_model()
    result["retain_conventions"]["world"] = retain_conventions(world_model, world_tokenizer, world["forget"],
                                                               world["retain"], seeds=(0, 1))
    out = Path(__file__).with_name("results") / "real_model_facts.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
