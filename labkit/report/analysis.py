"""The comparison pipeline: result files → which runs are compared → frames → report.

One pipeline serves `labkit compare`, `labkit sweep` and notebook 06:

    results = load_results()                  # every result.json, any status
    chosen = select_runs(results, profile)     # kept runs, and each left-out run with its reason
    runs = runs_frame(chosen.kept)             # one row per run
    comparison_table(runs), scaling_frame(runs), report_text(chosen, ...)

Every figure comes from result.json (defined in docs/EXPERIMENT_GUIDE.md); nothing is
recomputed differently here. A run is labelled by `result["method"]`, the label its
strategy wrote (falling back to the strategy's name), so this file names no method.
It imports no torch: reading results must stay fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from labkit.config import results_root

RUN_COLUMNS = ["throughput_img_s", "total_time_s", "step_time_median_s", "sync_time_median_s", "sync_share_pct",
               "compute_only_step_s", "exposed_comm_s", "exposed_comm_pct", "bytes_sent_per_step",
               "collectives_per_step", "final_train_loss", "best_val_top1"]


def load_results(paths=None, status: str | None = None) -> list[dict]:
    """Every result.json under results/runs (or under the given run folders), each with its
    folder as `path`. `status="ok"` keeps only finished runs; the default keeps every run, so
    that `select_runs` can say why a failed one is left out."""
    paths = [Path(p) for p in paths] if paths else [results_root() / "runs"]
    results = []
    for path in paths:
        files = [path] if path.name == "result.json" else sorted(path.rglob("result.json")) if path.exists() else []
        for file in files:
            result = json.loads(file.read_text())
            result["path"] = str(file.parent)
            if status is None or result.get("status") == status:
                results.append(result)
    return results


def method(result: dict) -> str:
    """The method a run measured, as its strategy labels itself (e.g. "bucketed fp16": the
    options that change what goes on the wire make a different method)."""
    return result.get("method") or result["strategy"]


def images_per_step(result: dict) -> int | None:
    """Images one optimizer step consumes over all ranks (the global batch)."""
    return result.get("global_batch") or result.get("config", {}).get("global_batch")


@dataclass
class Selection:
    """The runs a comparison keeps, and every run it leaves out with the reason."""
    kept: list[dict] = field(default_factory=list)
    left_out: list[tuple[dict, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per left-out run, for the report and the notebooks."""
        return [f"left out {r.get('name', '?')} ({len(r.get('steps', []))} steps): {why}" for r, why in self.left_out]


def select_runs(results: list[dict], profile: str | None = None) -> Selection:
    """Which runs a fair comparison keeps, and why each other run is left out:
    - not finished (`status` other than ok): no summary to compare;
    - another profile than `profile` (when given): a different model and dataset;
    - a fault was injected: a demonstration of failure and resume, not a measurement;
    - shorter than the longest run of the same method and world size: total time and
      accuracy depend on the length of training, so a quick check is not averaged with a
      full run. Repeats of the same length are all kept (they give the spread)."""
    chosen, candidates = Selection(), []
    for r in results:
        cfg = r.get("config", {})
        if r.get("status", "ok") != "ok":
            chosen.left_out.append((r, f"status {r.get('status')}"))
        elif profile and cfg.get("profile") != profile:
            chosen.left_out.append((r, f"profile {cfg.get('profile')}, not {profile}"))
        elif cfg.get("fault"):
            chosen.left_out.append((r, "fault injected (a demonstration, not a measurement)"))
        else:
            candidates.append(r)
    longest = {}
    for r in candidates:
        key = (method(r), r.get("world_size"))
        longest[key] = max(longest.get(key, 0), len(r.get("steps", [])))
    for r in candidates:
        most = longest[(method(r), r.get("world_size"))]
        if len(r.get("steps", [])) == most:
            chosen.kept.append(r)
        else:
            chosen.left_out.append((r, f"a {most}-step run of {method(r)} on {r.get('world_size')} rank(s) is compared"))
    return chosen


def full_length_runs(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, left out) of `select_runs`, without the reasons."""
    chosen = select_runs(results)
    return chosen.kept, [r for r, _ in chosen.left_out]


def parallel_units(result: dict) -> int | None:
    """How many devices can compute at once on the run's machine: its GPUs for a GPU run,
    its CPU cores for a CPU run (from result["env"]); None when the result does not say."""
    env = result.get("env") or {}
    if str(result.get("device", "cpu")).startswith("cuda"):
        return len(env.get("gpus") or []) or None
    return env.get("cpu_count")


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
    from `labkit bench collectives`) predicts from the calls and bytes the method reports.
    A figure the result does not hold stays empty (NaN), never zero."""
    from labkit.measure.costmodel import predict_sync_s

    def ms(value):
        return 1e3 * value if value is not None else float("nan")

    rows = []
    for r in results:
        s = r.get("summary") or {}
        predicted = predict_sync_s(r, fits) if fits else None
        rows.append({"method": method(r), "world_size": r.get("world_size"),
                     "measured_sync_ms": ms(s.get("sync_time_median_s")),
                     "exposed_comm_ms": ms(s.get("exposed_comm_s")),
                     "predicted_ms": ms(predicted),
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


def _table_text(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:,.3f}", na_rep="—")


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


def verdicts(table: pd.DataFrame) -> list[str]:
    """Sentences on the fastest methods, built from the table: the leader among the runs of
    the same world size and length (a short run's few steps are not compared with a long
    run's), and whether its lead over the next is larger than the spread over repeats."""
    lines = []
    keys = ["world_size", "steps"] if "steps" in table else ["world_size"]
    for key, group in table.groupby(keys, sort=True):
        world, steps = (key, None) if len(keys) == 1 else key
        group = group.sort_values("throughput_img_s", ascending=False)
        best = group.iloc[0]
        where = f"On {world} rank(s)" + (f" over {steps:.0f} steps" if steps is not None else "")
        line = (f"{where} the fastest is {best.method} at {best.throughput_img_s:.1f} img/s" if len(group) > 1
                else f"{where} only {best.method} ran, at {best.throughput_img_s:.1f} img/s")
        if len(group) > 1:
            second = group.iloc[1]
            gap = best.throughput_img_s - second.throughput_img_s
            spread = group.throughput_sd.iloc[:2].max()
            if pd.isna(spread):
                line += (f"; {second.method} is {gap:.1f} img/s behind, with no repeats to tell that gap"
                         " from noise")
            else:
                verdict = "noise: within" if gap <= spread else "larger than"
                line += f"; {second.method} is {gap:.1f} img/s behind ({verdict} the spread over repeats, {spread:.1f})"
        lines.append(line + ".")
    return lines


def report_text(chosen: Selection | pd.DataFrame, communication: pd.DataFrame | None = None,
                baseline: str | None = None, fits: dict | None = None) -> str:
    """The performance report: what was compared and left out, the comparison table, the
    noise in it, scaling where several world sizes ran, and communication measured vs
    predicted (with `fits`: each blocking method's ratio, the measured wait for the last
    rank, and why a method misses). Every sentence about a result is built from the numbers."""
    runs = chosen if isinstance(chosen, pd.DataFrame) else runs_frame(chosen.kept)
    table = comparison_table(runs, baseline)
    lines = ["labkit performance report", "=" * 25, "",
             "Every figure is defined in docs/EXPERIMENT_GUIDE.md. sync % is the share of each step spent",
             "blocked in the method's own communication; methods that communicate inside backward hide",
             "theirs there, so exposed % = (step − data wait − compute-only step) ÷ (step − data wait) is",
             "the figure comparable across overlapped and blocking methods. ± sd is the standard deviation of throughput over",
             "`repeats` runs: a difference smaller than it is noise. Total time and accuracy depend on",
             "how long a method trained: compare them at equal `steps`."
             + (f" vs base: throughput ÷ {baseline}'s." if baseline else ""), ""]
    if isinstance(chosen, Selection):
        lines += [f"Compared: {len(chosen.kept)} run(s); left out: {len(chosen.left_out)}."] + chosen.lines() + [""]
    lines += [_table_text(report_table(table)), ""] + verdicts(table)
    scaling = scaling_frame(runs)
    several = scaling.groupby("method").world_size.transform("nunique") > 1 if len(scaling) else []
    if len(scaling) and several.any():
        lines += ["", "Scaling against what the hardware allows (bound = smallest world size's throughput ×",
                  "min(n, devices) / min(n₀, devices); devices = GPUs, or CPU cores on a CPU run):", "",
                  _table_text(scaling[several])]
    if communication is not None and len(communication):
        lines += ["", "Communication per step: measured (blocking sync), exposed (step − compute-only step),",
                  "and predicted by the alpha-beta model fitted from `labkit bench collectives`:", "",
                  _table_text(communication)]
    if fits and isinstance(chosen, Selection):
        lines += ["", prediction_report(chosen.kept, fits)]
    return "\n".join(lines) + "\n"


def prediction_report(results: list[dict], fits: dict) -> str:
    """Predicted vs measured blocking sync per run, with the reason beside each miss."""
    from labkit.measure.costmodel import TOLERANCE, prediction_table, prediction_text

    return "\n".join([
        f"Predicted vs measured blocking sync (ratio = predicted ÷ measured; the target is within {TOLERANCE:.0%}).",
        "wait = how long rank 0 waited for the last rank to arrive (median per step, measured from the",
        "timelines): inside the measured sync, outside the model. The note says why a method misses.", "",
        prediction_text(prediction_table(results, fits))])


def is_short(result: dict) -> bool:
    """A demonstration run, stopped by `max_steps` before its epochs ended: its accuracy
    says nothing about the method, so the notebooks show none for it."""
    return bool((result.get("config") or {}).get("max_steps"))


def _ms(seconds) -> str:
    return "—" if seconds is None else f"{1e3 * seconds:.1f} ms"


def describe(result: dict) -> str:
    """Sentences about one run, each built from its result.json (for a notebook to print
    beside the run). A figure the run does not hold is said to be missing, not guessed."""
    s = result.get("summary") or {}
    steps = s.get("measured_steps", len(result.get("steps", [])))
    lines = [f"{method(result)} on {result.get('world_size')} rank(s): {s.get('throughput_img_s', 0):.1f} img/s "
             f"over {steps} measured step(s) (after {s.get('warmup_steps', 0)} warm-up step(s))."]
    step = s.get("step_time_median_s")
    if step:
        sync = s.get("sync_time_median_s") or 0.0
        lines.append(f"Median step {_ms(step)}: waiting for data {_ms(s.get('data_time_median_s'))}, forward + "
                     f"backward {_ms(s.get('compute_time_median_s'))}, blocked in sync {_ms(sync)} "
                     f"({s.get('sync_share_pct', 0):.1f} % of all step time).")
    sent = s.get("bytes_sent_per_step") or 0
    lines.append(f"Rank 0 sent {sent / 1e6:.2f} MB per step in {s.get('collectives_per_step') or 0:.0f} call(s)."
                 if sent else "Rank 0 sent nothing: no communication.")
    if s.get("compute_only_step_s") is not None and s.get("exposed_comm_s") is not None:
        floor = s.get("exposed_comm_noise_s")
        exposed = s["exposed_comm_s"]
        line = (f"Compute-only step (same work, no synchronization): {_ms(s['compute_only_step_s'])}; the step less "
                f"its data wait is {_ms(exposed)} longer ({s.get('exposed_comm_pct') or 0:.1f} %)"
                + (f", noise floor ± {_ms(floor)}" if floor is not None else ""))
        if exposed <= (floor or 0.0):
            line += (": not above the noise of the two measurements, so no cost of communication is measurable"
                     " here.")
        else:
            line += ": what communication added to the step, overlapped or not."
        lines.append(line)
    else:
        lines.append("Exposed communication: not known — "
                     + (s.get("exposed_comm_reason") or "no compute-only calibration in this run") + ".")
    if s.get("achieved_busbw_gb_s") is not None:
        lines.append(f"Achieved bus bandwidth of the blocking sync: {s['achieved_busbw_gb_s']:.2f} GB/s.")
    elif s.get("achieved_busbw_reason"):
        lines.append(f"No achieved bus bandwidth: {s['achieved_busbw_reason']}.")
    if is_short(result):
        lines.append(f"A short run ({len(result.get('steps', []))} steps): its loss and accuracy are not a verdict "
                     "on the method, so none is quoted.")
    elif s.get("best_val_top1") is not None:
        lines.append(f"Final training loss {s.get('final_train_loss', float('nan')):.3f}; best validation top-1 "
                     f"{s['best_val_top1']:.1f} %.")
    return "\n".join(lines)


def same_setup(result: dict, results: list[dict]) -> list[dict]:
    """The finished runs (fault-free, any method) made with the same setup as `result`:
    profile, model, world size, global batch, learning rate, seed, number type and number
    of steps. Those are the runs a sentence may compare it with."""
    keys = ("profile", "model", "lr", "learning_rate", "seed", "dtype", "batch_size", "epochs", "max_steps")

    def setup(r):
        cfg = r.get("config") or {}
        return (r.get("world_size"), images_per_step(r), len(r.get("steps", [])), *(cfg.get(k) for k in keys))

    mine = setup(result)
    return [r for r in results if r.get("status", "ok") == "ok" and not (r.get("config") or {}).get("fault")
            and not (r.get("config") or {}).get("resume") and setup(r) == mine]
