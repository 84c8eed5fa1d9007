"""Accuracy against cost: what a method gives up (validation accuracy) for what it saves
(bytes on the wire, time, memory per rank), for runs of equal length.

Every figure comes from result.json (docs/EXPERIMENT_GUIDE.md, "Accuracy against cost"):

- top1_pct: the last epoch's validation top-1 (the accuracy the run ends with).
- top1_se_pct: its binomial standard error for the validation set's N images,
  100·sqrt(p(1−p)/N): how much a second draw of N images would move it.
- MB_sent: what rank 0 sent in the whole run (every step's bytes_sent summed), so a
  method that sends every H steps is charged for what it really sent.
- time_s: the training time (summary total_time_s); step_ms the steady-state step.
- held_MB: parameters + gradients + optimizer state one rank holds (the rank that holds the
  most), counted from the tensors; peak_MB the highest measured peak over the training
  steps (result["memory"] step_peak_bytes; frames.memory_frame).

A gap in accuracy between two methods is called real only where it exceeds both the
repeats' spread and twice the binomial error: else the sentence says it is not told apart.
Names no method; imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import frames
from .frames import memory_frame
from .selection import method

MB = 1e6


def final_accuracy(result: dict) -> tuple[float | None, int | None]:
    """(last epoch's val top-1 in %, the validation images it was measured on)."""
    epochs = [e for e in result.get("epochs", []) if e.get("val_top1") is not None]
    if not epochs:
        return None, None
    return epochs[-1]["val_top1"], epochs[-1].get("val_images")


def binomial_se_pct(top1_pct: float | None, images: int | None) -> float | None:
    """The standard error of an accuracy measured on `images` images, in points."""
    if top1_pct is None or not images:
        return None
    return frames.binomial_se_pct(top1_pct, images)


def memory_row(result: dict) -> dict:
    """The held state of the rank that holds the most, and the highest peak over the training
    steps, in MB (frames.memory_frame's held_MB and step_peak_MB; empty when not recorded)."""
    table = memory_frame([result])
    if table.empty:
        return {"held_MB": None, "peak_MB": None}
    return {"held_MB": table.held_MB.iloc[0], "peak_MB": table.step_peak_MB.iloc[0]}


def memory_table(results: list[dict], baseline: str) -> pd.DataFrame:
    """The report's memory table (frames.memory_frame: MB per rank, the rank that holds the
    most), one row per method over every setup (seeds, lengths), with `vs_baseline`: held_MB
    against the baseline's."""
    table = memory_frame(results)
    # what a rank holds does not depend on the seed or the run's length: one row per method
    table = table.groupby(["method", "world_size"], as_index=False).agg(
        {**{c: "median" for c in table.columns if c.endswith("_MB")}, "peak_source": "first"})
    base = table.loc[table.method == baseline, "held_MB"]
    table["vs_baseline"] = table.held_MB / base.iloc[0] if len(base) else float("nan")
    return table.sort_values("held_MB", ignore_index=True)


def tradeoff_runs(results: list[dict]) -> pd.DataFrame:
    """One row per run: accuracy, its binomial error, bytes, time and memory."""
    rows = []
    for r in results:
        top1, images = final_accuracy(r)
        summary = r.get("summary") or {}
        steps = r.get("steps") or []
        rows.append({"method": method(r), "name": r.get("name"), "epochs": len(r.get("epochs", [])),
                     "steps": len(steps), "top1_pct": top1, "val_images": images,
                     "top1_se_pct": binomial_se_pct(top1, images),
                     "MB_sent": sum(s.get("bytes_sent", 0) for s in steps) / MB,
                     "time_s": summary.get("total_time_s"),
                     "step_ms": 1e3 * summary["step_time_median_s"] if summary.get("step_time_median_s") else None,
                     **memory_row(r)})
    return pd.DataFrame(rows)


def tradeoff_table(results: list[dict]) -> pd.DataFrame:
    """One row per method: the median over its repeats of every figure, `repeats`, and the
    spread of its accuracy (top1_low … top1_high, the lowest and highest repeat)."""
    runs = tradeoff_runs(results)
    if runs.empty:
        return runs
    figures = ["top1_pct", "top1_se_pct", "MB_sent", "time_s", "step_ms", "held_MB", "peak_MB", "steps", "epochs"]
    runs = runs.astype({column: float for column in figures})  # an absent figure: NaN, not a dropped column
    grouped = runs.groupby("method", sort=False)
    table = grouped[figures].median(numeric_only=True)
    table["top1_low"] = grouped["top1_pct"].min()
    table["top1_high"] = grouped["top1_pct"].max()
    table["repeats"] = grouped.size()
    return table.reset_index()


def images_seen(result: dict) -> int:
    """Training images the run consumed: its global batch × its optimizer steps."""
    return (result.get("global_batch") or 0) * len(result.get("steps") or [])


def equal_length(results: list[dict], tolerance: float = 0.02) -> bool:
    """Whether every run trained as long: the same whole epochs (nothing stopped early by
    max_steps) on the same images within `tolerance` (a dedicated server's 3 workers split a
    global batch of 64 as 3 × 21 = 63): only then do their accuracies compare."""
    lengths = {(len(r.get("epochs", [])), bool((r.get("config") or {}).get("max_steps"))) for r in results}
    if len(lengths) != 1 or next(iter(lengths))[1]:
        return False
    images = [images_seen(r) for r in results]
    return min(images) >= (1 - tolerance) * max(images)


def accuracy_lines(table: pd.DataFrame, baseline: str) -> list[str]:
    """One sentence per method: its accuracy against the baseline's, called a gap only when
    it exceeds both spreads and twice the binomial error."""
    if table.empty or baseline not in set(table.method):
        return [f"no {baseline} run among these: no accuracy is compared"]
    base = table[table.method == baseline].iloc[0]
    lines = []
    for row in table.itertuples():
        if row.method == baseline or math.isnan(row.top1_pct):
            continue
        gap = row.top1_pct - base.top1_pct
        # twice the standard error of the difference of two independent accuracies, or the
        # repeats' own ranges (different seeds), whichever is wider
        errors = [se for se in (row.top1_se_pct, base.top1_se_pct) if not math.isnan(se)]
        noise = max([2 * math.hypot(*errors)] + [row.top1_high - row.top1_low, base.top1_high - base.top1_low])
        verdict = (f"{'above' if gap > 0 else 'below'} {baseline} by {abs(gap):.1f} points, beyond the noise ({noise:.1f})"
                   if abs(gap) > noise else f"not told apart from {baseline}: {gap:+.1f} points within the noise of {noise:.1f}")
        bytes_ratio = row.MB_sent / base.MB_sent if base.MB_sent else float("nan")
        lines.append(f"{row.method}: top-1 {row.top1_pct:.1f} % ({verdict}), sending {bytes_ratio:.2f} × {baseline}'s "
                     f"bytes in {row.time_s / base.time_s:.2f} × its time")
    return lines


def accuracy_vs_cost(table: pd.DataFrame, baseline: str | None = None):
    """Two panels: top-1 against MB sent, and against training time; one point per method
    (the median of its repeats) in the method's colour, the vertical bar its accuracy
    spread over repeats widened by ± the binomial error."""
    import matplotlib.pyplot as plt

    from .plots import assign_colors

    colors = assign_colors(table.method)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, column, label in ((axes[0], "MB_sent", "MB sent by rank 0 in the whole run"),
                              (axes[1], "time_s", "training time (s)")):
        for row in table.itertuples():
            se = row.top1_se_pct if pd.notna(row.top1_se_pct) else 0.0
            low, high = row.top1_low - se, row.top1_high + se
            ax.errorbar([getattr(row, column)], [row.top1_pct], yerr=[[row.top1_pct - low], [high - row.top1_pct]],
                        fmt="o", color=colors[row.method], capsize=3, label=row.method)
            ax.annotate(row.method, (getattr(row, column), row.top1_pct), textcoords="offset points", xytext=(5, 3),
                        fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 (%)")
    runs = int(table.repeats.max()) if len(table) else 0
    fig.suptitle(f"Accuracy against cost: median of {runs} repeat(s); bars: the repeats' range ± binomial error")
    fig.tight_layout()
    return fig


def latest_sweep(prefix: str = "05b-") -> list[dict]:
    """The runs of the newest sweep folder results/runs/<prefix>…/ (its own runs, not the
    sub-folders of later sections), finished ones only; [] when there is none."""
    from labkit.config import results_root

    from .selection import load_results

    folders = sorted((results_root() / "runs").glob(f"{prefix}*"))
    if not folders:
        return []
    newest = folders[-1]
    return [r for r in load_results([newest], status="ok") if Path(r["path"]).parent == newest]


def tradeoff_report(results: list[dict], baseline: str) -> str:
    """The report's section on accuracy against cost: the table and its sentences."""
    if not results:
        return "Accuracy against cost: no runs of notebook 05b yet (run it to fill this section).\n"
    table = tradeoff_table(results)
    columns = ["method", "repeats", "epochs", "top1_pct", "top1_low", "top1_high", "top1_se_pct", "MB_sent", "time_s",
               "held_MB"]
    same = ("Every run saw the same images." if equal_length(results)
            else "Runs of different length: their accuracies are not compared.")
    return "\n".join(["Accuracy against cost (notebook 05b's interleaved sweep; top-1 of the last epoch, its range",
                      "over repeats and binomial error; MB sent over the whole run; held MB per rank):", "",
                      table[columns].to_string(index=False, float_format=lambda v: f"{v:,.2f}"), "", same,
                      *(accuracy_lines(table, baseline) if equal_length(results) else [])]) + "\n"
