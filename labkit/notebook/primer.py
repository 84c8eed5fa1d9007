"""The collectives primer's helpers: live gloo ranks, the ring's cost and its picture.

    ranks = Ranks(4)                                   # one torchrun job, started once
    ranks.run("x = torch.full((4,), rank + 1.0)", "dist.all_reduce(x)")   # each rank's x, before and after
    ranks.close()                                      # or: with Ranks(4) as ranks: ...

Starting torchrun costs seconds (each rank imports torch), so the ranks start once and
then wait for snippets: the notebook writes cmd-K.py into a shared folder, every rank
runs it and writes out-K-RANK.json. The ranks stop when closed, when the notebook's
kernel disappears (they watch its pid), or when this process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


class Ranks:
    def __init__(self, n: int = 4, timeout_s: float = 15.0, start_timeout_s: float = 180.0):
        self.n, self.timeout_s, self.k = n, timeout_s, 0
        self.dir = Path(tempfile.mkdtemp(prefix="labkit-ranks-"))
        from labkit.jobs.command import Command, start

        # Fresh interpreters (not forked): each rank runs serve() below until closed.
        self.handle = start(Command("labkit.notebook.primer", [str(self.dir), str(os.getpid())], nproc=n,
                                    run_dir=self.dir, run_id="primer", monitor_interval_s=0.1, fork_ranks=False,
                                    env={"OMP_NUM_THREADS": "1"}))
        atexit.register(self.close)
        self._wait([self.dir / f"ready-{r}" for r in range(n)], start_timeout_s, "start")

    def run(self, setup: str, op: str, watch: str = "x"):
        """Run `setup` then `op` on every rank; a table of each rank's `watch` variables
        (comma-separated names) before and after `op`."""
        import pandas as pd

        self.k += 1
        cmd = self.dir / f"cmd-{self.k}.json"
        cmd.with_suffix(".tmp").write_text(json.dumps(dict(setup=setup, op=op, watch=[w.strip() for w in watch.split(",")])))
        cmd.with_suffix(".tmp").rename(cmd)
        outs = [self.dir / f"out-{self.k}-{r}.json" for r in range(self.n)]
        self._wait(outs, self.timeout_s, f"run `{op}`")
        rows = [json.loads(p.read_text()) for p in outs]
        errors = [f"rank {r['rank']}: {r['error']}" for r in rows if "error" in r]
        if errors:
            raise RuntimeError("; ".join(errors))
        table = pd.DataFrame([{**{f"{k} before": v for k, v in r["before"].items()},
                               **{f"{k} after": v for k, v in r["after"].items()}} for r in rows])
        table.index.name = "rank"
        return table

    def _wait(self, files, limit_s, what):
        deadline = time.time() + limit_s
        while not all(f.exists() for f in files):
            if self.handle.poll() is not None:
                raise RuntimeError(f"the ranks stopped (exit {self.handle.returncode}):\n{self.handle.output(1500)}")
            if time.time() > deadline:
                missing = [f.name.rsplit("-", 1)[-1].split(".")[0] for f in files if not f.exists()]
                self.close()
                raise TimeoutError(f"{what}: rank(s) {', '.join(missing)} did not finish within {limit_s:.0f} s "
                                   "(a deadlock? every send needs a matching recv); the ranks were stopped — "
                                   "make a new Ranks() to go on")
            time.sleep(0.02)

    def close(self):
        self.handle.kill()  # nothing of the ranks is left, whatever state they were in
        self.handle.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def serve(folder: Path, parent_pid: int) -> None:
    """One rank: run each command as it appears, until the folder or the parent goes."""
    import psutil
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    (folder / f"ready-{rank}").touch()
    k = 1
    while folder.exists() and psutil.pid_exists(parent_pid):
        cmd = folder / f"cmd-{k}.json"
        if not cmd.exists():
            time.sleep(0.01)
            continue
        job = json.loads(cmd.read_text())
        names = {"torch": torch, "dist": dist, "rank": rank, "world": world}
        out = {"rank": rank}
        try:
            exec(job["setup"], names)
            out["before"] = {w: _plain(eval(w, names)) for w in job["watch"]}
            exec(job["op"], names)
            out["after"] = {w: _plain(eval(w, names)) for w in job["watch"]}
        except Exception as error:
            out["error"] = f"{type(error).__name__}: {error}"
        tmp = folder / f"out-{k}-{rank}.tmp"
        tmp.write_text(json.dumps(out))
        tmp.rename(folder / f"out-{k}-{rank}.json")
        k += 1


# -- this machine's α and β -----------------------------------------------------------

# One ring exchange (send S to the right, receive S from the left, together) at 4 sizes,
# 10 calls each after one warm-up: the microbenchmark's send_recv, small enough for ~1 s.
_EXCHANGE = """
right, left = (rank + 1) % world, (rank - 1) % world
for numel in (256, 16384, 262144, 1048576):
    send, inbox = torch.ones(numel), torch.empty(numel)
    def exchange():
        ops = [dist.P2POp(dist.isend, send, right), dist.P2POp(dist.irecv, inbox, left)]
        [request.wait() for request in dist.batch_isend_irecv(ops)]
    exchange()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(10):
        exchange()
    seconds.append((time.perf_counter() - start) / 10)
"""


def link_alpha_beta(ranks: Ranks, bench_path: Path | None = None) -> dict:
    """This machine's α (seconds per message) and β (seconds per byte) for one point-to-point
    message, with where they come from: the microbenchmark's send_recv fit (`labkit bench
    collectives`) when it ran at this world size, else measured now on these ranks (one ring
    exchange at 4 sizes, the slowest rank's time, fitted as the microbenchmark fits)."""
    from labkit.config import results_root
    from labkit.report.costmodel import fit, load_fits

    path = bench_path or results_root() / "bench" / "collectives.json"
    fits = load_fits(path, ranks.n) or {}
    if "send_recv" in fits:
        source = f"the microbenchmark's send_recv fit ({path.name}, {ranks.n} ranks)"
    else:
        table = ranks.run(setup="import time\nseconds = []", op=_EXCHANGE, watch="seconds")
        slowest = [max(times) for times in zip(*table["seconds after"])]
        rows = [{"op": "send_recv", "size_bytes": 4 * numel, "time_s": t}
                for numel, t in zip((256, 16384, 262144, 1048576), slowest)]
        fits = fit({"rows": rows})
        source = f"measured now: a ring exchange of 1 KB – 4 MB on these {ranks.n} ranks"
    return {"alpha_s": fits["send_recv"]["alpha_s"], "beta_s_per_byte": fits["send_recv"]["beta_s_per_byte"],
            "source": source}


def link_text(link: dict) -> str:
    """'α = 1100 µs, β = 1.12 ns/byte (1/β = 0.89 GB/s)' for a dict of alpha_s, beta_s_per_byte."""
    beta = link["beta_s_per_byte"]
    return (f"α = {link['alpha_s'] * 1e6:.0f} µs, β = {beta * 1e9:.3g} ns/byte"
            + (f" (1/β = {1e-9 / beta:.2f} GB/s)" if beta else " (too small to measure at these sizes)"))


# -- the ring's cost and picture (no torch) ------------------------------------------

def ring_bytes(size_bytes: float, n: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of `size_bytes`."""
    return 2 * (n - 1) / n * size_bytes


def ring_time(size_bytes: float, n: int, alpha_s: float, beta_s_per_byte: float) -> float:
    """α–β model: 2(n−1) steps, each paying the latency α, moving 2(n−1)/n·S bytes at β s/byte."""
    return 2 * (n - 1) * alpha_s + ring_bytes(size_bytes, n) * beta_s_per_byte


def ring_states(n: int):
    """Every step of a ring all-reduce of n chunks on n ranks: (title, holds, moves), where
    holds[r][c] is the set of ranks whose values chunk c of rank r already sums, and moves
    the (rank, chunk) pairs sent in that step."""
    holds = [[{r} for _ in range(n)] for r in range(n)]
    frames = [("start: each rank holds its own gradient, cut in n chunks", [[set(s) for s in row] for row in holds], [])]
    for step in range(n - 1):
        moves = [(r, (r - step) % n) for r in range(n)]
        new = [[set(s) for s in row] for row in holds]
        for r, c in moves:
            new[(r + 1) % n][c] |= holds[r][c]
        holds = new
        frames.append((f"reduce-scatter step {step + 1}: send chunk right, add", [[set(s) for s in row] for row in holds], moves))
    for step in range(n - 1):
        moves = [(r, (r - step + 1) % n) for r in range(n)]
        new = [[set(s) for s in row] for row in holds]
        for r, c in moves:
            new[(r + 1) % n][c] = set(holds[r][c])
        holds = new
        frames.append((f"all-gather step {step + 1}: send chunk right, copy", [[set(s) for s in row] for row in holds], moves))
    return frames


def ring_figure(n: int = 4):
    """One panel per step: rows are ranks, columns chunks; the shade says how many ranks'
    values a chunk sums (dark = all n), the outlined cells are the ones received that step."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    frames = ring_states(n)
    cols = 4
    rows = -(-len(frames) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (title, holds, moves) in zip(axes.flat, frames):
        grid = [[len(holds[r][c]) for c in range(n)] for r in range(n)]
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=n + 1)
        for r in range(n):
            for c in range(n):
                ax.text(c, r, "+".join(map(str, sorted(holds[r][c]))), ha="center", va="center", fontsize=7,
                        color="white" if len(holds[r][c]) == n else "black")
        for r, c in moves:  # outline where each chunk arrived: rank r+1's copy, just updated
            ax.add_patch(Rectangle((c - 0.5, (r + 1) % n - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(n), [f"chunk {c}" for c in range(n)], fontsize=7)
        ax.set_yticks(range(n), [f"rank {r}" for r in range(n)], fontsize=7)
    for ax in list(axes.flat)[len(frames):]:
        ax.axis("off")
    fig.suptitle(f"Ring all-reduce on {n} ranks: red = the chunk each rank just received from rank−1 "
                 "(each frame shows the state after its step)", fontsize=9)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
