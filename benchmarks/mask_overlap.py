"""How alike are the masks? Jaccard overlap |A & B| / |A | B| of the ratio-0.5 masks that wagle (mu 1e-6, 1e-4,
1e-2), snip and gradient select on the quality benchmark's fine-tuned SmolLM2 and its forget10 / retain data.

One pass over each set gives G_f and G_r (per-example token-mean NLL, summed, 64 tokens as in the benchmark), and
every method scores copies of them, so the overlaps compare the scores alone. Two random masks at ratio 0.5 share
1/3 (0.25 / 0.75).

    python -m benchmarks.mask_overlap      # under a minute on 2 CPU cores once the fine-tuned model is cached

Writes `benchmarks/results/mask_overlap.json` and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_wagle.data import pad_id, tokenize_dataset
from hf_wagle.masking import accumulate_gradients, select_top_k
from hf_wagle.masking.methods.gradient import gradient_score
from hf_wagle.masking.methods.snip import snip_score
from hf_wagle.masking.methods.wagle import wagle_score
from hf_wagle.modeling import base_named_parameters

from .quality import FINETUNE_RECIPE, PROMPT, cached_finetune, world_splits

RATIO = 0.5
SCORES = {"wagle mu=1e-6": lambda p, f, r: wagle_score(p, f, r, mu=1e-6),
          "wagle mu=1e-4": lambda p, f, r: wagle_score(p, f, r, mu=1e-4),
          "wagle mu=1e-2": lambda p, f, r: wagle_score(p, f, r, mu=1e-2),
          "snip": lambda p, f, r: snip_score(p, f),
          "gradient": lambda p, f, r: gradient_score(p, f)}


def jaccard(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(int((x & y).sum()) for x, y in zip(a, b)) / sum(int((x | y).sum()) for x, y in zip(a, b))


def main() -> dict:
    data = world_splits("forget10")
    path = cached_finetune("target", data["all"], FINETUNE_RECIPE)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    params = [p for _, p in base_named_parameters(model)]
    grads = {}
    for split in ("forget", "retain"):
        examples = tokenize_dataset(data[split], tokenizer, PROMPT, max_length=64)
        grads[split] = [g.clone() for g in accumulate_gradients(model, params, examples, 8,
                                                                pad_token_id=pad_id(tokenizer))]
    k = round(RATIO * sum(p.numel() for p in params))
    masks = {}
    with torch.no_grad():
        for name, score in SCORES.items():  # score functions work in place: each gets copies
            masks[name] = select_top_k([score(p.detach().float(), f.clone(), r.clone())
                                        for p, f, r in zip(params, grads["forget"], grads["retain"])], k)
    table = {a: {b: round(jaccard(masks[a], masks[b]), 4) for b in masks} for a in masks}
    print("| | " + " | ".join(masks) + " |\n" + "|---" * (len(masks) + 1) + "|")
    for a, row in table.items():
        print(f"| {a} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    result = {"ratio": RATIO, "model": Path(path).name, "jaccard": table}
    out = Path(__file__).with_name("results") / "mask_overlap.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
