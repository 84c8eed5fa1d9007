"""Selected runs as tables (pandas frames): one row per run, per epoch, per step, and the
comparison per method and world size.

Every figure comes from result.json (defined in docs/EXPERIMENT_GUIDE.md); nothing is
recomputed differently here. Names no method; imports no torch.
"""

from __future__ import annotations

import statistics

import pandas as pd

from labkit.training.timing import DISTURBED_FACTOR  # one definition of "disturbed" (timing.py imports no torch)

from .costmodel import prediction_table
from .selection import comparison_setup, images_per_step, is_short, method, parallel_units, setup_names

RUN_COLUMNS = ["throughput_img_s", "throughput_low_img_s", "throughput_high_img_s", "throughput_wall_img_s",
               "disturbed_steps", "measured_steps", "total_time_s", "step_time_median_s", "sync_time_median_s", "sync_share_pct",
               "compute_only_step_s", "exposed_comm_s", "exposed_comm_pct", "bytes_sent_per_step",
               "collectives_per_step", "final_train_loss", "best_val_top1"]
LABELS = ["name", "method", "strategy", "world_size", "global_batch"]


def binomial_se_pct(top1_pct, images):
    """The standard error, in points, of an accuracy of `top1_pct` % measured on `images`
    images: 100·√(p(1−p)/N) (numbers, or pandas Series element by element)."""
    p = top1_pct / 100
    return 100 * (p * (1 - p) / images) ** 0.5


def _labels(r: dict) -> dict:
    return {"name": r["name"], "method": method(r), "strategy": r["strategy"], "world_size": r.get("world_size"),
            "global_batch": images_per_step(r)}


def disturbed_vs_others(results: list[dict]) -> list[int | None]:
    """Per run, its measured steps over DISTURBED_FACTOR (2) × the median step of the *other*
    repeats of its method, world size and setup — a run slowed from its first step to its last
    has a median as slow as its steps, so its own count (summary `disturbed_steps`, against its
    own median) says 0; against the others it says all. None without another repeat, or for a
    result without per-step times. A method timed per period (local SGD: H steps, summary
    `measured_steps` counts periods) is compared whole: all its measured periods when its median
    is over 2 × the others', else none."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((comparison_setup(r), method(r), r.get("world_size")), []).append(i)
    counts: list[int | None] = [None] * len(results)
    for members in groups.values():
        for i in members:
            others = [(results[j].get("summary") or {}).get("step_time_median_s") for j in members if j != i]
            others = [o for o in others if o]
            s, cfg = results[i].get("summary") or {}, results[i].get("config") or {}
            if not others or not s.get("measured_steps"):
                continue
            threshold = DISTURBED_FACTOR * statistics.median(others)
            warmup = cfg.get("timing_warmup_steps") or 0
            measured = [step.get("step_s") for step in results[i].get("steps", [])[warmup:]]
            if len(measured) == s["measured_steps"] and all(t is not None for t in measured):
                counts[i] = sum(t > threshold for t in measured)
            elif s.get("step_time_median_s"):  # per period, or steps not in the result: the run as a whole
                counts[i] = s["measured_steps"] if s["step_time_median_s"] > threshold else 0
    return counts


def runs_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run: its labels, setup (selection.setup_label), length, hardware and summary
    figures (absent ones empty; no accuracy for a short `max_steps` run). A result from before
    the step interval existed gets its own throughput as both ends of it. `disturbed_steps` is
    the larger of the run's own count (steps over 2 × its own median) and the count against the
    other repeats' median step (disturbed_vs_others): a run disturbed throughout is counted too."""
    rows, names = [], setup_names(results)
    against_others = disturbed_vs_others(results)
    for r, vs_others in zip(results, against_others):
        summary, cfg = r.get("summary") or {}, r.get("config", {})
        summary = {"throughput_low_img_s": summary.get("throughput_img_s"),
                   "throughput_high_img_s": summary.get("throughput_img_s"), **summary}
        rows.append({**_labels(r), "setup": names[comparison_setup(r)], "steps": len(r.get("steps", [])),
                     "profile": cfg.get("profile"), "model": cfg.get("model"),
                     "parallel_units": parallel_units(r),
                     **{key: summary.get(key) for key in RUN_COLUMNS}})
        if vs_others is not None:
            own = rows[-1]["disturbed_steps"]
            rows[-1]["disturbed_steps"] = max(own if own is not None else 0, vs_others)
        if is_short(r):  # a max_steps demonstration: its accuracy is no verdict on the method
            rows[-1]["best_val_top1"] = None
    frame = pd.DataFrame(rows, columns=[*LABELS, "setup", "steps", "profile", "model", "parallel_units", *RUN_COLUMNS])
    return frame.astype({key: float for key in RUN_COLUMNS})


def epochs_frame(results: list[dict]) -> pd.DataFrame:
    """Long format: one row per run and epoch."""
    return pd.DataFrame([{**_labels(r), **e} for r in results for e in r.get("epochs", [])])


EPOCH_COLUMNS = ["train_loss", "val_loss", "val_top1", "val_images", "time_s", "throughput_img_s"]


def epoch_table(results: list[dict]) -> pd.DataFrame:
    """The per-epoch statistics: one row per setup, method, world size and epoch, each figure
    the median over the repeats (median_low) — training loss (averaged over every data rank),
    validation loss and top-1 with its binomial standard error (`top1_se_pct`, for the N
    validation images), the epoch's time and throughput. A short (`max_steps`) run keeps its
    losses but shows no accuracy: a few steps say nothing about it."""
    names, rows = setup_names(results), []
    for r in results:
        for e in r.get("epochs", []):
            row = {"setup": names[comparison_setup(r)], "method": method(r), "world_size": r.get("world_size"),
                   "epoch": e.get("epoch"), **{key: e.get(key) for key in EPOCH_COLUMNS}}
            if is_short(r):
                row["val_top1"] = None
            rows.append(row)
    keys = ["setup", "method", "world_size", "epoch"]
    frame = pd.DataFrame(rows, columns=[*keys, *EPOCH_COLUMNS]).astype({key: float for key in EPOCH_COLUMNS})
    if not len(frame):
        return frame.assign(repeats=pd.Series(dtype=int), top1_se_pct=pd.Series(dtype=float))
    table = frame.groupby(keys, as_index=False)[EPOCH_COLUMNS].agg(median_low)
    table = table.merge(frame.groupby(keys).size().rename("repeats").reset_index(), on=keys)
    table["top1_se_pct"] = binomial_se_pct(table["val_top1"], table["val_images"])
    return table.sort_values(keys, ignore_index=True)


def steps_frame(results: list[dict]) -> pd.DataFrame:
    """Long format: one row per run and step, with `images_seen` (global batch × step)."""
    rows = [{**_labels(r), **s} for r in results for s in r.get("steps", [])]
    frame = pd.DataFrame(rows)
    if len(frame) and "step" in frame:
        frame["images_seen"] = frame["step"] * frame["global_batch"]
    return frame


def median_low(values: pd.Series) -> float:
    """The median of the values present; of an even count, the lower of the middle two — a figure
    one run achieved, never the midpoint of two runs that no run made (issue 32: "99.6 img/s"
    from 17.6 and 181.7). Lower, not upper: the claim stays on the cautious side."""
    present = sorted(values.dropna())
    return present[(len(present) - 1) // 2] if present else float("nan")


def comparison_table(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per setup, method and world size: the median (median_low: never a midpoint) of
    each figure over the repeats (pass the runs selection kept: an outlier is left out there),
    `repeats`, and the method's spread: `spread_low_img_s` … `spread_high_img_s`, from the
    lowest to the highest end of its runs' own intervals (each run's ~95 % interval of its
    median step, as img/s: timing.median_interval) — so one run has a spread too, and two
    repeats that disagree widen it to cover both. `throughput_sd` is the standard deviation
    over repeats (empty for one run). Two methods whose spreads overlap are not told apart.

    With a `baseline` method, `vs_baseline` is throughput ÷ the baseline's in the *same setup*
    (at its largest world size); a setup the baseline did not run gets none: no ratio is
    taken across runs of different length or setup."""
    keys = ["setup", "method", "world_size", "steps"]
    table = runs.groupby(keys, as_index=False)[RUN_COLUMNS].agg(median_low)
    grouped = runs.groupby(keys)
    table = table.merge(grouped.size().rename("repeats").reset_index(), on=keys)
    for column in ("disturbed_steps", "measured_steps"):  # counted over all repeats, not a median
        table[column] = table[keys].merge(grouped[column].sum(min_count=1).reset_index(), on=keys)[column]
    table = table.merge(grouped["throughput_img_s"].std().rename("throughput_sd").reset_index(), on=keys)
    table = table.merge(grouped["throughput_low_img_s"].min().rename("spread_low_img_s").reset_index(), on=keys)
    table = table.merge(grouped["throughput_high_img_s"].max().rename("spread_high_img_s").reset_index(), on=keys)
    table["vs_baseline"] = float("nan")
    for setup, rows in table.groupby("setup"):
        base = rows.loc[rows.method == baseline].sort_values("world_size")["throughput_img_s"]
        if baseline and len(base):
            table.loc[rows.index, "vs_baseline"] = rows["throughput_img_s"] / base.iloc[-1]
    return table.sort_values(["setup", "throughput_img_s"], ascending=[True, False], ignore_index=True)


def overlaps(a, b) -> bool:
    """Whether two rows' spreads (spread_low_img_s … spread_high_img_s) overlap: a gap between
    them is then noise."""
    return a.spread_low_img_s <= b.spread_high_img_s and b.spread_low_img_s <= a.spread_high_img_s


def disagreements(runs: pd.DataFrame) -> pd.DataFrame:
    """Pairs of runs of the same method, world size and setup whose own intervals do not
    overlap: they should agree and do not (the machine was not the same for both). One row per
    pair: setup, method, world_size, the two names, their throughputs, intervals and disturbed
    steps."""
    rows = []
    for (setup, label, world), group in runs.groupby(["setup", "method", "world_size"]):
        group = group.sort_values("throughput_img_s").reset_index(drop=True)
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = group.iloc[i], group.iloc[j]
                if a.throughput_high_img_s < b.throughput_low_img_s:
                    rows.append({"setup": setup, "method": label, "world_size": world, "slower": a["name"],
                                 "faster": b["name"], "slower_img_s": a.throughput_img_s,
                                 "faster_img_s": b.throughput_img_s, "slower_range": (a.throughput_low_img_s,
                                                                                      a.throughput_high_img_s),
                                 "faster_range": (b.throughput_low_img_s, b.throughput_high_img_s),
                                 "disturbed": (a.disturbed_steps, b.disturbed_steps)})
    return pd.DataFrame(rows, columns=["setup", "method", "world_size", "slower", "faster", "slower_img_s",
                                       "faster_img_s", "slower_range", "faster_range", "disturbed"])


def scaling_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Scaling per method and world size, against what the hardware allows.

    With n₀ the method's smallest measured world size, T(n) its mean throughput and U the
    machine's parallel units (GPUs for a GPU run, CPU cores for a CPU run):

        bound(n) = T(n₀) × min(n, U) / min(n₀, U)        scaling_efficiency = T(n) / bound(n)

    More ranks than devices cannot add compute, so the bound stops growing at U (on a
    2-core machine, 4 ranks can at best match 2). Without U (an old result) the bound is
    linear in n. Runs of different setups (length, batch, recipe) are scaled apart."""
    keys = ["setup", "method", "world_size"] if "setup" in runs else ["method", "world_size"]
    table = runs.groupby(keys, as_index=False).agg(throughput_img_s=("throughput_img_s", "mean"),
                                                   throughput_sd=("throughput_img_s", "std"),
                                                   repeats=("throughput_img_s", "size"),
                                                   parallel_units=("parallel_units", "max"))
    rows = []
    for _, group in table.groupby(keys[:-1]):  # per setup and method
        group = group.sort_values("world_size")
        first = group.iloc[0]

        def usable(n, units):
            return min(n, units) if pd.notna(units) and units else n

        for _, row in group.iterrows():
            units = row.parallel_units
            bound = first.throughput_img_s * usable(row.world_size, units) / usable(first.world_size, units)
            rows.append({**row.to_dict(), "hardware_bound_img_s": bound,
                         "scaling_efficiency": row.throughput_img_s / bound if bound else float("nan")})
    return pd.DataFrame(rows, columns=[*table.columns, "hardware_bound_img_s", "scaling_efficiency"])


def communication_frame(results: list[dict], fits: dict | None) -> pd.DataFrame:
    """Per method and world size: the communication time measured two ways (blocking sync;
    exposed = step less data wait − compute-only step), and what the alpha–beta model (fitted
    from `labkit bench collectives`) predicts from the calls and bytes the method reports
    (costmodel.prediction_table, the one place that puts prediction beside measurement).
    A figure the result does not hold stays empty (NaN), never zero."""
    def ms(value):
        return 1e3 * value if value is not None else float("nan")

    rows = []
    for r, row in zip(results, prediction_table(results, fits)):
        s = r.get("summary") or {}
        rows.append({"method": row["method"], "world_size": row["world_size"],
                     "measured_sync_ms": ms(row["measured_sync_s"]), "exposed_comm_ms": ms(row["exposed_comm_s"]),
                     "predicted_ms": ms(row["predicted_s"]),
                     "MB_sent_per_step": (s.get("bytes_sent_per_step") or 0) / 1e6,
                     "collectives_per_step": s.get("collectives_per_step")})
    columns = ["method", "world_size", "measured_sync_ms", "exposed_comm_ms", "predicted_ms", "MB_sent_per_step",
               "collectives_per_step"]
    frame = pd.DataFrame(rows, columns=columns).astype({c: float for c in columns[2:]})
    return frame.groupby(["method", "world_size"], as_index=False).mean()


MEMORY_KINDS = ["params_bytes", "grads_bytes", "optimizer_state_bytes"]


def memory_frame(results: list[dict]) -> pd.DataFrame:
    """Memory per rank (result.json `memory`), in MB, one row per setup, method and world size
    (the median over repeats): params, grads and optimizer state of the rank that holds the
    most; `held_MB` their sum on that rank and `held_least_MB` on the rank that holds the least
    (a parameter server's workers hold no optimizer state); `peak_MB` the highest measured
    peak of any rank over the run, `step_peak_MB` over its training steps up to the count (no
    validation or checkpoint yet), `step_added_MB` the most any rank's step peak rose above what
    it held when training began (step_peak_bytes − start_bytes), and `peak_source` what a peak is
    (GPU tensors, or a CPU process's RSS). A run from before the count existed has no row."""
    rows, names = [], setup_names(results)
    for r in results:
        ranks = [m for m in r.get("memory") or [] if m and m.get("params_bytes") is not None]
        if not ranks:
            continue
        held = [sum(m[kind] for kind in MEMORY_KINDS) / 1e6 for m in ranks]
        peaks = [m["peak_bytes"] for m in ranks if m.get("peak_bytes") is not None]
        step_peaks = [m["step_peak_bytes"] for m in ranks if m.get("step_peak_bytes") is not None]
        added = [m["step_peak_bytes"] - m["start_bytes"] for m in ranks if m.get("step_peak_bytes") is not None]
        rows.append({"setup": names[comparison_setup(r)], "method": method(r), "world_size": r.get("world_size"),
                     **{kind.replace("_bytes", "_MB"): max(m[kind] for m in ranks) / 1e6 for kind in MEMORY_KINDS},
                     "held_MB": max(held), "held_least_MB": min(held),
                     "peak_MB": max(peaks) / 1e6 if peaks else float("nan"),
                     "step_peak_MB": max(step_peaks) / 1e6 if step_peaks else float("nan"),
                     "step_added_MB": max(added) / 1e6 if added else float("nan"),
                     "peak_source": ranks[0]["peak_source"]})
    keys = ["setup", "method", "world_size"]
    columns = [*keys, "params_MB", "grads_MB", "optimizer_state_MB", "held_MB", "held_least_MB", "step_peak_MB",
               "step_added_MB", "peak_MB"]
    if not rows:
        return pd.DataFrame(columns=[*columns, "peak_source"])
    frame = pd.DataFrame(rows)
    table = frame.groupby(keys, as_index=False)[columns[3:]].median()
    sources = frame.groupby(keys, as_index=False)["peak_source"].first()
    return table.merge(sources, on=keys).sort_values(["setup", "held_MB"], ignore_index=True)


def summary_frame(result: dict) -> pd.DataFrame:
    """One run's summary figures as a two-column table of text, for a notebook: numbers to
    4 significant digits, a missing figure as —, a reason as written; no accuracy for a
    short (`max_steps`) run."""
    def text(value):
        if value is None:
            return "—"
        return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)

    hidden = ("best_val_top1", "best_val_top5") if is_short(result) else ()  # a few steps say nothing on accuracy
    return pd.DataFrame([{"figure": k, "value": text(v)} for k, v in (result.get("summary") or {}).items()
                         if not isinstance(v, (list, dict)) and k not in hidden])


# The report's comparison columns: (column of comparison_table, heading, scale).
REPORT_COLUMNS = [("setup", "setup", None), ("method", "method", None), ("world_size", "ranks", None),
                  ("repeats", "repeats", None), ("throughput_img_s", "img/s", 1),
                  ("spread_low_img_s", "low", 1), ("spread_high_img_s", "high", 1),
                  ("throughput_wall_img_s", "wall img/s", 1), ("disturbed_steps", "disturbed", 1),
                  ("vs_baseline", "vs base", 1), ("step_time_median_s", "step ms", 1e3),
                  ("sync_share_pct", "sync %", 1), ("exposed_comm_pct", "exposed %", 1),
                  ("bytes_sent_per_step", "MB/step", 1e-6), ("collectives_per_step", "calls/step", 1),
                  ("final_train_loss", "final loss", 1), ("best_val_top1", "top-1 %", 1)]


def report_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table with short headings and readable units (ms, MB)."""
    shown = pd.DataFrame({heading: table[column] * scale if scale else table[column]
                          for column, heading, scale in REPORT_COLUMNS if column in table})
    counts = [c for c in ("ranks", "repeats", "disturbed") if c in shown]  # whole numbers, shown as such
    return shown.astype({c: "Int64" for c in counts})
