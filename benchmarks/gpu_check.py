"""The cost ratios on an accelerator, in bf16, offline (random-init weights): for a machine with a GPU.

On CUDA (default when available), for a random-init Llama of `--layers` x `--hidden` (default about 1.2B
parameters): tokens per second and peak memory of a training step, masked / dense step time for full parameters
(bf16 autocast, fp32 master weights) and for LoRA r=16, and attribution time / one forward+backward over the same
examples with the fp32 sums on the device and in host memory (`accumulate_device="cpu"`), with peak memory of each.
Everything alternates within each repeat; ratios are of medians. `--quantization nf4|int8` adds the same model loaded
quantised by bitsandbytes: attribution in one pass and under a memory budget, and masked-LoRA steps over it.

    python benchmarks/gpu_check.py                          # CUDA, about 1.2B parameters, a few minutes
    python benchmarks/gpu_check.py --device cpu --layers 2 --hidden 256 --vocab 4000   # a smoke run on CPU
    python benchmarks/gpu_check.py --quantization nf4   # also attribution (one pass, budgeted) and masked LoRA over NF4

Writes `benchmarks/results/gpu_check.json` (or `--out`) and prints the numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from step_cost import StepTimes, step_times

from hf_wagle import compute_mask
from hf_wagle.data import tokenize_dataset

from _common import make_data, make_model
from attribution_cost import forward_backward_pass


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    """`(seconds, peak bytes allocated on the device or 0 on CPU, result)` of `fn()`."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    return seconds, torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0, result


def quantized_check(model, a, forget, retain) -> dict:
    """`--quantization nf4|int8`: the same model saved and loaded back quantised by bitsandbytes, then attribution
    (wagle) in one pass and under `mask_memory_budget` = the largest tensor's G_f + G_r (the fewest passes that
    budget allows), alternated `--repeats` times, and masked-LoRA steps (r=16) over it with that mask: seconds and
    peak device memory, per parameter."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from hf_wagle import WagleConfig, WagleTrainer
    from hf_wagle.cli.common import QuantizedBase
    from hf_wagle.masking import included_parameters
    from hf_wagle.modeling import logical_shape

    config = QuantizedBase(quantization=a.quantization).bnb_config("bfloat16")
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        quantized = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=config,
                                                         device_map={"": a.device}).eval()
    sizes = [math.prod(logical_shape(p)) for _, p in included_parameters(quantized)[0]]
    n, budget = sum(sizes), max(sizes) * 8
    runs = {"one pass": None, "budget": budget}
    seconds, peaks, masks = {k: [] for k in runs}, {k: 0 for k in runs}, {}
    for _ in range(a.repeats):
        for key, b in runs.items():
            took, peak, masks[key] = timed(a.device, lambda b=b: compute_mask(
                quantized, forget.select(range(16)), retain.select(range(16)), None, method="wagle", ratio=0.5,
                batch_size=a.batch_size, memory_budget=b, progress=False))
            seconds[key].append(took)
            peaks[key] = max(peaks[key], peak)
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = WagleConfig(output_dir=out, objective="grad_diff", max_steps=a.steps, learning_rate=1e-5,
                           per_device_train_batch_size=a.batch_size, use_cpu=a.device == "cpu", report_to="none",
                           save_strategy="no", disable_tqdm=True, logging_strategy="no")
        trainer = WagleTrainer(model=quantized, args=args, forget_dataset=forget, retain_dataset=retain,
                               mask=masks["budget"], callbacks=[timer],
                               peft_config=LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        _, lora_peak, _ = timed(a.device, trainer.train)
    return {"quantization": a.quantization, "parameters": n, "budget_bytes": budget,
            "passes": masks["budget"].metadata["passes"],
            "budget_mask_equals_one_pass": masks["budget"] == masks["one pass"],
            "attribution_seconds": seconds,
            "budget_over_one_pass_time": statistics.median(seconds["budget"]) / statistics.median(seconds["one pass"]),
            "attribution_peak_bytes_per_parameter": {k: v / n for k, v in peaks.items()},
            "lora_step_seconds": statistics.median(timer.times[1:]), "lora_peak_bytes_per_parameter": lora_peak / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quantization", choices=("nf4", "int8"),
                    help="also measure attribution and masked LoRA over the model quantised by bitsandbytes")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "gpu_check.json"))
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    model = make_model(a.layers, a.vocab, a.hidden, a.intermediate).to(a.device)
    n = sum(p.numel() for p in model.parameters())
    forget, retain = make_data(32, a.length, a.vocab, 1), make_data(64, a.length, a.vocab, 2)
    mask = compute_mask(model, forget, retain, method="magnitude", ratio=0.8, progress=False)
    print(f"{n / 1e6:.0f}M parameters on {a.device}{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}")

    steps = {k: [] for k in ("full masked", "full dense", "lora masked", "lora dense")}
    peaks = {k: 0 for k in steps}
    for _ in range(a.repeats):
        for key in steps:
            lora, masked = key.startswith("lora"), key.endswith("masked")
            run = functools.partial(step_times, model, forget, retain, mask if masked else None, lora, a.steps,
                                    a.batch_size, use_cpu=not cuda, bf16=cuda)
            _, peak, times = timed(a.device, run)
            steps[key] += times
            peaks[key] = max(peaks[key], peak)
    med = {k: statistics.median(v) for k, v in steps.items()}
    tokens = 2 * a.batch_size * a.length  # a forget and a retain batch per step (padded length at most)

    examples = (tokenize_dataset(forget.select(range(16)), None, "")
                + tokenize_dataset(retain.select(range(16)), None, ""))
    passes = {"forward+backward": [], "attribution (sums on device)": [], "attribution (sums in host memory)": []}
    attribution_peaks = {k: 0 for k in passes}
    model.eval()
    for _ in range(a.repeats):
        for key in passes:
            if key == "forward+backward":
                fn = lambda: forward_backward_pass(model, examples, a.batch_size, a.device)
            else:
                host = "host" in key
                fn = lambda host=host: compute_mask(model, forget.select(range(16)), retain.select(range(16)), None,
                                                    method="wagle", ratio=0.8, batch_size=a.batch_size,
                                                    accumulate_device="cpu" if host else None, progress=False)
            seconds, peak, _ = timed(a.device, fn)
            passes[key].append(seconds)
            attribution_peaks[key] = max(attribution_peaks[key], peak)
    plain = statistics.median(passes["forward+backward"])
    result = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu", "parameters": n,
        "median_step_seconds": med, "tokens_per_second_dense_full": tokens / med["full dense"],
        "full_masked_over_dense": med["full masked"] / med["full dense"],
        "lora_masked_over_dense": med["lora masked"] / med["lora dense"],
        "step_peak_bytes": peaks, "attribution_seconds": passes, "attribution_peak_bytes": attribution_peaks,
        "attribution_over_forward_backward": {k: statistics.median(v) / plain for k, v in passes.items()
                                              if k != "forward+backward"},
        "settings": vars(a), "torch": torch.__version__,
    }
    if a.quantization:
        result["quantized"] = quantized_check(model.to(torch.bfloat16), a, forget, retain)
    for k, v in result.items():
        if k not in ("settings",):
            print(f"{k}: {v}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
