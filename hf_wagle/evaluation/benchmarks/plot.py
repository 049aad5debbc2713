"""The forget-vs-utility plot behind `hf-wagle evaluate`."""

from __future__ import annotations

import math


def plot_forget_vs_utility(runs: dict, path: str, title: str = "") -> None:
    """Scatter of each run's summary (`{"before": result, "after": result}`, each a `BenchmarkResult` or its
    `to_dict()`), with an arrow from before to after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    points = {}
    for name, result in runs.items():
        s = result["summary"]
        y = s["utility"] if s["utility"] is not None else math.nan
        points[name] = (s["forget"], y)
        ax.scatter([s["forget"]], [0 if math.isnan(y) else y], s=60, label=name, zorder=3)
    if "before" in points and "after" in points:
        (x0, y0), (x1, y1) = points["before"], points["after"]
        if not (math.isnan(y0) or math.isnan(y1)):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "gray"})
    first = next(iter(runs.values()))["summary"]
    if first["forget_label"] == "forget quality" and all(p[0] > 0 for p in points.values()):
        ax.set_xscale("log")
    forget_better = "higher" if first["forget_label"] == "forget quality" else "lower"
    ax.set_xlabel(f"{first['forget_label']} ({forget_better} = forgets better)")
    ax.set_ylabel(first["utility_label"] + (" (higher = keeps more)" if first["utility"] is not None
                                            else " (not measured)"))
    ax.set_title(f"{title} forget vs utility".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
