"""PNG plot of accuracy and loss per round."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _series(rounds: List[Dict[str, Any]], key: str) -> List[float]:
    """One figure per round; NaN (a gap in the line) where a round has none."""
    return [float("nan") if r.get(key) is None else float(r[key]) for r in rounds]


def plot_rounds(rounds: List[Dict[str, Any]], path: str, baseline: Optional[float] = None, title: str = "") -> None:
    """Accuracy (left axis) and loss (right axis) per round; the centralised accuracy as a dashed line."""
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(xs, _series(rounds, "accuracy"), "o-", color="tab:blue", label="federated accuracy")
    if baseline is not None:
        ax.axhline(baseline, color="tab:blue", linestyle="--", alpha=0.6, label=f"centralised accuracy {baseline:.3f}")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (held-out set)", color="tab:blue")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(xs, _series(rounds, "loss"), "s-", color="tab:red", label="loss")
    ax2.set_ylabel("loss", color="tab:red")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
    ax.set_title(title or "fedmq demo")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_gateways(report: Dict[str, Any], path: str, title: str) -> None:
    """Per task: the federated, personalised, central and local-only model of every home on its held-out
    days, side by side."""
    tasks = list(report["comparison"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), dpi=110, squeeze=False)
    for ax, (task, comp) in zip(axes[0], tasks):
        homes = list(comp["homes"])
        labels = [f"{h}\n{comp['homes'][h]['train_samples']} samples" for h in homes] + ["overall"]
        width = 0.2
        for i, (kind, color) in enumerate(
            (("federated", "tab:blue"), ("personalised", "tab:green"), ("central", "tab:gray"), ("local", "tab:orange"))
        ):
            values = [comp["homes"][h][kind] if comp["homes"][h][kind] is not None else 0.0 for h in homes]
            values.append(comp["overall"][kind])
            ax.bar([j + (i - 1.5) * width for j in range(len(labels))], values, width, label=kind, color=color)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7)
        higher = comp["metric"] == "accuracy"
        ax.set_ylabel(comp["metric"].replace("_", " ") + (" (higher is better)" if higher else " (lower is better)"))
        if higher:
            ax.set_ylim(0, 1)
        ax.set_title(f"{task}: {report['held_out_days']:g} held-out days per home")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
