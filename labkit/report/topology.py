"""Runs on several (emulated) nodes, side by side: what crossed the links, and what a slower
link will cost, predicted from a run on a faster one (notebook 07).

The prediction is the simplest one the bytes allow. A method moves the same bytes over the
busiest node link whatever its rate (result.json's `topology`, from the kernel's counters), so
going from rate r_fast to r_slow adds, per step, at most

    busiest link bytes × (1/r_slow − 1/r_fast)

to the step: exactly that when the link is the bottleneck and nothing hides it (a blocking
method), less when the transfer overlaps with backward (ddp, overlap, powersgd). The slow run
says which.
"""

from __future__ import annotations

import pandas as pd

from labkit.report.selection import method


def link_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run with a topology: method, link, steady step time and what crossed the links."""
    rows = []
    for r in results:
        topo, s = r.get("topology") or {}, r.get("summary") or {}
        if not topo.get("link_rate_bytes_s"):
            continue
        rows.append({"method": method(r), "link": topo["link"], "rate_bytes_s": topo["link_rate_bytes_s"],
                     "step_ms": 1e3 * s["step_time_median_s"], "sync_ms": 1e3 * s["sync_time_median_s"],
                     "img_s": s["throughput_img_s"],
                     # the ~95 % interval of the median step (timing.py), where the run has one
                     "step_low_ms": 1e3 * s["throughput_img_s"] * s["step_time_median_s"] / s["throughput_high_img_s"]
                     if s.get("throughput_high_img_s") else None,
                     "step_high_ms": 1e3 * s["throughput_img_s"] * s["step_time_median_s"] / s["throughput_low_img_s"]
                     if s.get("throughput_low_img_s") else None,
                     "counted_MB_per_rank": s["bytes_sent_per_step"] / 1e6,
                     "busiest_link_MB": topo["busiest_link_bytes_per_step"] / 1e6,
                     "link_ms_at_rate": 1e3 * topo["link_time_per_step_s"]})
    return pd.DataFrame(rows)


def predicted_vs_measured(frame: pd.DataFrame, fast: str, slow: str) -> pd.DataFrame:
    """Each method's step at the `slow` link predicted from its run at `fast`, beside the measured one."""
    by = {link: group.set_index("method") for link, group in frame.groupby("link")}
    if fast not in by or slow not in by:
        return pd.DataFrame()
    quick, slow_runs = by[fast], by[slow]
    rows = []
    for name in quick.index.intersection(slow_runs.index):
        q = quick.loc[name]
        extra_ms = 1e3 * q["busiest_link_MB"] * 1e6 * (1 / slow_runs.loc[name, "rate_bytes_s"] - 1 / q["rate_bytes_s"])
        predicted = q["step_ms"] + extra_ms
        measured = slow_runs.loc[name, "step_ms"]
        rows.append({"method": name, f"step at {fast} (ms)": q["step_ms"], "busiest link (MB/step)": q["busiest_link_MB"],
                     f"predicted at {slow} (ms)": predicted, f"measured at {slow} (ms)": measured,
                     "measured / predicted": measured / predicted, "reading": reading(measured / predicted)})
    return pd.DataFrame(rows).sort_values(f"measured at {slow} (ms)").reset_index(drop=True)


def noise_note(frame: pd.DataFrame, link: str) -> str:
    """How many neighbours in the order are within each other's step interval (one run each:
    their order there is noise, not a verdict)."""
    rows = frame[frame["link"] == link].sort_values("step_ms")
    if rows["step_high_ms"].isna().any() or len(rows) < 2:
        return " (one run each, no interval: read small gaps as noise)"
    lows, highs = list(rows["step_low_ms"]), list(rows["step_high_ms"])
    tied = sum(highs[i] >= lows[i + 1] for i in range(len(rows) - 1))
    return f" ({tied} of {len(rows) - 1} neighbours within each other's step interval: their order is noise)"


def reading(ratio: float) -> str:
    """What a ratio of measured to predicted says (within 25 %: the link's bytes explain it)."""
    if ratio > 1.25:
        return "slower than its bytes: transfers one after the other (a push, then a pull), per-message latency, or TCP backing off"
    if ratio < 0.75:
        return "faster than its bytes allow: transfer hidden behind compute, or the fast run was disturbed"
    return "the link's bytes explain it (within 25 %)"


def ranking(frame: pd.DataFrame, link: str) -> list[str]:
    """Methods from fastest to slowest (median step) on `link`."""
    return list(frame[frame["link"] == link].sort_values("step_ms")["method"])


def ranking_sentence(frame: pd.DataFrame, links: list[str]) -> str:
    """What the runs say about the ranking, computed from them."""
    orders = {link: ranking(frame, link) for link in links if ranking(frame, link)}
    if len(orders) < 2:
        return "Only one link rate ran: no change of ranking can be seen."
    parts = [f"at {link}: {' < '.join(order)}" + noise_note(frame, link) for link, order in orders.items()]
    first, last = list(orders.values())[0], list(orders.values())[-1]
    moved = [m for m in first if m in last and first.index(m) != last.index(m)]
    verdict = (f"{len(moved)} of {len(first)} methods changed place" if moved else "the order did not change")
    return "Fastest to slowest step, " + "; ".join(parts) + f" — {verdict}."


def bytes_order_agreement(frame: pd.DataFrame, link: str, resamples: int = 2000, seed: int = 0) -> tuple:
    """How closely the methods' order by step time at `link` follows their order by the bytes over
    the busiest link: Spearman's rank correlation ρ (1: the same order; 0: unrelated), and its 90 %
    interval from a bootstrap over the methods (seeded, so the same runs give the same interval;
    a resample that repeats one method throughout has no order and is skipped). (nan, nan, nan)
    with fewer than 3 methods."""
    import numpy as np
    from scipy.stats import spearmanr

    rows = frame[frame["link"] == link]
    steps, link_bytes = rows["step_ms"].to_numpy(), rows["busiest_link_MB"].to_numpy()
    if len(rows) < 3:
        return float("nan"), float("nan"), float("nan")
    rho = float(spearmanr(steps, link_bytes).statistic)
    rng, found = np.random.default_rng(seed), []
    for _ in range(resamples):
        pick = rng.integers(0, len(rows), len(rows))
        if len(set(steps[pick])) > 1 and len(set(link_bytes[pick])) > 1:
            found.append(spearmanr(steps[pick], link_bytes[pick]).statistic)
    low, high = np.nanpercentile(found, [5, 95])
    return rho, float(min(low, rho)), float(max(high, rho))
