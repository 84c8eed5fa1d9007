"""The comparison figures. Each function takes frames (frames.py) or results and
returns a matplotlib Figure (inline in a notebook; `save_all` writes PNGs).

Habits every figure keeps (docs/EXPERIMENT_GUIDE.md, "The figures"):
- one colour per method in every figure of every notebook, fixed by the method's name
  (`color_of`: the registry gives each method its own), never by the order of drawing;
- every bar carries its value as text, so a tiny bar (0.3 MB next to 60 MB) still reads;
- log axes where values span orders of magnitude;
- a figure that needs a field the results do not hold says so instead of drawing zero.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .costmodel import ops_per_step
from .frames import (binomial_se_pct, comparison_table, epochs_frame, median_low, runs_frame, scaling_frame,
                     steps_frame)
from .selection import comparison_setup, is_short, method, setup_names

# seaborn's "colorblind" palette (10 colours, after Okabe & Ito), as hex so seaborn is not needed:
# operations (bandwidth) and anything that is not a method take their colours from it by order.
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133",
           "#56b4e9"]
# One colour per registered method, in the registry's order (labkit/strategies REGISTRY: a new
# method appends its line, so no method's colour moves): the colour-blind palette above without its
# pale yellow (unreadable as a line on white), then Paul Tol's dark and muted colours. 16 for 14 methods.
METHOD_PALETTE = ["#949494", "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#56b4e9",
                  "#332288", "#882255", "#117733", "#44aa99", "#999933", "#aa4499", "#fbafe4", "#661100"]
# A method outside the registry (a student's file) draws from colours no registered method has.
OTHER_PALETTE = ["#000000", "#6699cc", "#ddcc77", "#88ccee", "#cc6677", "#997700"]

# Phases of a step in the timelines (not methods: their own neutral colours).
PHASE_COLORS = {"data_s": "#bbbbbb", "compute_s": "#4477aa", "optimizer_s": "#99ddff", "sync_s": "#ee6677"}
COMPUTE_LANE = ("data_s", "compute_s", "optimizer_s")  # every other phase is communication


def base_method(label: str) -> str:
    """The registered method a label names: its first word ("bucketed fp16" → bucketed, "ssp (s=2)"
    → ssp, "localsgd H=4" → localsgd)."""
    return label.split()[0].split("(")[0] if label.strip() else label


def _shade(hex_color: str, amount: float) -> str:
    """`amount` > 0 mixes towards white, < 0 towards black."""
    rgb = np.array(matplotlib.colors.to_rgb(hex_color))
    mixed = rgb + (1 - rgb) * amount if amount > 0 else rgb * (1 + amount)
    return matplotlib.colors.to_hex(mixed)


VARIANT_SHADES = (-0.4, 0.4, -0.6, 0.6)  # a variant of a method: its hue, darker or lighter


def color_of(method: str) -> str:
    """The method's colour, fixed by its name alone (never by the order figures meet methods):
    a registered method has its own colour (METHOD_PALETTE, in registry order); a variant of it
    ("bucketed fp16", "ddp accumulate=4", "ssp (s=2)") keeps the method's hue, darker or lighter
    by crc32 of the label (two variants of one method may share a shade: 1 in 4); any other name
    takes one of OTHER_PALETTE by crc32."""
    from labkit.strategies import REGISTRY  # names and their order only: imports no method, no torch

    names, base = list(REGISTRY), base_method(method)
    if base in names:
        color = METHOD_PALETTE[names.index(base) % len(METHOD_PALETTE)]
        if method.strip() == base:
            return color
        return _shade(color, VARIANT_SHADES[zlib.crc32(method.encode()) % len(VARIANT_SHADES)])
    return OTHER_PALETTE[zlib.crc32(method.encode()) % len(OTHER_PALETTE)]


def assign_colors(methods) -> dict[str, str]:
    """method → colour for a set of methods (color_of each: the same in every figure)."""
    return {m: color_of(m) for m in sorted(set(methods))}


def _label(row) -> str:
    """A bar's label: the method, with its world size when one method ran at several."""
    return f"{row.method} ×{int(row.world_size)}" if pd.notna(row.world_size) else str(row.method)


def _label_points(ax, xs, ys, texts, fontsize=8):
    """Write each text just right of (x, y), in data coordinates."""
    for x, y, text in zip(xs, ys, texts):
        ax.annotate(text, (x, y), xytext=(3, 0), textcoords="offset points", va="center", ha="left", fontsize=fontsize)


def _label_bars(ax, bars, texts, fontsize=8):
    """Write each bar's value just past its end (horizontal bars), so tiny bars read too."""
    _label_points(ax, [b.get_x() + b.get_width() for b in bars], [b.get_y() + b.get_height() / 2 for b in bars],
                  texts, fontsize)


def _mean_by_method(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, standard deviation and count over repeats, per method and world size (and setup:
    runs of different length are never pooled); labels carry the setup when several ran."""
    keys = ["setup", "method", "world_size"] if "setup" in runs else ["method", "world_size"]
    table = runs.groupby(keys, as_index=False).agg(mean=(column, "mean"), sd=(column, "std"),
                                                   repeats=(column, "count"))
    several = "setup" in table and table["setup"].nunique() > 1
    table["label"] = [_label(r) + (f" · {r.setup}" if several else "") for r in table.itertuples()]
    return table


def _throughput_order(runs: pd.DataFrame) -> pd.DataFrame:
    """comparison_table's rows labelled as the bars are, slowest first (barh draws bottom-up,
    so the fastest is on top), setups apart."""
    table = comparison_table(runs).sort_values(["setup", "throughput_img_s"], ascending=[False, True],
                                               ignore_index=True)
    several = table["setup"].nunique() > 1
    table["label"] = [_label(r) + (f" · {r.setup}" if several else "") for r in table.itertuples()]
    return table


def _ranked(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`table` (one row per `label`) in the throughput figure's order, so every figure lists
    the methods alike."""
    rank = {label: i for i, label in enumerate(_throughput_order(runs)["label"])}
    return table.assign(rank=table["label"].map(rank)).sort_values("rank", ignore_index=True).drop(columns="rank")


def _length_note(runs: pd.DataFrame) -> str:
    """The run length for a title: "8 steps × 64 img" for one setup; else that several ran."""
    setups = runs["setup"].unique() if "setup" in runs else []
    return f"{setups[0]} per run" if len(setups) == 1 else f"{len(setups)} setups, each labelled"


def throughput(runs: pd.DataFrame):
    """Steady-state images per second (global batch ÷ median step) per method: the median over
    repeats, the error bar its spread (frames.comparison_table: the lowest to highest end of the
    repeats' own ~95 % intervals). The title gives the run length; with several setups each bar
    says its own, and no bar is ordered against another setup's."""
    table = _throughput_order(runs)
    low = (table["throughput_img_s"] - table["spread_low_img_s"]).clip(lower=0).fillna(0)
    high = (table["spread_high_img_s"] - table["throughput_img_s"]).clip(lower=0).fillna(0)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.42 * len(table)))
    bars = ax.barh(table["label"], table["throughput_img_s"], xerr=[low, high], capsize=3,
                   color=[color_of(m) for m in table["method"]])
    ends = table["spread_high_img_s"].fillna(table["throughput_img_s"])  # each label past its error bar
    texts = [f"{m:.1f} [{lo:.1f}–{hi:.1f}] (n={n})" for m, lo, hi, n in
             zip(table["throughput_img_s"], table["spread_low_img_s"], table["spread_high_img_s"], table["repeats"])]
    _label_points(ax, list(ends), [b.get_y() + b.get_height() / 2 for b in bars], texts)
    ax.set(title=f"Throughput, steady state ({_length_note(runs)}; higher is better;\n"
                 "error bar: the spread over repeats, overlapping bars are not told apart)",
           xlabel="images / s", ylabel="method")
    ax.set_xlim(0, 1.45 * float(table["spread_high_img_s"].fillna(table["throughput_img_s"]).max() or 1))
    fig.tight_layout()
    return fig


def noise_floor_s(summary: dict) -> float | None:
    """The exposed-communication noise floor a run reports (seconds; None if it does not)."""
    return summary.get("exposed_comm_noise_s")


def time_breakdown(results: list[dict]):
    """Per method, the median step (less data wait) as a stacked bar:
    compute-only (the calibration step, no synchronization) | exposed communication that
    is not blocking (overlapped communication that still lengthened the step) | blocking
    sync. The whisker at the end is ± the noise floor of exposed communication. A step
    shorter than the compute-only step (exposed below 0, noise) is drawn at its own length
    and labelled so. A run without a calibration shows its blocking sync only, and says so."""
    rows, names = [], setup_names(results)
    for r in results:
        s = r.get("summary") or {}
        rows.append({"setup": names[comparison_setup(r)], "method": method(r), "world_size": r.get("world_size"),
                     "compute_only": s.get("compute_only_step_s"), "exposed": s.get("exposed_comm_s"),
                     "blocking": s.get("sync_time_median_s"), "floor": noise_floor_s(s)})
    frame = pd.DataFrame(rows, columns=["setup", "method", "world_size", "compute_only", "exposed", "blocking",
                                        "floor"])
    frame = frame.astype({c: float for c in ("compute_only", "exposed", "blocking", "floor")})
    table = frame.groupby(["setup", "method", "world_size"], as_index=False).median()  # runs of one length only
    several = table["setup"].nunique() > 1
    table["label"] = [_label(r) + (f" · {r.setup}" if several else "") for r in table.itertuples()]
    table = _ranked(table, runs_frame(results))
    fig, ax = plt.subplots(figsize=(8.5, 1.8 + 0.45 * len(table)))
    ms = 1e3
    # A step shorter than the compute-only step (exposed < 0: noise) is drawn at its own length.
    compute = (table["compute_only"] * ms + (table["exposed"] * ms).clip(upper=0).fillna(0)).fillna(0)
    blocking = (table["blocking"] * ms).fillna(0)
    hidden = ((table["exposed"] - table["blocking"].fillna(0)) * ms).clip(lower=0).fillna(0)
    y = np.arange(len(table))
    colors = [color_of(m) for m in table["method"]]
    ax.barh(y, compute, color=colors, alpha=0.35)
    ax.barh(y, hidden, left=compute, color=colors, alpha=0.7, hatch="//")
    ax.barh(y, blocking, left=compute + hidden, color=colors)
    for alpha, hatch, label in ((0.35, None, "compute-only (calibration)"), (0.7, "//", "exposed, not blocking"),
                                (1.0, None, "blocking sync")):  # legend in grey: the colour is the method's
        ax.barh([0], [0], color="0.45", alpha=alpha, hatch=hatch, label=label)
    ends = compute + hidden + blocking
    floor = (table["floor"] * ms)
    has_floor = floor.notna() & table["compute_only"].notna()
    if has_floor.any():
        ax.errorbar(ends[has_floor], y[has_floor], xerr=floor[has_floor], fmt="none", ecolor="black", capsize=4,
                    label="± noise floor")
    texts = []
    for row, c, h, b in zip(table.itertuples(), compute, hidden, blocking):
        if pd.isna(row.compute_only):
            texts.append(f"sync {b:.1f} ms (no calibration: exposed unknown)")
        elif row.exposed < 0:
            texts.append(f"{c:.0f} | exposed {row.exposed * ms:.1f} (below 0: noise) | {b:.1f} ms")
        else:
            texts.append(f"{c:.0f} | {h:.1f} | {b:.1f} ms")
    _label_points(ax, ends + floor.fillna(0), y, texts)
    ax.set_yticks(y, table["label"])
    ax.set_xlim(0, 1.45 * float(ends.max() or 1))
    ax.set(title="Where a step's time goes: compute-only | exposed communication | blocking sync"
                 + (f"\n({table['setup'].iloc[0]} per run, median over repeats)" if len(table) and not several else ""),
           xlabel="ms per step (median, data wait excluded)", ylabel="method")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    fig.tight_layout()
    return fig


def communication_volume(runs: pd.DataFrame):
    """Two panels on log axes (the values span orders of magnitude): MB rank 0 sent per
    step, and collective or point-to-point calls per step. A method that sends nothing has
    no bar on a log axis: its label says 0."""
    mb = _ranked(_mean_by_method(runs.assign(mb=runs["bytes_sent_per_step"] / 1e6), "mb"), runs)
    calls = _ranked(_mean_by_method(runs, "collectives_per_step"), runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.1 + 0.42 * len(mb)), sharey=True)
    for ax, table, title, unit in ((axes[0], mb, "MB sent per step (rank 0)", "MB"),
                                   (axes[1], calls, "calls per step (rank 0)", "calls")):
        values = table["mean"].fillna(0)
        positive = values[values > 0]
        low = positive.min() / 3 if len(positive) else 0.1
        bars = ax.barh(table["label"], values.where(values > 0, np.nan), color=[color_of(m) for m in table["method"]])
        for bar, value in zip(bars, values):  # zero bars: place the label at the axis start
            if not value:
                bar.set_x(low), bar.set_width(0)
        _label_bars(ax, bars, [f"{v:,.3g} {unit}" if v else f"0 {unit} (none)" for v in values])
        ax.set_xscale("log")
        ax.set_xlim(low, (positive.max() if len(positive) else 1) * 10)
        ax.set_ylim(-0.5, len(table) - 0.5)  # a zero bar (drawn as nothing) at an end keeps its row
        ax.set(title=title, xlabel=f"{unit} (log scale)")
    axes[0].set_ylabel("method")
    fig.tight_layout()
    return fig


def loss_vs_images(steps: pd.DataFrame, classes: int | None = None, epochs: pd.DataFrame | None = None):
    """Training loss (rank 0's batch, 5-step moving mean; solid) against images seen (global
    batch × step), so methods with different batches per step share one x axis; with `epochs`
    (frames.epochs_frame), each epoch's validation loss (dashed, circles) where the epoch ended
    (images seen by then: the epochs' steps so far × the global batch). With `classes`, the
    chance line ln(classes): the loss of a model that guesses uniformly — a validation loss
    above it has learnt less than nothing. A one-process run's training loss is over its whole
    batch, a multi-rank run's over rank 0's share of it, so theirs differ step by step by
    sampling alone."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    if classes:
        ax.axhline(np.log(classes), color="0.5", ls=":", lw=1, label=f"chance: ln {classes} = {np.log(classes):.2f}")
    for label in sorted(steps["method"].unique()) if len(steps) else []:
        first = True
        for _, run in steps[steps["method"] == label].groupby("name"):
            run = run.sort_values("step")
            smooth = run["loss"].rolling(5, min_periods=1).mean()
            ax.plot(run["images_seen"], smooth, color=color_of(label), label=f"{label} training" if first else None,
                    lw=1.4)
            first = False
    has_val = epochs is not None and len(epochs) and "val_loss" in epochs and epochs["val_loss"].notna().any()
    if has_val:
        for label in sorted(epochs["method"].unique()):
            first = True
            for _, run in epochs[epochs["method"] == label].groupby("name"):
                run = run.sort_values("epoch")
                seen = run["steps"].cumsum() * run["global_batch"] if "steps" in run else run["epoch"]
                ax.plot(seen, run["val_loss"], "o--", ms=4, lw=1, color=color_of(label),
                        label=f"{label} validation" if first else None)
                first = False
    ax.set(title="Loss against images seen: training (rank 0's batch, 5-step moving mean)"
                 + (" and validation (dashed, per epoch)" if has_val else ""),
           xlabel="images seen (global batch × step)", ylabel="cross-entropy")
    ax.title.set_fontsize(9)
    if len(steps) or classes:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def validation_accuracy(epochs: pd.DataFrame):
    """Validation top-1 per epoch, one line per run (repeats drawn separately), with bars of
    ± its binomial standard error 100·√(p(1−p)/N) for the N validation images (`val_images`;
    `top1_se_pct` in docs/EXPERIMENT_GUIDE.md): two points within each other's bars are not
    told apart by this validation set. A run that did not record N gets no bar."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    epochs = epochs.dropna(subset=["val_top1"]) if "val_top1" in epochs else epochs.iloc[0:0]
    if not len(epochs):
        _message(ax, "No run here trained whole epochs: accuracy after a few max_steps steps says nothing "
                     "about a method, so none is drawn (notebook 05b's runs train to the end).")
        ax.set_title("Validation top-1 accuracy per epoch")
        return fig
    sizes = set()
    for label in sorted(epochs["method"].unique()) if len(epochs) else []:
        for i, (_, run) in enumerate(epochs[epochs["method"] == label].groupby("name")):
            images = run["val_images"] if "val_images" in run else pd.Series(np.nan, index=run.index)
            sizes |= {int(n) for n in images.dropna()}
            errors = binomial_se_pct(run["val_top1"], images)
            ax.errorbar(run["epoch"], run["val_top1"], yerr=errors if errors.notna().any() else None,
                        marker="o", capsize=3, color=color_of(label), label=None if i else label)
    on = f"{min(sizes)}" + (f"–{max(sizes)}" if len(sizes) > 1 else "") + " images" if sizes else "the validation set"
    ax.set(title=f"Validation top-1 accuracy per epoch, on {on}\n(bars: ± the binomial standard error √(p(1−p)/N))",
           xlabel="epoch", ylabel="top-1 (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(epochs):
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _message(ax, text: str) -> None:
    """A figure the results cannot fill says why, instead of drawing zero."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
    ax.set_xticks([]), ax.set_yticks([])


def total_time(runs: pd.DataFrame):
    """Training time per method (summary `total_time_s`: the whole run, start-up of the ranks'
    loop to the end, validation and checkpoints included), the median over repeats, whiskers
    from the fastest to the slowest repeat; bars in the throughput figure's order."""
    keys = ["setup", "method", "world_size"]
    table = runs.groupby(keys, as_index=False).agg(total_s=("total_time_s", median_low),
                                                   low_s=("total_time_s", "min"), high_s=("total_time_s", "max"),
                                                   repeats=("total_time_s", "count"))
    several = table["setup"].nunique() > 1
    table["label"] = [_label(r) + (f" · {r.setup}" if several else "") for r in table.itertuples()]
    table = _ranked(table, runs)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.42 * max(1, len(table))))
    if not table["total_s"].notna().any():
        _message(ax, "no run recorded its total time (summary total_time_s)")
        return fig
    values = table["total_s"].fillna(0)
    bars = ax.barh(table["label"], values, xerr=[(values - table["low_s"]).clip(lower=0).fillna(0),
                                                 (table["high_s"] - values).clip(lower=0).fillna(0)],
                   capsize=3, color=[color_of(m) for m in table["method"]])
    _label_points(ax, list(table["high_s"].fillna(values)), [b.get_y() + b.get_height() / 2 for b in bars],
                  [f"{v:.1f} s [{lo:.1f}–{hi:.1f}] (n={n})" for v, lo, hi, n in
                   zip(values, table["low_s"], table["high_s"], table["repeats"])])
    ax.set_xlim(0, 1.45 * float(table["high_s"].max() or 1))
    ax.set(title=f"Total training time per run ({_length_note(runs)}; lower is better;\n"
                 "median over repeats, whiskers: fastest to slowest repeat)", xlabel="seconds", ylabel="method")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def communication_overhead(results: list[dict]):
    """Exposed communication as a share of the step (summary `exposed_comm_pct` = (step − data
    wait − compute-only step) ÷ (step − data wait)), the median over repeats, with its noise
    floor as a whisker: ± exposed_comm_noise_s ÷ (compute-only step + exposed), in %. A bar
    whose whisker crosses 0 shows no cost of communication this measurement can see. A run
    without a compute-only calibration has no bar, and its label says so."""
    rows, names = [], setup_names(results)
    for r in results:
        s = r.get("summary") or {}
        pct, exposed, compute = s.get("exposed_comm_pct"), s.get("exposed_comm_s"), s.get("compute_only_step_s")
        floor = s.get("exposed_comm_noise_s")
        whole = (compute + exposed) if compute is not None and exposed is not None else None  # step − data wait
        rows.append({"setup": names[comparison_setup(r)], "method": method(r), "world_size": r.get("world_size"),
                     "pct": pct, "floor_pct": 100 * floor / whole if floor is not None and whole else None})
    frame = pd.DataFrame(rows, columns=["setup", "method", "world_size", "pct", "floor_pct"])
    frame = frame.astype({"pct": float, "floor_pct": float})
    table = frame.groupby(["setup", "method", "world_size"], as_index=False)[["pct", "floor_pct"]].agg(median_low)
    several = table["setup"].nunique() > 1
    table["label"] = [_label(r) + (f" · {r.setup}" if several else "") for r in table.itertuples()]
    table = _ranked(table, runs_frame(results))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.42 * max(1, len(table))))
    if not table["pct"].notna().any():
        _message(ax, "no run measured its exposed communication (it needs a compute-only calibration)")
        return fig
    y = np.arange(len(table))
    values = table["pct"].fillna(0)
    ax.barh(y, values, color=[color_of(m) for m in table["method"]])
    floor = table["floor_pct"]
    has = floor.notna() & table["pct"].notna()
    if has.any():
        ax.errorbar(values[has], y[has], xerr=floor[has], fmt="none", ecolor="black", capsize=4,
                    label="± noise floor")
        ax.legend(fontsize=7, loc="lower right")
    texts = []
    for row in table.itertuples():
        if pd.isna(row.pct):
            texts.append("no calibration: unknown")
        elif pd.notna(row.floor_pct) and abs(row.pct) <= row.floor_pct:
            texts.append(f"{row.pct:.1f} % ± {row.floor_pct:.1f}: within the noise")
        else:
            texts.append(f"{row.pct:.1f} %" + (f" ± {row.floor_pct:.1f}" if pd.notna(row.floor_pct) else ""))
    ends = np.maximum(values, 0) + floor.fillna(0)
    _label_points(ax, list(ends), y, texts)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, table["label"])
    low = min(0.0, float((values - floor.fillna(0)).min()))
    ax.set_xlim(1.1 * low, 1.6 * max(float(ends.max()), 1.0))
    ax.set(title="Communication overhead: exposed communication, % of the step (data wait excluded)\n"
                 "(step − compute-only step; the whisker is its noise floor)", xlabel="% of the step", ylabel="method")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def scaling(runs: pd.DataFrame):
    """Throughput against ranks, per method (mean ± sd over repeats), with the bound the
    hardware allows (frames.scaling_frame): dashed, in the method's colour. The dotted
    vertical line marks how many devices (GPUs, or CPU cores) the machine has."""
    table = scaling_frame(runs)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    apart = table["setup"].nunique() > 1  # one line per setup and method: lengths are not joined
    for (setup, label), group in table.groupby(["setup", "method"]):
        color = color_of(label)
        ax.errorbar(group["world_size"], group["throughput_img_s"], yerr=group["throughput_sd"].fillna(0),
                    marker="o", capsize=3, color=color, label=f"{label} · {setup}" if apart else label)
        ax.plot(group["world_size"], group["hardware_bound_img_s"], "--", color=color, alpha=0.6)
    units = table["parallel_units"].dropna()
    if len(units):
        ax.axvline(units.max(), color="0.4", ls=":", lw=1)
        ax.annotate(f"{int(units.max())} devices", (units.max(), 0), xytext=(3, 3), textcoords="offset points",
                    fontsize=8, color="0.3", xycoords=("data", "axes fraction"))
    ax.plot([], [], "k--", alpha=0.6, label="hardware bound")
    ax.set(title="Scaling: throughput against ranks (dashed: what the hardware allows)", xlabel="ranks",
           ylabel="images / s")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def straggler_note(events: pd.DataFrame) -> str:
    """"; straggler: rank 2 finished compute last in 3 of 4 steps (the others wait for it)" — the
    rank whose forward + backward ended last in more than half the steps, from the timeline
    itself: the straggler, told apart from the ranks that wait for it (in their sync, or inside
    backward for a method that overlaps). Empty with one rank or no compute phases."""
    compute = events[events["phase"] == "compute_s"]
    if compute["rank"].nunique() < 2:
        return ""
    last = compute.loc[compute.groupby("step")["end"].idxmax(), "rank"]  # per step, who ended last
    rank, count = last.value_counts().idxmax(), int(last.value_counts().max())
    if 2 * count <= len(last):
        return "; no steady straggler (the last to finish compute changes from step to step)"
    return f"; straggler: rank {rank} finished compute last in {count} of {len(last)} steps (the others wait for it)"


def timelines(results: list[dict], window_steps: int | None = None):
    """One panel per run, all on one shared x axis (ms since the run's first recorded
    phase). Each rank has two lanes: compute (data wait, forward + backward, optimizer)
    and communication (every other phase the run records, e.g. blocking sync). A method
    that overlaps shows communication under compute; a blocking one shows the compute lane
    pausing while the communication lane is busy."""
    runs = [r for r in results if r.get("timeline")]
    fig, axes = plt.subplots(max(1, len(runs)), 1, sharex=True, squeeze=False,
                             figsize=(10, 0.9 + sum(0.55 * len({e["rank"] for e in r["timeline"]}) + 0.6 for r in runs)))
    axes = axes[:, 0]
    if not runs:
        axes[0].text(0.5, 0.5, "no run recorded a timeline", ha="center", va="center", transform=axes[0].transAxes)
    for ax, result in zip(axes, runs):
        events = pd.DataFrame(result["timeline"])
        if window_steps and "step" in events:
            events = events[events["step"] < events["step"].min() + window_steps]
        origin = events["start"].min()
        ranks = sorted(events["rank"].unique())
        ticks, names = [], []
        for i, rank in enumerate(ranks):
            base = 2 * i
            for lane, offset in (("compute", 0), ("comm", 1)):
                ticks.append(base + offset + 0.5)
                names.append(f"rank {rank} {lane}")
            mine = events[events["rank"] == rank]
            for phase, group in mine.groupby("phase"):
                lane = 0 if phase in COMPUTE_LANE else 1
                spans = [(1e3 * (s - origin), 1e3 * (e - s)) for s, e in zip(group["start"], group["end"])]
                ax.broken_barh(spans, (base + lane + 0.1, 0.8), color=PHASE_COLORS.get(phase, "#ee6677"),
                               label=phase.removesuffix("_s"))
        ax.set_yticks(ticks, names, fontsize=7)
        ax.invert_yaxis()  # rank 0 on top
        label = method(result)
        ax.set_title(f"{label} ({result.get('name', '')}, {len(ranks)} ranks){straggler_note(events)}", fontsize=9,
                     loc="left")  # black: a pale method colour is not legible as text
    legend = {}
    for ax in axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    if legend:
        fig.legend(legend.values(), legend.keys(), ncol=len(legend), loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time since the run's first recorded phase (ms)")
    fig.suptitle("Timelines: each rank's compute and communication lanes, one shared time axis", fontsize=10, x=0.02,
                 ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def bandwidth(bench: dict, results: list[dict] | None = None):
    """Bus bandwidth of each collective against message size, on log–log axes: measured
    points, and the line of the fitted alpha–beta model, busbw(S) = factor · S / (α + β·S)
    (busbw = algbw × factor, factor = 2(n−1)/n for all-reduce, as nccl-tests defines it; α and β
    in the legend). With `results`, a dotted line marks each method's mean message size (its
    counted message bytes ÷ calls per step): where on the curve its calls sit."""
    rows = pd.DataFrame(bench.get("rows", []))
    fits = bench.get("fits") or {}
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, (op, group) in enumerate(rows.groupby("op") if len(rows) else []):
        group = group.sort_values("size_bytes")
        color = PALETTE[i % len(PALETTE)]  # operations, not methods: colours by their sorted order
        ax.plot(group["size_bytes"], group["busbw_gb_s"], "o", ms=4, color=color, label=f"{op} measured")
        fit = fits.get(op) or {}
        if fit.get("alpha_s") is not None and fit.get("beta_s_per_byte") is not None:
            factor = float((group["busbw_gb_s"] / group["algbw_gb_s"]).median()) if "algbw_gb_s" in group else 1.0
            sizes = np.geomspace(group["size_bytes"].min(), group["size_bytes"].max(), 60)
            model = factor * sizes / (fit["alpha_s"] + fit["beta_s_per_byte"] * sizes) / 1e9
            ax.plot(sizes, model, "-", color=color, alpha=0.7,
                    label=f"{op} fit: α={fit['alpha_s'] * 1e6:.0f} µs, β={fit['beta_s_per_byte'] * 1e9:.2f} ns/B")
    for r in results or []:
        label, ops = method(r), ops_per_step(r)
        calls, size = sum(c for c, _ in ops.values()), sum(b for _, b in ops.values())
        if calls and label not in {t.get_label() for t in ax.lines}:
            ax.axvline(size / calls, color=color_of(label), ls=":", lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"Bus bandwidth, {bench.get('world_size', '?')} ranks, {bench.get('backend', '?')}: measured and the "
                 "α–β model\n(busbw = algbw × 2(n−1)/n for all-reduce, as nccl-tests; dotted: a method's mean message)",
                 fontsize=9)
    ax.set(xlabel="message size S (bytes, log)", ylabel="busbw (GB/s, log)")
    if len(rows):
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


FIVE = ("throughput", "total_time", "loss", "communication_overhead", "accuracy")  # the original project's plots


def all_figures(results: list[dict], trained: list[dict] | None = None) -> dict:
    """Every comparison figure for a set of results (pass the runs `select_runs` kept): the five
    of the original project (FIVE) — throughput, total time, loss (training and validation, with
    the chance line), communication overhead (% of the step, with its noise floor) and accuracy
    (validation top-1 per epoch, binomial bars) — then the time breakdown, the communication
    volume, scaling (where a method ran at several sizes) and the timelines. Accuracy is drawn
    from full-length runs only (not `max_steps` demonstrations): those among `results` and
    `trained` (e.g. notebook 05b's sweep, trained to the end); with none, the figure says so."""
    runs = runs_frame(results)
    full = [r for r in [*results, *(trained or [])] if not is_short(r)]  # a few steps say nothing about accuracy
    classes = next(((r.get("config") or {}).get("num_classes") for r in [*results, *full]
                    if (r.get("config") or {}).get("num_classes")), None)
    learning = [r for r in full if any(e.get("val_loss") is not None for e in r.get("epochs", []))]
    shown = learning or results  # the loss of runs that trained whole epochs says more than a few steps
    figures = {"throughput": throughput(runs), "total_time": total_time(runs),
               "loss": loss_vs_images(steps_frame(shown), classes, epochs_frame(shown)),
               "communication_overhead": communication_overhead(results),
               "accuracy": validation_accuracy(epochs_frame(full)),
               "time_breakdown": time_breakdown(results), "communication_volume": communication_volume(runs)}
    if len(runs) and runs.groupby("method").world_size.nunique().max() > 1:
        figures["scaling"] = scaling(runs)
    latest = {}  # per method, its run at the largest world size (the last such one)
    for r in sorted((r for r in results if r.get("timeline") and (r.get("world_size") or 1) > 1),
                    key=lambda r: r["world_size"]):
        latest[method(r)] = r
    if latest:
        figures["timelines"] = timelines([latest[m] for m in sorted(latest)])
    return figures


def save_all(figures: dict, folder: Path) -> list[Path]:
    """Write each figure as folder/<name>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1], dpi=120)
    return paths
