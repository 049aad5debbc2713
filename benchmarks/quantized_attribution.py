"""Attribution and masked-LoRA memory over a bitsandbytes-quantised SmolLM2-135M-Instruct, on CPU.

For the base in float32, 8-bit (LLM.int8()) and 4-bit NF4, on the shipped element-symbols scenario's forget and retain
rows, in one process:

1. Storage: bytes per parameter of the loaded weights (tensors' own bytes, bitsandbytes' scales included), the
   quantised linear weights apart from the ones bitsandbytes keeps in full precision (embeddings, norms).
2. Attribution (`compute_mask`, wagle, ratio 0.5): peak resident memory above the loaded model, in one pass and under
   `mask_memory_budget` set to the smallest budget the largest tensor allows (several passes), per parameter, each
   measured in a fresh process (`run_stage`) after a warm-up attribution on 2 + 2 rows (`/proc` VmHWM); the time of
   the two side by side (`--repeats`, alternated; ratio of medians); whether the two masks are equal.
3. Agreement: Jaccard of each quantised base's mask (wagle and grin) with the float32 mask, and of its wagle mask
   with that of the float32 model holding its dequantised weights (what NF4 layers compute with; LLM.int8() also
   rounds the layers' inputs to 8 bits, so there the two models differ).
4. Masked LoRA (r=16, all linear layers): peak resident memory of one forward+backward over a batch of 8 (after one
   warm-up pass), per parameter, in a fresh process.

    python benchmarks/quantized_attribution.py          # about 20 minutes on 2 CPU cores

Writes `benchmarks/results/quantized_attribution.json` (or `--out`) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_wagle import compute_mask
from hf_wagle.data import collate, tokenize_dataset
from hf_wagle.mask import WeightMask
from hf_wagle.masking import included_parameters
from hf_wagle.modeling import dequantized, is_quantized, logical_shape, quantized_layers
from hf_wagle.real_model import load_scenario, smollm2_path

from _common import peak_extra_bytes

BASES = ("float32", "int8", "nf4")


def load(base: str):
    """SmolLM2 in float32, or quantised as `hf-wagle unlearn --quantization` loads it."""
    from transformers import AutoModelForCausalLM

    from hf_wagle.cli.common import QuantizedBase

    config = QuantizedBase(quantization=None if base == "float32" else base).bnb_config("float32")
    return AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32, quantization_config=config)


def storage(model) -> dict:
    """Bytes per parameter of the weights as stored (bitsandbytes' scales included): all of them, and the quantised
    ones alone."""
    layers = quantized_layers(model)

    def nbytes(p):
        extra = []
        if getattr(p, "quant_state", None) is not None:  # 4-bit: an absmax per block of 64, the 16-value code book
            extra = [p.quant_state.absmax, p.quant_state.code]
        elif is_quantized(p):  # 8-bit: a scale per row, on the weight until the first forward, then on the layer
            extra = [p.SCB if getattr(p, "SCB", None) is not None else layers[id(p)].state.SCB]
        return sum(t.numel() * t.element_size() for t in [p, *extra])

    named = included_parameters(model)[0]
    count = sum(math.prod(logical_shape(p)) for _, p in named)
    quantized = [p for _, p in named if is_quantized(p)]
    q_count = sum(math.prod(logical_shape(p)) for p in quantized)
    return {"parameters": count, "bytes_per_parameter": sum(nbytes(p) for _, p in named) / count,
            "quantised_parameters": q_count,
            "quantised_bytes_per_parameter": sum(nbytes(p) for p in quantized) / q_count if q_count else None}


def jaccard(a, b) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a.names())
    return inter / sum(int((a[n] | b[n]).sum()) for n in a.names())


def stage(base: str, what: str, budget: int | None, out: str) -> dict:
    """One measurement in a fresh process: the base loaded, then `what` (attribute/lora) with its peak resident
    memory above the loaded model and its time; an attribution's mask is saved to `out`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    scenario = load_scenario("element_symbols")
    forget, retain, template = scenario["forget"], scenario["retain"], scenario["info"]["prompt_template"]
    model = load(base).eval()
    result = storage(model)
    if what == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM")).train()
        batch = collate(tokenize_dataset(forget.select(range(8)), tokenizer, template), tokenizer.pad_token_id)
        model(**batch).loss.backward()  # warm-up: the allocator's first pass
        _, extra = peak_extra_bytes(lambda: model(**batch).loss.backward())
        return {**result, "peak_extra_bytes": extra}
    if what == "twin":  # the float32 model holding the dequantised weights of `base`
        quantized, model = model, load("float32").eval()
        layers, weights = quantized_layers(quantized), dict(quantized.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(dequantized(weights[name], layers.get(id(weights[name]))))
        del quantized
    method = "grin" if what == "grin" else "wagle"
    # warm-up on 2 + 2 rows: the first backward of a process keeps ~4.6 bytes per parameter resident on CPU (measured,
    # whatever follows), which is not attribution's
    compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.5, memory_budget=budget, num_samples=2,
                 prompt_template=template, progress=False)
    t0 = time.perf_counter()
    mask, extra = peak_extra_bytes(lambda: compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.5,
                                                        memory_budget=budget, prompt_template=template,
                                                        progress=False))
    seconds = time.perf_counter() - t0
    mask.save(out)
    return {**result, "peak_extra_bytes": extra, "seconds": seconds, "passes": mask.metadata["passes"]}


def run_stage(base: str, what: str, budget: int | None, out: Path) -> dict:
    """`stage` in a fresh process whose glibc malloc serves every block above 64 KiB by mmap, so that a freed tensor
    leaves resident memory: with glibc's default (a threshold that grows as blocks are freed) resident memory kept up
    to 3.5 bytes per parameter of freed tensors on the quantised bases, which no live tensor held."""
    cmd = [sys.executable, __file__, "--stage", base, what, str(budget or 0), str(out)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "quantized_attribution.json"))
    ap.add_argument("--stage", nargs=4, help=argparse.SUPPRESS)  # BASE WHAT BUDGET OUT: one measurement
    a = ap.parse_args()
    if a.stage:
        base, what, budget, out = a.stage
        print(json.dumps(stage(base, what, int(budget) or None, out)))
        return
    work = Path(tempfile.mkdtemp())
    rows, masks = {}, {}
    for base in BASES:
        model = load(base)
        budget = max(math.prod(logical_shape(p)) for _, p in included_parameters(model)[0]) * 8  # wagle: G_f + G_r
        del model
        row = {"budget_bytes": budget, "attribution_seconds": {"one": [], "budget": []}}
        for _ in range(a.repeats):  # one pass and the budget alternated
            for key, b in (("one", None), ("budget", budget)):
                r = run_stage(base, "wagle", b, work / f"{base}_{key}")
                row["attribution_seconds"][key].append(r["seconds"])
                row[f"attribution_{key}_peak_extra_bytes_per_parameter"] = r["peak_extra_bytes"] / r["parameters"]
                row[f"passes_{key}"] = r["passes"]
        row.update({k: v for k, v in r.items() if "parameter" in k and "peak" not in k})
        row["budget_over_one_pass_time"] = (statistics.median(row["attribution_seconds"]["budget"])
                                            / statistics.median(row["attribution_seconds"]["one"]))
        for key in ("one", "budget"):
            masks[(base, "wagle", key)] = WeightMask.load(work / f"{base}_{key}")
        row["budget_mask_equals_one_pass"] = masks[(base, "wagle", "budget")] == masks[(base, "wagle", "one")]
        run_stage(base, "grin", None, work / f"{base}_grin")
        masks[(base, "grin", "one")] = WeightMask.load(work / f"{base}_grin")
        for method in ("wagle", "grin"):
            row[f"jaccard_{method}_with_float32"] = jaccard(masks[(base, method, "one")],
                                                            masks[("float32", method, "one")])
        if base != "float32":
            run_stage(base, "twin", None, work / f"{base}_twin")
            row["jaccard_wagle_with_dequantised_twin"] = jaccard(masks[(base, "wagle", "one")],
                                                                 WeightMask.load(work / f"{base}_twin"))
        r = run_stage(base, "lora", None, work / "unused")
        row["lora_step_peak_extra_bytes_per_parameter"] = r["peak_extra_bytes"] / r["parameters"]
        rows[base] = row
        print(base, json.dumps(row, indent=1), flush=True)
    shutil.rmtree(work)
    scenario = load_scenario("element_symbols")
    result = {"scenario": "element_symbols", "forget_rows": len(scenario["forget"]),
              "retain_rows": len(scenario["retain"]), "method": "wagle", "ratio": 0.5, "bases": rows,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
