"""Cost of attribution on a random-init Llama of >= 150M parameters (CPU is enough).

Measures, in one run:

1. Selection memory. Peak extra resident memory (Linux `VmHWM`, reset through `/proc/self/clear_refs` after
   `malloc_trim`) while `hf_wagle.masking.select` picks the top `ratio` of fp32 scores that are already in
   memory (as for the gradient methods), and while `compute_mask(method="magnitude")` runs end to end (scores
   made chunk by chunk), each divided by the parameters' bytes.
2. Time. `compute_mask(method="wagle")` over forget + retain against one plain forward+backward pass
   (`model(**batch).loss.backward()`) over the same examples at the same batch size, alternated `--repeats` times;
   the ratio of medians is reported.

    python benchmarks/attribution_cost.py            # ~162M parameters, about 5 minutes on 2 CPU cores
    python benchmarks/attribution_cost.py --layers 2 --vocab 8000 --examples 8   # a quick smoke run
    python benchmarks/attribution_cost.py --model smollm2   # the real SmolLM2-135M-Instruct (tied head, GQA)

Writes the numbers as JSON to `--out` (default `benchmarks/results/attribution_cost.json`) and prints them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from hf_wagle import compute_mask
from hf_wagle.data import collate
from hf_wagle.masking import StoredScores, select

from _common import make_data, make_model, peak_extra_bytes


def forward_backward_pass(model, examples: list[dict], batch_size: int, device=None) -> None:
    """One plain training-style pass: forward, backward, gradients dropped."""
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device or "cpu") for k, v in collate(examples[i:i + batch_size], 0).items()}
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random", choices=("random", "smollm2"),
                    help="random: a random-init Llama of the size below; smollm2: the real pretrained model")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--examples", type=int, default=16, help="forget examples; as many retain examples")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "attribution_cost.json"))
    a = ap.parse_args()

    if a.model == "smollm2":
        from hf_wagle.real_model import load_smollm2

        model = load_smollm2()[0].eval()
        c = model.config
        a.layers, a.vocab, a.hidden, a.intermediate = (c.num_hidden_layers, c.vocab_size, c.hidden_size,
                                                       c.intermediate_size)
    else:
        model = make_model(a.layers, a.vocab, a.hidden, a.intermediate)
    n_params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters, {param_bytes / 2**20:.0f} MiB (fp32), {torch.get_num_threads()} "
          "threads")

    # 1. selection memory ---------------------------------------------------------------------------------------
    with torch.no_grad():
        scores = [p.detach().float().abs() for p in model.parameters()]  # fp32 scores held in memory
    stored = [StoredScores(s) for s in scores]
    t0 = time.perf_counter()
    packed, select_extra = peak_extra_bytes(lambda s=stored: select(s, a.ratio))
    select_s = time.perf_counter() - t0
    del stored, scores, packed
    mask, magnitude_extra = peak_extra_bytes(lambda: compute_mask(model, None, None, method="magnitude",
                                                                  ratio=a.ratio))
    assert mask.num_selected == round(a.ratio * n_params)
    del mask
    print(f"selection over stored fp32 scores: {select_extra / 2**20:.1f} MiB extra = "
          f"{select_extra / param_bytes:.3f} x parameter bytes ({select_s:.1f} s)")
    print(f"compute_mask(magnitude) end to end: {magnitude_extra / 2**20:.1f} MiB extra = "
          f"{magnitude_extra / param_bytes:.3f} x parameter bytes")

    # 2. attribution time vs one forward+backward pass -----------------------------------------------------------
    forget, retain = make_data(a.examples, a.length, a.vocab, 1), make_data(a.examples, a.length, a.vocab, 2)
    from hf_wagle.data import tokenize_dataset

    examples = tokenize_dataset(forget, None, "") + tokenize_dataset(retain, None, "")
    forward_backward_pass(model, examples[: a.batch_size], a.batch_size)  # warm-up
    plain, attrib = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        forward_backward_pass(model, examples, a.batch_size)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        compute_mask(model, forget, retain, None, method="wagle", ratio=a.ratio, batch_size=a.batch_size,
                     progress=False)
        attrib.append(time.perf_counter() - t0)
    ratio = statistics.median(attrib) / statistics.median(plain)
    print(f"forward+backward over {len(examples)} examples: {statistics.median(plain):.1f} s; "
          f"compute_mask(wagle): {statistics.median(attrib):.1f} s; ratio {ratio:.2f}")

    result = {
        "parameters": n_params, "parameter_bytes": param_bytes, "ratio": a.ratio,
        "selection_extra_bytes": select_extra, "selection_extra_over_param_bytes": select_extra / param_bytes,
        "selection_seconds": select_s,
        "magnitude_mask_extra_bytes": magnitude_extra,
        "magnitude_mask_extra_over_param_bytes": magnitude_extra / param_bytes,
        "forward_backward_seconds": plain, "attribution_seconds": attrib, "attribution_over_forward_backward": ratio,
        "examples": len(examples), "length": a.length, "batch_size": a.batch_size,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "config": {k: getattr(a, k) for k in ("model", "layers", "vocab", "hidden", "intermediate")},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
