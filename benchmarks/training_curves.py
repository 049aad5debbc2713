"""Forget and retain curves over training, and the compare-masks trade-off with its 95% intervals, on the offline
world model: the figures the documentation shows next to the tables, made by `compare_masks` itself.

    python -m benchmarks.training_curves            # under a minute on 2 CPU cores once the world model is cached

GradDiff, full parameters, mask ratio 0.5 (dense, random, wagle), 5 seeds of up to 12 steps at lr 2e-3, every step
scored on the 20 forget facts and on 20 retain facts the retain term never trains on (the retain term trains on the
other 160), each run until its matched point (forget probability at half its start). Writes
`benchmarks/results/world_compare_masks.{json,png}` (the trade-off, mean utility at the target with its 95% interval)
and `benchmarks/results/world_training_curves.png` (forget and held-out retain probability against the step, mean
over seeds with the range).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hf_wagle.experiments.compare import compare_masks, format_comparison, plot_comparison
from hf_wagle.world import make_world, pretrained_world_model

OUT = Path(__file__).resolve().parent / "results"


def plot_curves(result: dict, path: Path) -> Path:
    """Two panels against the optimizer step: forget probability and held-out retain probability, one line per mask
    (mean over seeds) with the band from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for spec in result["settings"]["methods"]:
        curves = [r["curve"] for r in result["runs"] if r["method"] == spec]
        n = min(len(c) for c in curves)
        steps = [curves[0][i]["step"] for i in range(n)]
        for ax, key in zip(axes, ("forget_probability", "heldout_probability")):
            values = [[c[i][key] for c in curves] for i in range(n)]
            line, = ax.plot(steps, [sum(v) / len(v) for v in values], marker=".", label=spec)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                            alpha=0.2)
    axes[0].set(xlabel="optimizer step", ylabel="answer probability", title="forget facts (lower = forgotten)")
    axes[1].set(xlabel="optimizer step", ylabel="answer probability", title="held-out retain facts (never trained)")
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=str(OUT))
    a = parser.parse_args(argv)
    world = make_world()
    retain = world["retain"].shuffle(seed=0)
    heldout, trained_on = retain.select(range(20)), retain.select(range(20, len(retain)))
    _, tokenizer, path = pretrained_world_model()
    result = compare_masks(str(path), tokenizer, world["forget"], trained_on, methods="dense,random,wagle",
                           seeds=a.seeds, steps=a.steps, eval_every=1, heldout=heldout, progress=None,
                           training={"mask_ratio": 0.5, "objective": "grad_diff", "learning_rate": 2e-3,
                                     "per_device_train_batch_size": 8})
    result["command"] = shlex.join(["python", "-m", "benchmarks.training_curves", *sys.argv[1:]])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world_compare_masks.json").write_text(json.dumps(result, indent=2))
    plot_comparison(result, out / "world_compare_masks.png")
    plot_curves(result, out / "world_training_curves.png")
    print(format_comparison(result))
    print(f"wrote {out / 'world_compare_masks.json'}, world_compare_masks.png and world_training_curves.png")
    return result


if __name__ == "__main__":
    main()
