"""Selected runs as tables (pandas frames): one row per run, per epoch, per step, and the
comparison per method and world size.

Every figure comes from result.json (defined in docs/EXPERIMENT_GUIDE.md); nothing is
recomputed differently here. Names no method; imports no torch.
"""

from __future__ import annotations

import pandas as pd

from .costmodel import prediction_table
from .selection import images_per_step, is_short, method, parallel_units

RUN_COLUMNS = ["throughput_img_s", "total_time_s", "step_time_median_s", "sync_time_median_s", "sync_share_pct",
               "compute_only_step_s", "exposed_comm_s", "exposed_comm_pct", "bytes_sent_per_step",
               "collectives_per_step", "final_train_loss", "best_val_top1"]
LABELS = ["name", "method", "strategy", "world_size", "global_batch"]


def _labels(r: dict) -> dict:
    return {"name": r["name"], "method": method(r), "strategy": r["strategy"], "world_size": r.get("world_size"),
            "global_batch": images_per_step(r)}


def runs_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run: its labels, length, hardware and summary figures (absent ones empty;
    no accuracy for a short `max_steps` run)."""
    rows = []
    for r in results:
        summary, cfg = r.get("summary") or {}, r.get("config", {})
        rows.append({**_labels(r), "steps": len(r.get("steps", [])),
                     "profile": cfg.get("profile"), "model": cfg.get("model"),
                     "parallel_units": parallel_units(r),
                     **{key: summary.get(key) for key in RUN_COLUMNS}})
        if is_short(r):  # a max_steps demonstration: its accuracy is no verdict on the method
            rows[-1]["best_val_top1"] = None
    frame = pd.DataFrame(rows, columns=[*LABELS, "steps", "profile", "model", "parallel_units", *RUN_COLUMNS])
    return frame.astype({key: float for key in RUN_COLUMNS})


def epochs_frame(results: list[dict]) -> pd.DataFrame:
    """Long format: one row per run and epoch."""
    return pd.DataFrame([{**_labels(r), **e} for r in results for e in r.get("epochs", [])])


def steps_frame(results: list[dict]) -> pd.DataFrame:
    """Long format: one row per run and step, with `images_seen` (global batch × step)."""
    rows = [{**_labels(r), **s} for r in results for s in r.get("steps", [])]
    frame = pd.DataFrame(rows)
    if len(frame) and "step" in frame:
        frame["images_seen"] = frame["step"] * frame["global_batch"]
    return frame


def comparison_table(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per method and world size: the mean over repeats, `repeats`, the spread of
    throughput (`throughput_sd`, standard deviation over repeats; empty for one run), and,
    when a `baseline` method is named, `vs_baseline`: throughput relative to that method at
    its largest world size (the reference experiment's). `steps` says how long each trained: compare total time
    and accuracy only at equal steps."""
    keys = ["method", "world_size", "steps"]
    table = runs.groupby(keys, as_index=False)[RUN_COLUMNS].mean(numeric_only=True)
    grouped = runs.groupby(keys)["throughput_img_s"]
    table = table.merge(grouped.size().rename("repeats").reset_index(), on=keys)
    table = table.merge(grouped.std().rename("throughput_sd").reset_index(), on=keys)
    base = table.loc[table.method == baseline].sort_values("world_size")["throughput_img_s"]
    if baseline and len(base):
        table["vs_baseline"] = table["throughput_img_s"] / base.iloc[-1]
    return table.sort_values("throughput_img_s", ascending=False, ignore_index=True)


def scaling_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Scaling per method and world size, against what the hardware allows.

    With n₀ the method's smallest measured world size, T(n) its mean throughput and U the
    machine's parallel units (GPUs for a GPU run, CPU cores for a CPU run):

        bound(n) = T(n₀) × min(n, U) / min(n₀, U)        scaling_efficiency = T(n) / bound(n)

    More ranks than devices cannot add compute, so the bound stops growing at U (on a
    2-core machine, 4 ranks can at best match 2). Without U (an old result) the bound is
    linear in n."""
    keys = ["method", "world_size"]
    table = runs.groupby(keys, as_index=False).agg(throughput_img_s=("throughput_img_s", "mean"),
                                                   throughput_sd=("throughput_img_s", "std"),
                                                   repeats=("throughput_img_s", "size"),
                                                   parallel_units=("parallel_units", "max"))
    rows = []
    for _, group in table.groupby("method"):
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
REPORT_COLUMNS = [("method", "method", None), ("world_size", "ranks", None), ("steps", "steps", None),
                  ("repeats", "repeats", None), ("throughput_img_s", "img/s", 1), ("throughput_sd", "± sd", 1),
                  ("vs_baseline", "vs base", 1), ("step_time_median_s", "step ms", 1e3),
                  ("sync_share_pct", "sync %", 1), ("exposed_comm_pct", "exposed %", 1),
                  ("bytes_sent_per_step", "MB/step", 1e-6), ("collectives_per_step", "calls/step", 1),
                  ("final_train_loss", "final loss", 1), ("best_val_top1", "top-1 %", 1)]


def report_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table with short headings and readable units (ms, MB)."""
    shown = {heading: table[column] * scale if scale else table[column]
             for column, heading, scale in REPORT_COLUMNS if column in table}
    return pd.DataFrame(shown)
