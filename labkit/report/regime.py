"""The why of a ranking, in numbers from the runs: how oversubscribed the machine is, how
costly a call and a byte are on its links, and what that predicts for other links.

- Oversubscription ratio = the compute-only step of n ranks (each on global batch ÷ n
  images) ÷ the step of one process on the whole batch (`single`). Above 1, the n ranks
  lose before a byte moves: on 2 cores, 4 ranks share them, and each small batch uses a
  core less well than one large one.
- α (seconds a call) and β (seconds a byte) of the all-reduce on this machine, fitted by
  `labkit bench collectives` (costmodel.fit), beside NCCL-class figures for a GPU box and
  assumed ones for a 1 Gbit/s network (LINKS, each with where it comes from).
- Per method: its calls per step × α (latency) and bytes per step × β (bandwidth) on each
  link — a prediction, worded as one: a method that issues many small calls loses on a
  link with a large α, one that sends many bytes on a link with a small bandwidth.
"""

from __future__ import annotations

import statistics

from .costmodel import TOLERANCE, ops_per_step
from .selection import comparison_setup, method

# Other links, for predictions: name → (α a call, bus bandwidth in GB/s as nccl-tests defines
# busbw, where the figures come from, the `link=` rate of an emulated cluster at that speed or
# None where these CPUs would not be the nodes).
LINKS = {
    "4-GPU NVLink box (NCCL)": (10e-6, 200.0,
                                "NCCL all-reduce of a few bytes ≈ 10 µs on A100-SXM4 (NVIDIA/nccl issue #583); "
                                "busbw ≈ 200 GB/s on A100 NVLink (NVIDIA/nccl-tests issue #178)", None),
    "10 Gbit/s Ethernet cluster (gloo)": (50e-6, 1.25, "an assumption: 10 Gbit/s = 1.25 GB/s a link, α = 50 µs a "
                                                       "call", "10gbit"),
    "1 Gbit/s Ethernet cluster (gloo)": (100e-6, 0.125,
                                         "an assumption: 1 Gbit/s = 0.125 GB/s a link, α = 0.1 ms a call (a few TCP "
                                         "round trips on a LAN); the emulated cluster (notebook 07) measures it",
                                         "1gbit"),
}


def oversubscription(results: list[dict]) -> dict | None:
    """{"single_s", "ranks", "multi_s", "ratio"}: the median compute-only step of the runs on
    n > 1 ranks (the largest n) ÷ single's (one process, the whole batch; its compute-only
    step, else its median step). None without both kinds of run."""
    def compute_only(r):
        s = r.get("summary") or {}
        return s.get("compute_only_step_s") or s.get("step_time_median_s")

    solo = [compute_only(r) for r in results if r.get("world_size") == 1 and compute_only(r)]
    world = max((r.get("world_size") or 1 for r in results), default=1)
    multi = [(r.get("summary") or {}).get("compute_only_step_s") for r in results if r.get("world_size") == world > 1]
    multi = [m for m in multi if m]
    if not solo or not multi:
        return None
    single_s, multi_s = statistics.median_low(solo), statistics.median_low(multi)  # a run's figure, never a midpoint
    # the calibration's own spread (max − min of its rounds' medians), typical over these runs:
    # a gap smaller than it is not the ranks' compute winning or losing
    spreads = [(r.get("summary") or {}).get("compute_only_spread_s") for r in results]
    spreads = [v for v in spreads if v is not None]
    noise_s = statistics.median(spreads) if spreads else None
    return {"single_s": single_s, "ranks": world, "multi_s": multi_s, "ratio": multi_s / single_s,
            "noise_s": noise_s}


def per_method_costs(results: list[dict], fits: dict | None) -> list[dict]:
    """Per method (its runs at the largest world size; step times the median over them): calls and MB per step, and the
    latency (calls × α) and bandwidth (bytes × β) parts of its communication — measured α, β
    of this machine where `fits` has them, and on each of LINKS."""
    rows, repeats = [], {}
    world = max((r.get("world_size") or 1 for r in results), default=1)
    for r in results:
        if r.get("world_size") == world >= 2:
            repeats.setdefault(method(r), []).append(r)

    def median_of(runs, key):  # over the repeats: the lower middle one, a figure a run made (never a midpoint)
        values = sorted(v for v in ((r.get("summary") or {}).get(key) for r in runs) if v)
        return values[(len(values) - 1) // 2] if values else None

    for label, runs in repeats.items():
        r, s = runs[0], runs[0].get("summary") or {}  # calls and bytes: the same in every repeat
        ops = ops_per_step(r)
        calls = sum(c for c, _ in ops.values()) or s.get("collectives_per_step") or 0
        sent = s.get("bytes_sent_per_step") or 0
        step_s, compute_s = median_of(runs, "step_time_median_s"), median_of(runs, "compute_only_step_s")
        row = {"method": label, "calls": calls, "MB_sent": sent / 1e6, "step_ms": 1e3 * (step_s or 0),
               "compute_only_ms": 1e3 * compute_s if compute_s else None,
               # communication inside backward (no busbw of its own, for that reason) can hide behind compute
               "overlapped": bool(sent) and s.get("achieved_busbw_gb_s") is None}
        if fits:
            known = [op for op in ops if op in fits]
            row["here_latency_ms"] = 1e3 * sum(ops[op][0] * fits[op]["alpha_s"] for op in known)
            row["here_bandwidth_ms"] = 1e3 * sum(ops[op][1] * fits[op]["beta_s_per_byte"] for op in known)
        for name, (alpha, busbw, _, _) in LINKS.items():
            # rank 0's bytes on its own link at the link's rate; every call pays α once
            row[f"{name}: ms"] = 1e3 * (calls * alpha + sent / (busbw * 1e9))
        rows.append(row)
    return rows


def predicted_step_ms(row: dict, link: str) -> float | None:
    """These nodes' step on `link`: the compute-only step measured here plus the link's
    communication, or the larger of the two for a method that overlaps it with backward
    (the best overlap can do). None without a compute-only step."""
    compute, comm = row["compute_only_ms"], row[f"{link}: ms"]
    if compute is None:
        return None
    return max(compute, comm) if row["overlapped"] else compute + comm


def predicted_order(known: list[tuple[float, str]]) -> str:
    """(step ms, method) fastest first, joined by '>' or, where the next step is within the
    cost model's tolerance of this one, '≈': the model cannot order those two."""
    text = known[0][1]
    for (a, _), (b, label) in zip(known, known[1:]):
        text += (" ≈ " if b <= a * (1 + TOLERANCE) else " > ") + label
    return text


def measured_on(link_rate: str | None, elsewhere: list[dict], like: dict) -> dict[str, float]:
    """method → median step (ms) of the finished runs in `elsewhere` made on emulated nodes
    linked at `link_rate` (config `link`, e.g. notebook 07's) with the same work as `like`:
    its setup but for the nodes and the link (like with like)."""
    steps, setup = {}, comparison_setup(like, ignore=("nodes", "link"))
    for r in elsewhere:
        s = r.get("summary") or {}
        if (link_rate and (r.get("config") or {}).get("link") == link_rate and s.get("step_time_median_s")
                and comparison_setup(r, ignore=("nodes", "link")) == setup):
            steps.setdefault(method(r), []).append(1e3 * s["step_time_median_s"])
    return {label: statistics.median(values) for label, values in steps.items()}


def regime_lines(results: list[dict], fits: dict | None, elsewhere: list[dict] | None = None) -> list[str]:
    """The regime in sentences, each built from the runs or worded as a prediction; `elsewhere`:
    runs on emulated links, whose measured step stands beside the prediction for that link."""
    lines = []
    over = oversubscription(results)
    cores = max(((r.get("env") or {}).get("cpu_count") or 0 for r in results), default=0)
    if over:
        gap = over["multi_s"] - over["single_s"]
        if over["noise_s"] is not None and abs(gap) <= over["noise_s"]:
            verdict = (f"the same within the calibration's spread ({1e3 * over['noise_s']:.0f} ms): compute "
                       f"alone neither wins nor loses it, communication decides")
        else:
            verdict = ("so they lose before a byte moves" if gap > 0 else
                       "so the ranks' compute alone is faster than one process")
        lines.append(f"Oversubscription: {over['ranks']} ranks' compute-only step is {1e3 * over['multi_s']:.0f} ms "
                     f"against {1e3 * over['single_s']:.0f} ms for one process on the whole batch: ratio "
                     f"{over['ratio']:.2f}, {verdict}" + (f" ({over['ranks']} ranks on {cores} cores)." if cores else "."))
    else:
        lines.append("Oversubscription: not known here (it needs a single run and a multi-rank run with a "
                     "compute-only calibration).")
    fit = (fits or {}).get("all_reduce")
    # one meaning per symbol: 00b's α is one message's cost; a whole all-reduce call is many messages
    lines.append("α_call below is the fixed cost of one whole collective call, β_call its cost a byte (not 00b's "
                 "α and β of one message: a ring all-reduce on n ranks sends 2(n−1) messages one after another).")
    if fit:
        lines.append(f"This machine's all-reduce: α_call = {1e3 * fit['alpha_s']:.2f} ms a call, β_call = "
                     f"{1e9 * fit['beta_s_per_byte']:.2f} ns a byte (labkit bench collectives).")
    for name, (alpha, busbw, source, _) in LINKS.items():
        lines.append(f"{name}: α_call ≈ {1e6 * alpha:.0f} µs a call, busbw ≈ {busbw:g} GB/s — {source}.")
    costs = per_method_costs(results, fits)
    if costs and fit:
        calls = sorted(costs, key=lambda row: row["calls"])
        few, many = calls[0], calls[-1]
        lines.append(f"Here a call costs α_call = {1e3 * fit['alpha_s']:.2f} ms: {many['method']}'s {many['calls']:.0f} calls a "
                     f"step cost {many['here_latency_ms']:.0f} ms in latency alone (of its {many['step_ms']:.0f} ms "
                     f"median step), {few['method']}'s {few['calls']:.0f} cost {few['here_latency_ms']:.0f} ms (of "
                     f"{few['step_ms']:.0f} ms).")
    for name, (_, _, _, rate) in LINKS.items() if costs else ():
        if rate is None:  # other hardware: its compute is not measured here, so communication alone
            ordered = sorted(costs, key=lambda row: row[f"{name}: ms"])
            lines.append(f"Prediction for a {name} (α_call and busbw above; its compute is not measured here): communication "
                         "per step " + ", ".join(f"{row['method']} {row[f'{name}: ms']:.1f} ms" for row in ordered) + ".")
            continue
        steps = {row["method"]: predicted_step_ms(row, name) for row in costs}
        known = sorted((ms, label) for label, ms in steps.items() if ms is not None)
        if not known:
            continue
        seen = measured_on(rate, elsewhere or [], results[0])
        lines.append(f"Prediction for these nodes on a {name} (compute-only step measured here + communication "
                     "at α_call and busbw above; a method overlapping backward: the larger of the two): step "
                     + ", ".join(f"{label} {ms:.0f} ms" + (f" (measured at link={rate}: {seen[label]:.0f} ms)"
                                                           if label in seen else "") for ms, label in known)
                     + f"; order {predicted_order(known)} ('≈': within the model's ±{TOLERANCE:.0%}).")
    return lines
