"""Masked against dense training steps, side by side in one run: the cost of enforcing the mask.

For full parameters and for LoRA, `WagleTrainer` runs `--steps` optimizer steps (GradDiff, AdamW, weight decay 0.1)
on the same model and pre-tokenised data, once with a precomputed mask (ratio 0.8: gradient hooks, on-mask weight
decay; for LoRA, masked factors) and once dense. The configurations alternate within each of `--repeats` rounds, and
the ratio of median per-step times is reported (the first step, with its warm-up, is excluded). Step times on a
shared CPU vary by several percent between runs, more than the mask costs, so the enforcement itself is also timed
alone on the same tensors: masking every gradient in place (what `WagleTrainer.training_step` does after backward)
plus an AdamW step with the on-mask weight decay hook, against a plain AdamW step, alternated `--repeats` x 3 times;
its overhead is reported as a fraction of the dense step. Also: the mask's size on disk in bits per weight.

    python benchmarks/step_cost.py                    # ~162M-parameter random-init Llama
    python benchmarks/step_cost.py --model smollm2    # the real SmolLM2-135M-Instruct (tied head, GQA)
    python benchmarks/step_cost.py --model smollm2 --perturbation   # each robust option's cost per step
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_wagle import WagleConfig, WagleTrainer, compute_mask

from _common import make_data, make_model


class StepTimes(TrainerCallback):
    """Wall time of each optimizer step, from the end of the one before (synchronising CUDA first when it is in use):
    a step's work starts before its `on_step_begin`, where the Trainer fetches its micro-batches and `WagleTrainer`
    takes a perturbation's extra forget pass (`get_batch_samples`)."""

    def __init__(self):
        self.times, self._last = [], None

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        self._sync()
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def step_times(model, forget, retain, mask, lora: bool, steps: int, batch_size: int, use_cpu: bool = True,
               bf16: bool = False, **options) -> list[float]:
    """Per-step seconds of a GradDiff run on a copy of `model` (the first step, with its warm-up, left out);
    `options`: more `WagleConfig` fields."""
    from peft import LoraConfig

    timer = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = WagleConfig(output_dir=out, objective="grad_diff", max_steps=steps,
                           per_device_train_batch_size=batch_size,
                           learning_rate=1e-5, weight_decay=0.1, use_cpu=use_cpu, bf16=bf16, report_to="none",
                           save_strategy="no", disable_tqdm=True, logging_strategy="no", mask_method=None,
                           **options)
        trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=forget, retain_dataset=retain,
                               mask=mask, callbacks=[timer],
                               peft_config=LoraConfig(r=16, target_modules="all-linear") if lora else None)
        trainer.train()
    return timer.times[1:]


def enforcement_seconds(model, mask, repeats: int) -> dict:
    """Median seconds per step of: AdamW (weight decay 0.1) on all parameters with random gradients, and the same
    with the mask enforced (gradients masked in place, then the step with on-mask decay)."""
    from hf_wagle.trainer import _move_weight_decay_on_mask

    params = [p for p in copy.deepcopy(model).parameters()]
    names = [n for n, _ in model.named_parameters()]
    masks = {p: mask[n] for p, n in zip(params, names) if not mask[n].all()}
    grads = [torch.randn_like(p) for p in params]
    plain = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    masked = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    _move_weight_decay_on_mask(masked, masks)
    times = {"plain": [], "masked": []}
    for _ in range(3 * repeats):
        for key, opt in (("plain", plain), ("masked", masked)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            t0 = time.perf_counter()
            if key == "masked":
                with torch.no_grad():
                    for p, m in masks.items():
                        p.grad.mul_(m)
            opt.step()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random", choices=("random", "smollm2"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--perturbation", action="store_true",
                    help="instead: masked steps plain and with each robust option, side by side")
    a = ap.parse_args()
    if a.model == "smollm2":
        from hf_wagle.real_model import load_smollm2

        model = load_smollm2()[0]
        a.vocab = model.config.vocab_size
    else:
        model = make_model(a.layers, a.vocab, a.hidden, a.intermediate)
    n = sum(p.numel() for p in model.parameters())
    forget, retain = make_data(32, a.length, a.vocab, 1), make_data(64, a.length, a.vocab, 2)
    mask = compute_mask(model, forget, retain, method="magnitude", ratio=0.8)
    with tempfile.TemporaryDirectory() as d:
        bits = mask.save(d).stat().st_size * 8 / mask.num_total
    print(f"model: {n / 1e6:.1f}M parameters, {torch.get_num_threads()} threads; mask file {bits:.3f} bits per weight")
    if a.perturbation:
        return perturbation_cost(a, model, forget, retain, mask)
    times = {k: [] for k in ("full masked", "full dense", "lora masked", "lora dense")}
    for _ in range(a.repeats):
        for key in times:
            lora, masked = key.startswith("lora"), key.endswith("masked")
            times[key] += step_times(model, forget, retain, mask if masked else None, lora, a.steps, a.batch_size)
            print(f"  {key}: median step {statistics.median(times[key]):.2f} s so far")
    med = {k: statistics.median(v) for k, v in times.items()}
    enforcement = enforcement_seconds(model, mask, a.repeats)
    extra = enforcement["masked"] - enforcement["plain"]
    result = {"parameters": n, "mask_bits_per_weight": bits, "step_seconds": times, "median_step_seconds": med,
              "full_masked_over_dense": med["full masked"] / med["full dense"],
              "lora_masked_over_dense": med["lora masked"] / med["lora dense"],
              "optimizer_step_seconds": enforcement, "enforcement_seconds_per_step": extra,
              "enforcement_over_dense_step": extra / med["full dense"],
              "settings": vars(a), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine()}
    print(f"masked / dense step time: full {result['full_masked_over_dense']:.3f}, "
          f"LoRA {result['lora_masked_over_dense']:.3f}")
    print(f"enforcement alone: {extra:.3f} s per step (AdamW step {enforcement['plain']:.3f} s plain, "
          f"{enforcement['masked']:.3f} s masked) = {result['enforcement_over_dense_step']:.3f} of a dense full step")
    out = Path(a.out or Path(__file__).with_name("results") / f"step_cost_{a.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


ROBUST = {"plain": {}, "sam": {"forget_perturbation": "sam"}, "gnp": {"forget_perturbation": "gnp"},
          "smooth": {"forget_perturbation": "smooth"}, "disruption": {"disruption_masking": True}}


def perturbation_cost(a, model, forget, retain, mask) -> None:
    """Masked GradDiff steps without and with each robust option (`forget_perturbation`, `disruption_masking`),
    alternated within each round; the ratios of median step times to the plain masked step."""
    times = {(lora, kind): [] for lora in (False, True) for kind in ROBUST}
    for _ in range(a.repeats):
        for lora, kind in times:
            times[(lora, kind)] += step_times(model, forget, retain, mask, lora, a.steps, a.batch_size,
                                              **ROBUST[kind])
    med = {f"{'lora' if lora else 'full'} {kind}": statistics.median(v) for (lora, kind), v in times.items()}
    ratios = {k: v / med[f"{k.split()[0]} plain"] for k, v in med.items()}
    print("step time over the plain masked step: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    out = Path(a.out or Path(__file__).with_name("results") / f"perturbation_cost_{a.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"median_step_seconds": med, "over_plain": ratios, "settings": vars(a),
                               "threads": torch.get_num_threads(), "torch": torch.__version__}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
