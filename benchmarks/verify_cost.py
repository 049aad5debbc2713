"""What verifying an adapter through PEFT's own code costs, side by side with the plain `B @ A` product it replaced.

On the real SmolLM2-135M-Instruct, a LoRA adapter (r=16, every linear layer, random non-zero B) is saved with an
all-ones mask; then, alternated `--repeats` times in one run: `hf_wagle.verify.verify` (PEFT reads the config,
injects the adapter into a meta-device skeleton and forms each module's change with `get_delta_weight`), and the
plain product `B @ A` of every saved pair (no config read, no scaling: what verify did before it counted PEFT's
settings). Reported: the median of each and their ratio.

    python benchmarks/verify_cost.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "verify_cost.json"))
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from hf_wagle import WeightMask
    from hf_wagle.modeling import base_named_parameters
    from hf_wagle.real_model import load_smollm2
    from hf_wagle.verify import verify

    model, _ = load_smollm2()
    mask = WeightMask({n: torch.ones(p.shape, dtype=torch.bool) for n, p in base_named_parameters(model)})
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    torch.manual_seed(0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    with tempfile.TemporaryDirectory() as folder:
        lora.save_pretrained(folder)
        mask.save(folder)

        def through_peft():
            report = verify(folder)
            assert report["confined"] and report["tensors_checked"] == 210

        def plain_product():
            weights = load_file(Path(folder) / "adapter_model.safetensors")
            for key in [k for k in weights if k.endswith("lora_A.weight")]:
                delta = weights[key.replace("lora_A", "lora_B")].float() @ weights[key].float()
                assert bool(torch.isfinite(delta).all())

        times = {"verify_through_peft": [], "plain_b_at_a": []}
        for _ in range(args.repeats):
            for label, fn in (("verify_through_peft", through_peft), ("plain_b_at_a", plain_product)):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": "SmolLM2-135M-Instruct", "adapter": "LoRA r=16, 210 linear modules", "repeats": args.repeats,
              "median_seconds": median, "ratio": median["verify_through_peft"] / median["plain_b_at_a"],
              "machine": {"processor": platform.processor(), "threads": torch.get_num_threads()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"verify through PEFT {median['verify_through_peft']:.3f} s, plain B @ A {median['plain_b_at_a']:.3f} s "
          f"(x{result['ratio']:.1f}), median of {args.repeats}; wrote {args.out}")


if __name__ == "__main__":
    main()
