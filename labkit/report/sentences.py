"""Sentences built from results: one run described, the verdicts of a comparison, and the
performance report of `labkit compare` and notebook 06.

Every sentence about a measured result is built from that result's numbers (or says the
figure is missing); nothing is guessed. Names no method; imports no torch.
"""

from __future__ import annotations

import pandas as pd

from .costmodel import TOLERANCE, prediction_table, prediction_text
from .frames import (comparison_table, disagreements, epoch_table, memory_frame, overlaps, report_table, runs_frame,
                     scaling_frame)
from .regime import regime_lines
from .selection import Selection, is_short, method


def _table_text(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="—")  # 4 significant digits


def _ms(seconds) -> str:
    return "—" if seconds is None else f"{1e3 * seconds:.1f} ms"


def _row_label(row) -> str:
    return f"{row.method} ×{int(row.world_size)}" if pd.notna(row.world_size) else str(row.method)


def _spread(row) -> str:
    n = int(row.repeats)
    return (f"{row.spread_low_img_s:.1f}–{row.spread_high_img_s:.1f} over {n} repeat{'s' if n > 1 else ''}"
            if pd.notna(row.spread_low_img_s) else f"no spread, {n} run{'s' if n > 1 else ''}")


def _known(row) -> bool:
    return pd.notna(row.spread_low_img_s) and pd.notna(row.spread_high_img_s)


def ranking(group: pd.DataFrame) -> str:
    """One setup's methods fastest first, `>` where the gap to the next is beyond both spreads,
    `≈` where the spreads overlap (noise: the order between them is not known). Neighbours
    only: groups() says which methods are told apart from which."""
    rows = list(group.sort_values("throughput_img_s", ascending=False).itertuples())
    text = _row_label(rows[0])
    for a, b in zip(rows, rows[1:]):
        text += (" ≈ " if overlaps(a, b) or not (_known(a) and _known(b)) else " > ") + _row_label(b)
    return text


def told_apart(group: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Every pair of one setup's methods whose spreads do not overlap, neighbours or not, as
    (faster method, [the slower ones it clears]), fastest first. A method without a spread is
    told apart from none."""
    rows = [r for r in group.sort_values("throughput_img_s", ascending=False).itertuples() if _known(r)]
    pairs = []
    for i, a in enumerate(rows):
        cleared = [_row_label(b) for b in rows[i + 1:] if b.spread_high_img_s < a.spread_low_img_s]
        if cleared:
            pairs.append((_row_label(a), cleared))
    return pairs


def letters(group: pd.DataFrame) -> dict[str, str]:
    """A compact letter display: method → letters; two methods share a letter exactly when
    their spreads overlap (not told apart), and a letter is a set of methods whose spreads all
    share a point. Spreads are intervals, so these sets are the intervals' maximal cliques,
    found by one sweep over the ends (fastest first: letter a holds the fastest)."""
    rows = [r for r in group.itertuples() if _known(r)]
    # a start before an end at the same point: touching spreads overlap, as frames.overlaps says
    events = sorted([(-r.spread_high_img_s, 0, i) for i, r in enumerate(rows)]
                    + [(-r.spread_low_img_s, 1, i) for i, r in enumerate(rows)])
    active, cliques, opened = set(), [], False
    for _, kind, i in events:
        if kind == 0:
            active.add(i)
            opened = True
        else:
            if opened:  # the last event was a start: what is open now is a maximal set
                cliques.append(set(active))
            opened = False
            active.discard(i)
    marks = {_row_label(r): "" for r in group.itertuples()}
    for letter, clique in zip("abcdefghijklmnopqrstuvwxyz", cliques):
        for i in sorted(clique):
            marks[_row_label(rows[i])] += letter
    return {label: mark or "–" for label, mark in marks.items()}  # –: no spread, no letter


def groups_lines(group: pd.DataFrame) -> list[str]:
    """The ranking as groups: the letters, and each method with the methods it clears."""
    ordered = group.sort_values("throughput_img_s", ascending=False)
    marks = letters(ordered)
    lines = ["  groups (methods sharing a letter are not told apart; '–': no spread): "
             + ", ".join(f"{label} [{mark}]" for label, mark in marks.items())]
    pairs = told_apart(ordered)
    lines += [f"  told apart: {faster} > {{{', '.join(slower)}}}" for faster, slower in pairs]
    if not pairs:
        lines.append("  told apart: none — every spread overlaps every other (or has none)")
    return lines


def verdicts(table: pd.DataFrame) -> list[str]:
    """Sentences on the fastest methods, one setup at a time (comparison_table's `setup`: the
    same length, global batch and recipe; never across setups): the ranking, and whether the
    leader's gap to the next is beyond both methods' spreads or is noise."""
    lines = []
    setups = table["setup"].unique() if "setup" in table else [None]
    if len(setups) > 1:
        lines.append(f"{len(setups)} setups ran ({'; '.join(map(str, setups))}): each is ranked on its own, "
                     "no figure is compared across them.")
    for setup in setups:
        group = table if setup is None else table[table.setup == setup]
        group = group.sort_values("throughput_img_s", ascending=False)
        best = group.iloc[0]
        where = f"Over {setup}" if setup is not None else "Here"
        if len(group) == 1:
            lines.append(f"{where} only {_row_label(best)} ran, at {best.throughput_img_s:.1f} img/s ({_spread(best)}).")
            continue
        second = group.iloc[1]
        gap = best.throughput_img_s - second.throughput_img_s
        line = (f"{where} the fastest is {_row_label(best)} at {best.throughput_img_s:.1f} img/s ({_spread(best)}); "
                f"{_row_label(second)} is {gap:.1f} img/s behind ({_spread(second)})")
        if pd.isna(best.spread_low_img_s) or pd.isna(second.spread_low_img_s):
            line += ": no spread to tell that gap from noise"
        elif overlaps(best, second):
            line += ": noise — the spreads overlap, so neither is faster on this evidence"
        else:
            line += ": larger than both spreads"
        lines.append(line + ".")
        lines.append(f"  ranking ('>' beyond the spreads, '≈' noise; each sign compares neighbours): {ranking(group)}")
        lines += groups_lines(group)
    return lines


def disagreement_lines(runs: pd.DataFrame) -> list[str]:
    """A sentence per method, world size and setup whose runs should agree and do not: some two
    of them have own intervals that do not overlap (frames.disagreements)."""
    lines = []
    pairs = disagreements(runs)
    for (setup, label, world), group in pairs.groupby(["setup", "method", "world_size"], sort=False):
        if len(group) == 1:
            row = group.iloc[0]
            (lo_a, hi_a), (lo_b, hi_b), (da, db) = row.slower_range, row.faster_range, row.disturbed
            lines.append(f"Disagreement: {label} ×{int(world)} over {setup} made {row.slower_img_s:.1f} img/s in "
                         f"{row.slower} ({lo_a:.1f}–{hi_a:.1f}) and {row.faster_img_s:.1f} in {row.faster} "
                         f"({lo_b:.1f}–{hi_b:.1f}): beyond each run's own step noise, so the machine was not the same "
                         f"for both (disturbed steps {da:.0f} and {db:.0f}). Its spread covers both runs.")
            continue
        mine = runs[(runs.setup == setup) & (runs.method == label) & (runs.world_size == world)]
        figures = ", ".join(f"{r.throughput_img_s:.1f} ({r.throughput_low_img_s:.1f}–{r.throughput_high_img_s:.1f})"
                            for r in mine.sort_values("throughput_img_s").itertuples())
        lines.append(f"Disagreement: {label} ×{int(world)} over {setup}: its {len(mine)} runs made {figures} img/s; "
                     f"{len(group)} pairs of them lie beyond each other's step noise, so the machine was not the "
                     f"same for all (disturbed steps {', '.join(f'{d:.0f}' for d in mine.disturbed_steps)}). "
                     "Its spread covers them all.")
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
             "the figure comparable across overlapped and blocking methods. img/s is the steady-state",
             "throughput (global batch ÷ median step; the median over repeats); low–high is its spread, from",
             "the lowest to the highest end of the repeats' ~95 % intervals: methods whose spreads overlap",
             "are not told apart. wall img/s counts every step's wall time; `disturbed` counts steps over",
             "2 × the median step, the run's own or its other repeats' (the machine was busy). img/s and",
             "every figure is the median over repeats (of an even count the lower middle one: a figure a",
             "run made, never a midpoint); a repeat over 2× faster or slower than the median of its other",
             "repeats is an outlier, left out with its figures. Runs are compared only within one setup",
             "(length, batch, recipe)" + (f"; vs base: throughput ÷ {baseline}'s in the same setup." if baseline else "."),
             ""]
    if isinstance(chosen, Selection):
        lines += [f"Compared: {len(chosen.kept)} run(s); left out: {len(chosen.left_out)}."] + chosen.lines() + [""]
    lines += [_table_text(report_table(table)), ""] + verdicts(table)
    disagree = disagreement_lines(runs)
    lines += ["", *disagree] if disagree else []
    if isinstance(chosen, Selection):
        lines += epoch_lines(epoch_table(chosen.kept))
        lines += memory_lines(memory_frame(chosen.kept))
    scaling = scaling_frame(runs)
    several = scaling.groupby(["setup", "method"]).world_size.transform("nunique") > 1 if len(scaling) else []
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
    if isinstance(chosen, Selection) and chosen.kept:
        lines += ["", "Why this ranking (the regime in numbers; the predictions are predictions):", "",
                  *regime_lines(chosen.kept, fits)]
    return "\n".join(lines) + "\n"


EPOCH_HEADINGS = {"setup": "setup", "method": "method", "world_size": "ranks", "epoch": "epoch", "repeats": "repeats",
                  "train_loss": "train loss", "val_loss": "val loss", "val_top1": "top-1 %", "top1_se_pct": "± se",
                  "time_s": "time s", "throughput_img_s": "img/s"}


def epoch_lines(epochs: pd.DataFrame) -> list[str]:
    """The report's per-epoch statistics (frames.epoch_table), with what each column means."""
    if not len(epochs):
        return []
    shown = epochs[list(EPOCH_HEADINGS)].rename(columns=EPOCH_HEADINGS).astype({"ranks": "Int64", "epoch": "Int64"})
    return ["", "Per epoch (the median over repeats): training loss averaged over every data rank, validation",
            "loss and top-1 with ± its binomial standard error √(p(1−p)/N) for the N validation images (no",
            "top-1 for a short max_steps run: a few steps say nothing about accuracy), the epoch's wall time",
            "and images per second (validation excluded). Chance is a loss of ln(classes).", "",
            _table_text(shown)]


MEMORY_HEADINGS = {"setup": "setup", "method": "method", "world_size": "ranks", "params_MB": "params MB",
                   "grads_MB": "grads MB", "optimizer_state_MB": "optimizer MB", "held_MB": "held MB",
                   "held_least_MB": "least MB", "step_peak_MB": "step peak MB", "step_added_MB": "added MB",
                   "peak_MB": "run peak MB"}


def memory_lines(memory: pd.DataFrame) -> list[str]:
    """The report's memory table (frames.memory_frame), with what each column means."""
    if not len(memory):
        return []
    shown = memory[list(MEMORY_HEADINGS)].rename(columns=MEMORY_HEADINGS).astype({"ranks": "Int64"})
    return ["", "Memory per rank, in MB: parameters, gradients and optimizer state counted from the tensors",
            "(a sharded tensor: this rank's shard) at the end of the first measured step, for the rank that",
            "holds the most; held = their sum there, least = the sum on the rank that holds the least.",
            "Buffers, communication buffers and activations are not counted: they are in the measured peaks:",
            "step peak over the training steps up to the count, added = how far that rose above what the rank",
            "held when training began; run peak over the whole run (validation and checkpoints included, where",
            "a sharded method gathers its model whole).", "",
            _table_text(shown), ""] + [f"peak: {source}." for source in memory.peak_source.unique()]


def prediction_report(results: list[dict], fits: dict) -> str:
    """Predicted vs measured blocking sync per run, with the reason beside each miss."""
    return "\n".join([
        f"Predicted vs measured blocking sync (ratio = predicted ÷ measured; the target is within {TOLERANCE:.0%}).",
        "wait = how long rank 0 waited for the last rank to arrive (median per step, measured from the",
        "timelines): inside the measured sync, outside the model. The note says why a method misses.", "",
        prediction_text(prediction_table(results, fits))])


def describe(result: dict) -> str:
    """Sentences about one run, each built from its result.json (for a notebook to print
    beside the run). A figure the run does not hold is said to be missing, not guessed."""
    s = result.get("summary") or {}
    steps = s.get("measured_steps", len(result.get("steps", [])))
    lines = [f"{method(result)} on {result.get('world_size')} rank(s): {s.get('throughput_img_s', 0):.1f} img/s "
             f"in steady state (global batch ÷ median step) over {steps} measured step(s) (after "
             f"{s.get('timing_warmup_steps', 0)} warm-up step(s))"
             + (f"; {s['throughput_wall_img_s']:.1f} img/s by the wall clock." if s.get("throughput_wall_img_s")
                else ".")]
    if s.get("disturbed_steps"):
        lines.append(f"{s['disturbed_steps']} of {steps} steps were disturbed (over {_ms(s.get('disturbed_threshold_s'))},"
                     " twice the median): the machine was busy with something else then.")
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
    memory = {m["rank"]: m for m in result.get("memory") or [] if m and m.get("params_bytes") is not None}
    if 0 in memory:  # result.json's `memory`, defined in memory.py and docs/EXPERIMENT_GUIDE.md
        m = memory[0]
        lines.append(f"Rank 0 holds {m['params_bytes'] / 1e6:.3g} MB of parameters, {m['grads_bytes'] / 1e6:.3g} MB "
                     f"of gradients and {m['optimizer_state_bytes'] / 1e6:.3g} MB of optimizer state (counted); "
                     f"measured, it held {m['start_bytes'] / 1e6:.4g} MB when training began, peaked at "
                     f"{m['step_peak_bytes'] / 1e6:.4g} MB over the training steps up to the count and at "
                     f"{m['peak_bytes'] / 1e6:.4g} MB over the whole run ({m['peak_source']}).")
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


def comparison_lesson(table: pd.DataFrame, results: list[dict], faster: str, slower: str) -> dict:
    """A lesson of the form "`faster` is faster than `slower`", measured: the figure is the ratio
    of their median throughputs (comparison_table, one setup), the interval the ratio of their
    spreads' ends (faster's low ÷ slower's high … faster's high ÷ slower's low), shown when that
    interval lies wholly above 1 (the spreads do not overlap). Else `why` says what this machine's
    own runs show against it: the spreads overlapping, ranks sharing cores (the oversubscription
    ratio), the slower method's exposed communication within its noise floor (little to gain),
    disturbed steps. Returns lessons.record's figure, unit, low, high, shown and why."""
    from .regime import oversubscription

    rows = {row.method: row for row in table.sort_values("world_size", ascending=False).itertuples()}
    missing = [name for name in (faster, slower) if name not in rows]
    if missing:
        return {"figure": None, "unit": "×", "low": None, "high": None, "shown": False,
                "why": f"no finished run of {' and '.join(missing)} in this comparison"}
    a, b = rows[faster], rows[slower]
    ratio = a.throughput_img_s / b.throughput_img_s
    known = _known(a) and _known(b)
    low, high = (a.spread_low_img_s / b.spread_high_img_s, a.spread_high_img_s / b.spread_low_img_s) if known else (None, None)
    spreads = (f"{faster} {a.spread_low_img_s:.1f}–{a.spread_high_img_s:.1f} img/s over {int(a.repeats)} repeats, "
               f"{slower} {b.spread_low_img_s:.1f}–{b.spread_high_img_s:.1f} over {int(b.repeats)}") if known else ""
    if known and low > 1:
        return {"figure": ratio, "unit": "×", "low": low, "high": high, "shown": True,
                "why": f"the spreads do not overlap ({spreads})"}
    reasons = ([f"the spreads overlap ({spreads})" if not (known and high < 1) else
                f"{slower} is faster beyond both spreads ({spreads})"] if known else
               ["a method has no spread to tell a gap from noise"])
    over = oversubscription(results)
    cores = max(((r.get("env") or {}).get("cpu_count") or 0 for r in results), default=0)
    if over and cores and over["ranks"] > cores:
        reasons.append(f"{over['ranks']} ranks share {cores} cores (their compute-only step is {over['ratio']:.2f}× one "
                       "process's), so transfers and backward compete for the same cores: overlap has no idle core "
                       "to hide behind")
    mine = [r.get("summary") or {} for r in results if method(r) == slower]
    exposed = sorted(s["exposed_comm_s"] for s in mine if s.get("exposed_comm_s") is not None)
    floors = sorted(s["exposed_comm_noise_s"] for s in mine if s.get("exposed_comm_noise_s") is not None)
    if exposed and floors:
        e, f = exposed[(len(exposed) - 1) // 2], floors[(len(floors) - 1) // 2]
        if abs(e) <= f:
            reasons.append(f"{slower}'s exposed communication ({1e3 * e:.0f} ms) is within its noise floor "
                           f"(± {1e3 * f:.0f} ms): on this link there is little communication to hide")
    disturbed = sum(int(count) for count in (a.disturbed_steps, b.disturbed_steps) if pd.notna(count))
    if disturbed:
        reasons.append(f"{disturbed} of their steps were disturbed (the machine was busy)")
    return {"figure": ratio, "unit": "×", "low": low, "high": high, "shown": False, "why": "; ".join(reasons)}
