"""Reading a run's profiler trace (`--set trace=true`): backward, the collectives, their overlap.

A trace file is Chrome-trace JSON (torch.profiler's export): a list of events, each complete
event (`"ph": "X"`) with a name, a thread (`tid`), a start `ts` and a duration `dur` in µs.
What this module looks for, by the names torch gives them:

    step            `ProfilerStep#k` on the loop's thread (k counts from 0: the lab's step k + 1)
    backward        `autograd::engine::evaluate_function: …` on the loop's thread, one step's
                    first to last (the autograd engine running backward)
    forward         from the end of the step's data fetch (`enumerate(DataLoader)…`) to backward
    optimizer       `Optimizer.step#…`
    communication   each collective as the backend runs it: `gloo:all_reduce` (and `gloo:…`) on
                    gloo's own threads, `nccl:…` and NCCL's kernels on a GPU

The **overlapped share of communication** = the time a collective was running while backward
ran ÷ the time any collective was running (each measured as a union of intervals, so two
collectives at once count once). 1: all of it hidden inside backward (DDP's ideal); 0: all
of it after backward (`bucketed`, `allreduce`). It says when communication ran, not what it
cost: the lab's exposed communication (step − compute-only step) says that.
"""

from __future__ import annotations

import json
from pathlib import Path

BACKWARD = "autograd::engine::evaluate_function: "
LANES = {"forward": "#4477aa", "backward": "#228833", "optimizer": "#99ddff", "communication": "#ee6677"}


def trace_files(run_dir) -> list[Path]:
    """The trace files a run's result.json names (one a rank), as paths."""
    run_dir = Path(run_dir)
    entry = json.loads((run_dir / "result.json").read_text()).get("trace") or {}
    if not entry.get("files"):
        why = entry.get("why", "run it with --set trace=true (labkit.launch(..., trace=True))")
        raise FileNotFoundError(f"{run_dir} has no trace: {why}")
    return [run_dir / name for name in entry["files"]]


def load_events(path) -> list[dict]:
    """The complete events (`"ph": "X"`) of one Chrome-trace file."""
    data = json.loads(Path(path).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def is_collective(event: dict) -> bool:
    name = event.get("name", "")
    return name.startswith(("gloo:", "nccl:")) or (event.get("cat") == "kernel" and "nccl" in name.lower())


def union(intervals) -> list[tuple[float, float]]:
    """Sorted, merged (start, end) intervals: time covered at least once."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def length(intervals) -> float:
    return sum(e - s for s, e in union(intervals))


def intersection(a, b) -> float:
    """How long two sets of intervals are both covered."""
    a, b, total, i, j = union(a), union(b), 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def spans(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Each lane's (start, end) intervals in µs: step, forward, backward, optimizer, communication.
    Backward and forward are one interval per step; communication one per collective."""
    steps = [e for e in events if e["name"].startswith("ProfilerStep#")]
    loop = {e["tid"] for e in steps}  # the loop's thread
    out = {"step": [], "forward": [], "backward": [], "optimizer": [], "communication": []}
    for step in sorted(steps, key=lambda e: e["ts"]):
        start, end = step["ts"], step["ts"] + step["dur"]
        inside = [e for e in events if e["tid"] in loop and start <= e["ts"] < end]
        backward = [e for e in inside if e["name"].startswith(BACKWARD)]
        out["step"].append((start, end))
        if not backward:
            continue
        first = min(e["ts"] for e in backward)
        out["backward"].append((first, max(e["ts"] + e["dur"] for e in backward)))
        fetched = [e["ts"] + e["dur"] for e in inside if e["name"].startswith("enumerate(DataLoader)")
                   and e["ts"] < first]
        out["forward"].append((max(fetched, default=start), first))
    out["optimizer"] = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("Optimizer.step#")]
    out["communication"] = [(e["ts"], e["ts"] + e["dur"]) for e in events if is_collective(e)]
    return out


def overlap(events: list[dict]) -> dict:
    """The overlapped share of communication and what it is made of (seconds), from one rank's events."""
    lanes = spans(events)
    comm_s = length(lanes["communication"]) / 1e6
    inside_s = intersection(lanes["communication"], lanes["backward"]) / 1e6
    return {"steps": len(lanes["step"]), "collectives": len(lanes["communication"]),
            "backward_s": length(lanes["backward"]) / 1e6, "communication_s": comm_s,
            "overlapped_s": inside_s, "overlapped_share": inside_s / comm_s if comm_s > 0 else None}


def draw(events: list[dict], steps: int = 2, ax=None, title: str = ""):
    """One rank's lanes (forward, backward, optimizer, communication) over its first `steps` traced
    steps, in ms from the first one's start: what Perfetto shows, reduced to four lanes."""
    import matplotlib.pyplot as plt

    lanes = spans(events)
    if not lanes["step"]:
        raise ValueError("the trace has no ProfilerStep events: not a trace of labkit's loop")
    shown = sorted(lanes["step"])[:steps]
    origin, stop = shown[0][0], shown[-1][1]
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1.9))
    for row, (lane, color) in enumerate(LANES.items()):
        bars = [(s, e) for s, e in union(lanes[lane]) if s < stop and e > origin]
        ax.broken_barh([((s - origin) / 1e3, (e - s) / 1e3) for s, e in bars], (row + 0.1, 0.8), color=color)
    for start, _ in shown:
        ax.axvline((start - origin) / 1e3, color="#444444", lw=0.6, ls=":")
    ax.set_yticks([row + 0.5 for row in range(len(LANES))], list(LANES), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, (stop - origin) / 1e3)
    ax.set_xlabel("ms since the first traced step began (dotted: a step begins)")
    ax.set_title(title or "From the profiler trace: backward and the collectives", fontsize=9, loc="left")
    ax.figure.tight_layout()
    return ax.figure
