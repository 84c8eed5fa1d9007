"""An alpha–beta model of communication, fitted from the collective microbenchmark.

For one operation, t(S) ≈ α + β·S: α is the fixed cost of a call (latency), β the cost
per byte (1 / bandwidth). A strategy's communication per step is then predicted from
what it says it does — `collectives_per_step` calls moving `bytes_sent_per_step` —
using the fit of the operation it is built on:

    predicted = collectives × α + (bytes_sent / bus_factor) × β

(bytes_sent counts the wire bytes of the ring algorithm; dividing by the op's bus
factor gives back the message bytes S the fit was made with.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .collectives import bus_factor

# The operation each method's communication is made of.
STRATEGY_OP = {"ddp": "all_reduce", "allreduce": "all_reduce", "bucketed": "all_reduce", "overlap": "all_reduce",
               "powersgd": "all_reduce", "ring": "send_recv", "ps": "send_recv", "ps_sharded": "reduce_scatter"}


def fit(bench: dict) -> dict:
    """{op: {"alpha_s": α, "beta_s_per_byte": β}} by least squares over the sizes."""
    fits = {}
    for op in sorted({row["op"] for row in bench["rows"]}):
        rows = [r for r in bench["rows"] if r["op"] == op]
        sizes = np.array([r["size_bytes"] for r in rows], dtype=float)
        times = np.array([r["time_s"] for r in rows])
        beta, alpha = np.polyfit(sizes, times, 1)
        fits[op] = {"alpha_s": max(alpha, 0.0), "beta_s_per_byte": max(beta, 0.0)}
    return fits


def predict_sync_s(result: dict, fits: dict) -> float | None:
    op = STRATEGY_OP.get(result["strategy"])
    summary = result.get("summary", {})
    if op is None or op not in fits or not summary.get("collectives_per_step"):
        return None
    n = result["world_size"]
    factor = bus_factor(op, n) if op != "send_recv" else 1.0
    message_bytes = summary["bytes_sent_per_step"] / factor
    return summary["collectives_per_step"] * fits[op]["alpha_s"] + message_bytes * fits[op]["beta_s_per_byte"]


def load_fits(path: Path, world_size: int) -> dict | None:
    """The fits of a saved benchmark, if it was made at this world size."""
    if not path.exists():
        return None
    bench = json.loads(path.read_text())
    return fit(bench) if bench["world_size"] == world_size else None
