"""Peak memory of unlearning objectives, side by side on one random-init Llama (CPU, fp32).

Each configuration runs in its own process: build the model and pre-tokenised random data, compute a magnitude
mask (the same for all), then measure the peak resident memory above the starting size while
`WagleTrainer.train()` runs `--steps` steps (NPO's reference pass included). Ratios are to GradDiff's peak.

    python benchmarks/objective_memory.py            # writes benchmarks/results/objective_memory.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    "grad_diff": dict(objective="grad_diff"),
    "npo": dict(objective="npo"),
    "simnpo": dict(objective="simnpo"),
    "grad_diff+kl (full: frozen copy)": dict(objective="grad_diff", retain_loss="kl"),
    "npo+lora": dict(objective="npo", lora=True),
    "grad_diff+kl+lora (adapter disabled)": dict(objective="grad_diff", retain_loss="kl", lora=True),
}


def child(name: str, a) -> None:
    import tempfile

    import torch
    from peft import LoraConfig

    from hf_wagle import WagleConfig, WagleTrainer, compute_mask

    from _common import make_data, make_model, peak_extra_bytes

    torch.set_num_threads(2)
    cfg = dict(CONFIGS[name])
    lora = cfg.pop("lora", False)
    model = make_model(a.layers, a.vocab, a.hidden, a.intermediate)
    forget, retain = make_data(64, a.length, a.vocab, 1), make_data(256, a.length, a.vocab, 2)
    mask = compute_mask(model, forget, retain, method="magnitude", ratio=0.8)
    with tempfile.TemporaryDirectory() as out:
        args = WagleConfig(output_dir=out, max_steps=a.steps, per_device_train_batch_size=4, learning_rate=1e-5,
                           weight_decay=0.1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                           logging_strategy="no", **cfg)
        trainer = WagleTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain, mask=mask,
                               peft_config=LoraConfig(r=16, target_modules="all-linear") if lora else None)
        _, peak = peak_extra_bytes(trainer.train)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"config": name, "peak_extra_bytes": peak, "param_bytes": params}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1376)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "objective_memory.json"))
    a = ap.parse_args()
    if a.child:
        return child(a.child, a)
    peaks: dict[str, list[int]] = {name: [] for name in CONFIGS}
    params = 0
    for _ in range(a.repeats):
        for name in CONFIGS:  # alternate configurations within each repeat
            cmd = [sys.executable, __file__, "--child", name] + [
                f"--{k}={getattr(a, k)}" for k in ("layers", "vocab", "hidden", "intermediate", "length", "steps")]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(line)
            peaks[name].append(result["peak_extra_bytes"])
            params = result["param_bytes"]
    base = statistics.median(peaks["grad_diff"])
    rows = {name: {"peak_extra_MiB": statistics.median(v) / 2**20, "ratio_to_grad_diff": statistics.median(v) / base}
            for name, v in peaks.items()}
    report = {"param_MiB": params / 2**20, "settings": {k: v for k, v in vars(a).items() if k not in ("child",)},
              "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"model parameters: {params / 2**20:.0f} MiB (fp32)")
    for name, r in rows.items():
        print(f"{name:40s} peak +{r['peak_extra_MiB']:8.1f} MiB   x{r['ratio_to_grad_diff']:.3f} of grad_diff")


if __name__ == "__main__":
    main()
