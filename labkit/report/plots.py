"""The comparison plots (the original five, plus scaling): seaborn figures that render
inline in a notebook and save as PNG files. Each function takes the frames of
analysis.py and returns its Figure; `save_all` writes them to results/plots/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .analysis import epochs_frame, runs_frame, steps_frame


def _bar(runs: pd.DataFrame, column: str, title: str, label: str):
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * runs["method"].nunique()), 3.8))
    runs = runs.assign(bar=runs["method"])
    if runs["steps"].nunique() > 1:  # runs of different lengths: say so under each bar
        runs["bar"] = runs["method"] + "\n" + runs["steps"].astype(str) + " steps"
    order = runs.groupby("bar")[column].mean().sort_values(ascending=False).index
    sns.barplot(data=runs, x="bar", y=column, order=order, errorbar="sd", ax=ax)  # error bars: repeats
    ax.set(title=title, xlabel="method", ylabel=label)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def throughput(runs):
    return _bar(runs, "throughput_img_s", "Training throughput (higher is better)", "images / s")


def total_time(runs):
    return _bar(runs, "total_time_s", "Total training time (lower is better)", "seconds")


def communication_overhead(runs):
    return _bar(runs, "sync_share_pct", "Communication overhead: share of the step blocked in sync",
                "% of step time")


def loss_convergence(steps: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    smooth = steps.assign(loss=steps.groupby("name")["loss"].transform(lambda s: s.rolling(5, min_periods=1).mean()))
    sns.lineplot(data=smooth, x="step", y="loss", hue="method", errorbar=None, ax=ax)
    ax.set(title="Training loss (rank 0, 5-step moving average)", xlabel="optimizer step", ylabel="cross-entropy")
    fig.tight_layout()
    return fig


def validation_accuracy(epochs: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.lineplot(data=epochs, x="epoch", y="val_top1", hue="method", marker="o", errorbar="sd", ax=ax)
    ax.set(title="Validation top-1 accuracy per epoch", xlabel="epoch", ylabel="top-1 (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def scaling_efficiency(runs: pd.DataFrame):
    """Throughput per world size against the ideal line (n × the 1-rank throughput)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    mean = runs.groupby(["method", "world_size"], as_index=False)["throughput_img_s"].mean()
    sns.lineplot(data=mean, x="world_size", y="throughput_img_s", hue="method", marker="o", ax=ax)
    one = mean.loc[mean.world_size == 1, "throughput_img_s"]
    if len(one):
        sizes = sorted(mean.world_size.unique())
        ax.plot(sizes, [one.max() * n for n in sizes], "k--", label="ideal (linear)")
        ax.legend()
    ax.set(title="Scaling with the number of ranks", xlabel="ranks", ylabel="images / s")
    fig.tight_layout()
    return fig


def timeline(result: dict):
    """Each rank's phases over a window of steps, Gantt-style (as Horovod's timeline):
    overlap shows as sync bars that shrink, a straggler as a rank whose bars run long."""
    events = pd.DataFrame(result.get("timeline", []))
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * max(1, events["rank"].nunique() if len(events) else 1)))
    if len(events):
        colors = dict(zip(["data_s", "compute_s", "sync_s", "optimizer_s"], sns.color_palette("Set2", 4)))
        origin = events.start.min()
        for (rank, phase), group in events.groupby(["rank", "phase"]):
            spans = [(1e3 * (s - origin), 1e3 * (e - s)) for s, e in zip(group.start, group.end)]
            ax.broken_barh(spans, (rank - 0.4, 0.8), color=colors[phase], label=phase)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), [k.removesuffix("_s") for k in unique], ncol=4, loc="upper right", fontsize=8)
        ax.set_yticks(sorted(events["rank"].unique()))
    ax.set(title=f"Timeline of {result['name']}: each rank's phases per step", xlabel="time (ms)", ylabel="rank")
    fig.tight_layout()
    return fig


def all_figures(results: list[dict]) -> dict:
    runs, epochs, steps = runs_frame(results), epochs_frame(results), steps_frame(results)
    figures = {"throughput": throughput(runs), "total_time": total_time(runs),
               "loss_convergence": loss_convergence(steps), "communication_overhead": communication_overhead(runs)}
    if "val_top1" in epochs:
        figures["validation_accuracy"] = validation_accuracy(epochs)
    if runs.world_size.nunique() > 1:
        figures["scaling_efficiency"] = scaling_efficiency(runs)
    return figures


def save_all(figures: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1], dpi=120)
    return paths
