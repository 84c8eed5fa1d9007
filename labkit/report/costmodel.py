"""An alpha–beta–gamma model of communication, fitted from the collective microbenchmark,
and the one place that puts a run's predicted communication beside its measured sync.

For one operation, t(S) ≈ α + β·S: α is the fixed cost of a call (latency), β the cost
per byte of the message (1 / algorithm bandwidth). Each operation a method uses gets its
own fit — all_reduce, reduce_scatter, all_gather, send_recv — over the sizes the methods
really send (from kilobytes of a bias gradient up to the whole model, ~45 MB for
resnet18_small in float32).

The fit minimises the *relative* error, Σ ((α + β·S − t) / t)²: an ordinary least
squares would let the largest messages (seconds) set α and ignore the microsecond
ones; weighted by 1/t, a 1 KB message counts as much as a 64 MB one.

A run's communication per step is then predicted from what the loop counted of the calls
torch ran in every step record (`ops`: {operation: [calls, message bytes]}, see
training/comm_record.py `step_counts`):

    predicted = Σ over ops  calls × α_op + message bytes × β_op  +  Σ over passes  bytes × γ(S)

A parameter server's push and pull both count on its server, a ring's each of its 2(n−1)
neighbour exchanges (a send and a receive made together: one message). The last sum is the γ term of the α–β–γ model
(Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication Operations in
MPICH", 2005: a per-byte cost of local work): the method's own passes over its buffers
(copy in, ÷n, chunk additions, copy out), which it counts in `local_ops` ({"in_place" or
"fresh": [passes, bytes]}, as its About.passes declares). γ is not one number on a CPU: per byte, a pass
costs several times more once its buffer leaves the caches, and ~4× more again when it
writes a fresh buffer over glibc's 32 MB (the OS zeroes each new page: 3.2 GB/s at 16 MB,
0.6–0.75 GB/s from 32 MB on, all ranks at once; docs/BENCHMARKS.md). So γ(S) is the
microbenchmark's seconds per byte at the measured size nearest to the pass's mean size S.
The prediction is compared with the blocking sync time (`sync_time_median_s`) of methods
whose communication all happens there.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from .selection import method

FIT_OPS = ("all_reduce", "reduce_scatter", "all_gather", "send_recv", "broadcast", "reduce")
TOLERANCE = 0.25  # predicted within ±25 % of measured: the stated tolerance (docs/BENCHMARKS.md)
LOCAL = "local_passes"  # the fits' entry for γ: {kind: {"size_bytes": [...], "gamma_s_per_byte": [...]}}
# A method the model is known to miss says why in its own file (About.cost_model_note),
# and the worker copies that into result.json: docs/BENCHMARKS.md, "Predicted vs measured".


def fit(bench: dict, min_bytes: float = 0, max_bytes: float = float("inf")) -> dict:
    """{op: {"alpha_s", "beta_s_per_byte", "max_rel_error", "sizes"}}: t = α + β·S fitted by
    relative-error least squares with α, β ≥ 0, over the sizes in [min_bytes, max_bytes]."""
    fits = {}
    for op in sorted({row["op"] for row in bench["rows"]}):
        rows = [r for r in bench["rows"] if r["op"] == op and min_bytes <= r["size_bytes"] <= max_bytes]
        if len(rows) < 2:
            continue
        sizes = np.array([r["size_bytes"] for r in rows], dtype=float)
        times = np.array([r["time_s"] for r in rows], dtype=float)
        alpha, beta = _nonnegative_relative_fit(sizes, times)
        errors = (alpha + beta * sizes - times) / times
        order = np.argsort(sizes)
        fits[op] = {"alpha_s": alpha, "beta_s_per_byte": beta, "max_rel_error": float(np.abs(errors).max()),
                    "sizes": [int(sizes.min()), int(sizes.max())],
                    # the measured points themselves: where the line misses a method's sizes (bench_wire_s)
                    "size_bytes": sizes[order].astype(int).tolist(), "time_s": times[order].tolist()}
    local = {}
    for kind in sorted({row["kind"] for row in bench.get("local_rows", [])}):
        rows = sorted((r for r in bench["local_rows"] if r["kind"] == kind and min_bytes <= r["size_bytes"] <= max_bytes),
                      key=lambda r: r["size_bytes"])
        local[kind] = {"size_bytes": [r["size_bytes"] for r in rows],
                       "gamma_s_per_byte": [r["time_s"] / r["size_bytes"] for r in rows]}
    if local:
        fits[LOCAL] = local
    return fits


def _nonnegative_relative_fit(sizes: np.ndarray, times: np.ndarray) -> tuple[float, float]:
    """min Σ ((α + β·S)/t − 1)² subject to α, β ≥ 0 (two unknowns: try the free solution,
    else the best with one of them pinned at zero)."""
    design = np.stack([1 / times, sizes / times], axis=1)
    target = np.ones_like(times)
    (alpha, beta), *_ = np.linalg.lstsq(design, target, rcond=None)
    if alpha >= 0 and beta >= 0:
        return float(alpha), float(beta)
    candidates = []
    for column in (0, 1):
        x = design[:, column]
        value = max(float(x @ target / (x @ x)), 0.0)
        pair = (value, 0.0) if column == 0 else (0.0, value)
        candidates.append((float(((design @ np.array(pair)) - target) @ ((design @ np.array(pair)) - target)), pair))
    return min(candidates)[1]


def predict_op_s(op: str, calls: float, message_bytes: float, fits: dict) -> float | None:
    """The model's time for `calls` calls of `op` moving `message_bytes` in all."""
    if op not in fits:
        return None
    return calls * fits[op]["alpha_s"] + message_bytes * fits[op]["beta_s_per_byte"]


def ops_per_step(result: dict, key: str = "ops") -> dict:
    """{op: (calls, message bytes)} per step: the median over the measured (post-warm-up)
    steps of what the loop counted (DDP rebuilds its buckets after step 1); with
    key="local_ops", {kind: (passes, bytes)} of its own passes over its buffers."""
    warmup = (result.get("summary") or {}).get("timing_warmup_steps", 0)
    steps = [s for s in result.get("steps", [])[warmup:] if s.get(key) is not None]
    names = sorted({op for s in steps for op in s[key]})
    return {op: (statistics.median(s[key].get(op, [0, 0])[0] for s in steps),
                 statistics.median(s[key].get(op, [0, 0])[1] for s in steps)) for op in names}


def gamma_s_per_byte(kind: str, size_bytes: float, fits: dict) -> float | None:
    """γ(S): seconds per byte of one `kind` pass over an S-byte buffer, the microbenchmark's
    figure at the measured size nearest to S (by ratio: 45 MB reads the 32 MB figure, and both
    are over the allocator's threshold). None when the benchmark did not time that kind."""
    measured = (fits.get(LOCAL) or {}).get(kind)
    if not measured or not measured["size_bytes"]:
        return None
    sizes = measured["size_bytes"]
    nearest = min(range(len(sizes)), key=lambda i: abs(math.log(sizes[i] / max(size_bytes, 1))))
    return measured["gamma_s_per_byte"][nearest]


def predict_local_s(result: dict, fits: dict) -> float | None:
    """The γ term of one run's step: Σ over its kinds of pass, bytes × γ(bytes ÷ passes).
    0 for a method that counts no passes; None when the benchmark has no γ for one of them."""
    parts = [size * gamma if (gamma := gamma_s_per_byte(kind, size / max(passes, 1), fits)) is not None else None
             for kind, (passes, size) in ops_per_step(result, "local_ops").items() if size]
    return None if any(p is None for p in parts) else float(sum(parts))


def predict_wire_s(result: dict, fits: dict) -> float | None:
    """The α–β part of one run's step: Σ calls × α + bytes × β over the operations its
    loop counted. None when the run counted no operations or the benchmark has no fit
    for one of them (or was made at another world size)."""
    if not fits:
        return None
    ops = ops_per_step(result)
    if not ops:
        return None
    parts = [predict_op_s(op, calls, size, fits) for op, (calls, size) in ops.items()]
    return None if any(p is None for p in parts) else float(sum(parts))


def bench_wire_s(result: dict, fits: dict) -> float | None:
    """What the microbenchmark itself measured for the run's operations, not its α–β line:
    per op, calls × the measured time of one call at the mean message size (bytes ÷ calls),
    interpolated linearly between the neighbouring measured sizes. Beside the α–β part it shows
    how much of a miss is the line's (a line through 1 KB … 64 MB misses the largest sizes)."""
    ops = ops_per_step(result) if fits else {}
    if not ops or any("size_bytes" not in fits.get(op, {}) for op in ops):
        return None
    return float(sum(calls * _measured_call_s(fits[op], size / calls) for op, (calls, size) in ops.items() if calls))


def _measured_call_s(measured: dict, size: float) -> float:
    """One call's measured time at `size` bytes: linear between the neighbouring measured sizes;
    above the largest, its time per byte (below the smallest: its time, latency-bound)."""
    sizes, times = measured["size_bytes"], measured["time_s"]
    if size > sizes[-1]:
        return times[-1] * size / sizes[-1]
    return float(np.interp(size, sizes, times))


def predict_sync_s(result: dict, fits: dict) -> float | None:
    """Predicted sync seconds per step of one run: the α–β part plus the γ part (the latter
    left out, and shown as missing in the table, where the benchmark did not time passes)."""
    wire = predict_wire_s(result, fits)
    return None if wire is None else wire + (predict_local_s(result, fits) or 0.0)


def arrival_wait_s(result: dict) -> float | None:
    """How long rank 0 waited, per step, for the last rank to finish its backward: the median
    over the timeline's steps of (latest rank's end of compute − rank 0's), from every rank's
    phase intervals (wall clock). A blocking sync cannot start moving bytes before every rank
    has arrived, so this wait is inside the measured sync time but outside the α–β model: with
    4 ranks sharing 2 cores (or other jobs beside them) it is where predictions fall short."""
    ends = {}
    for event in result.get("timeline") or []:
        if event["phase"] == "compute_s":
            key = (event["step"], event["rank"])
            ends[key] = max(ends.get(key, event["end"]), event["end"])
    waits = []
    for step in sorted({step for step, _ in ends}):
        mine = ends.get((step, 0))
        if mine is not None:
            waits.append(max(0.0, max(end for (s, _), end in ends.items() if s == step) - mine))
    return statistics.median(waits) if waits else None


def prediction_table(results: list[dict], fits: dict | None, tolerance: float = TOLERANCE) -> list[dict]:
    """Per run: predicted vs measured blocking sync (seconds), their ratio, and whether it is
    within `tolerance`. Only a *blocking* method's sync time holds its communication; for a
    method that communicates inside backward (its result has no achieved busbw, for that
    reason) the comparison is left empty with the reason."""
    rows = []
    for r in results:
        s = r.get("summary") or {}
        predicted = predict_sync_s(r, fits) if fits else None
        measured = s.get("sync_time_median_s")
        blocking = s.get("achieved_busbw_gb_s") is not None
        row = {"method": method(r), "world_size": r.get("world_size"),
               "ops": {op: [c, b] for op, (c, b) in ops_per_step(r).items()},
               "local_ops": {kind: [c, b] for kind, (c, b) in ops_per_step(r, "local_ops").items()},
               "wire_s": predict_wire_s(r, fits) if fits else None, "bench_wire_s": bench_wire_s(r, fits),
               "local_s": predict_local_s(r, fits) if fits and predicted is not None else None,
               "predicted_s": predicted, "measured_sync_s": measured, "exposed_comm_s": s.get("exposed_comm_s"),
               "cost_model_note": r.get("cost_model_note"), "blocking": blocking, "ratio": None,
               "within_tolerance": None, "arrival_wait_s": arrival_wait_s(r),
               "reason": None if blocking else (s.get("achieved_busbw_reason") or "not a blocking method")}
        if blocking and predicted and measured:
            row["ratio"] = predicted / measured
            row["ratio_with_wait"] = (predicted + (row["arrival_wait_s"] or 0.0)) / measured
            row["within_tolerance"] = abs(row["ratio"] - 1) <= tolerance
            row["within_tolerance_with_wait"] = abs(row["ratio_with_wait"] - 1) <= tolerance
        rows.append(row)
    return rows


def load_fits(path: Path, world_size: int) -> dict | None:
    """The fits of a saved benchmark, if it was made at this world size."""
    if not path.exists():
        return None
    bench = json.loads(path.read_text())
    return fit(bench) if bench["world_size"] == world_size else None


def prediction_text(rows: list[dict]) -> str:
    """prediction_table's rows as a text table (ms): the α–β part, the γ part (the method's own
    passes over its buffers), their sum, the measured sync, the wait for the last rank, what the
    benchmark measured at the method's own message sizes (`bench`: in place of the α–β part,
    the line's share of a miss), with the reason beside a miss."""
    lines = [f"{'method':<24}{'ranks':>6}{'α–β ms':>9}{'γ ms':>8}{'predicted ms':>14}{'measured ms':>13}"
             f"{'ratio':>8}{'wait ms':>9}{'bench ms':>10}  note"]
    for r in rows:
        def ms(v):
            return f"{1e3 * v:.1f}" if v is not None else "—"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
        note = r["reason"] or ("within tolerance" if r["within_tolerance"] else
                               f"within tolerance with the wait ({r['ratio_with_wait']:.2f})"
                               if r.get("within_tolerance_with_wait") else
                               r.get("cost_model_note") or "outside the tolerance (docs/BENCHMARKS.md)")
        if r.get("local_ops") and r.get("local_s") is None and r["predicted_s"] is not None:
            note += "; no γ: the benchmark did not time local passes (rerun labkit bench collectives)"
        lines.append(f"{r['method']:<24}{r['world_size']:>6}{ms(r.get('wire_s')):>9}{ms(r.get('local_s')):>8}"
                     f"{ms(r['predicted_s']):>14}{ms(r['measured_sync_s']):>13}{ratio:>8}{ms(r['arrival_wait_s']):>9}"
                     f"{ms(r.get('bench_wire_s')):>10}  {note}")
    return "\n".join(lines)
