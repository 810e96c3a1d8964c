"""Progress lines, reward-variance statistics and the loss / reward / learning-rate plot."""
from __future__ import annotations

import json
from pathlib import Path

PROGRESS_PREFIX = "finr1-train "


def progress_line(event: str, **fields) -> str:
    """One machine-readable log line (the launcher streams every line to the caller's logger)."""
    return PROGRESS_PREFIX + json.dumps({"event": event, **fields}, default=str)


def reward_stats(log_history: list[dict]) -> dict:
    """How many logged GRPO steps had zero reward spread (zero spread = zero gradient)."""
    stds = [float(e["reward_std"]) for e in log_history if "reward_std" in e]
    means = [float(e["reward"]) for e in log_history if "reward" in e]
    return {
        "reward_steps": len(stds),
        "zero_reward_std_steps": sum(1 for s in stds if s == 0.0),
        "max_reward_std": max(stds) if stds else None,
        "mean_reward": (sum(means) / len(means)) if means else None,
    }


CURVES = (("loss", "loss"), ("reward", "reward"), ("learning_rate", "learning rate"))


def plot_curves(log_history: list[dict], png_path: str | Path, title: str = "") -> str | None:
    """Loss, reward and learning rate against the step, one panel each; None when nothing was logged."""
    series = {}
    for key, label in CURVES:
        pts = [(e["step"], float(e[key])) for e in log_history if key in e and "step" in e and e[key] is not None]
        if pts:
            series[label] = pts
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (label, pts) in zip(axes[0], series.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return str(png_path)
