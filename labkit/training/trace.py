"""A torch.profiler trace of a few steps (`--set trace=true`): what a profiler shows, one file a rank.

The loop calls `tracer.step()` after every optimizer step. The profiler waits through the
warm-up, warms itself up on the last warm-up step, then records the `timeline_steps` steps
after it (the steps the lab's own timeline records) and writes them as Chrome-trace JSON:
trace/rank-<rank>.json in the run folder. Open it in https://ui.perfetto.dev or chrome://tracing;
labkit.report.traces reads it (backward's span, the collectives' spans, the overlapped share).

What it records on the CPU with gloo: every op of the loop's thread (forward's aten ops, backward's
`autograd::engine::evaluate_function: …`, DDP's `c10d::allreduce_` as it hands a bucket over),
and each collective as gloo runs it, `gloo:all_reduce` on gloo's own threads — where DDP's
all-reduces run during backward. On a GPU, CUDA activity too (NCCL's kernels on their stream).
Recording costs time (docs/BENCHMARKS.md): the traced steps are slower, so tracing is off by default.
"""

import os
import tempfile
from pathlib import Path

from labkit.files import write_bytes

# kineto (the profiler's C++ side) logs every start and stop, and on a CUDA build without a GPU an
# error about the missing device count, into each rank's log; only its own level silences it
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402  (after the log level: kineto reads it when it starts)
from torch.profiler import ProfilerActivity, profile, schedule  # noqa: E402


def trace_path(out_dir, rank: int) -> Path:
    return Path(out_dir) / "trace" / f"rank-{rank}.json"


class Tracer:
    """torch.profiler over the steps after warm-up; `step()` after every step, `close()` at the end."""

    def __init__(self, cfg, rank: int, world: int, device):
        self.cfg, self.world = cfg, world
        self.path = trace_path(cfg.out_dir, rank)
        self.written = False
        self.profiler = None
        if not cfg.trace:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        warmup = 1 if cfg.timing_warmup_steps >= 1 else 0  # the profiler's own warm-up: its first step is slow
        when = schedule(wait=max(cfg.timing_warmup_steps - 1, 0), warmup=warmup, active=max(cfg.timeline_steps, 1), repeat=1)
        self.profiler = profile(activities=activities, schedule=when, on_trace_ready=self._write)
        self.profiler.start()

    def step(self):
        if self.profiler is not None:
            self.profiler.step()

    def close(self):
        """Stop the profiler; a run that ended inside the recorded steps writes what it recorded."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None

    def _write(self, profiler):
        # torch's exporter writes to a name: export beside the final file, then replace it atomically
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.path.parent, prefix=".export-") as folder:
            exported = Path(folder) / self.path.name
            profiler.export_chrome_trace(str(exported))
            write_bytes(self.path, exported.read_bytes())
        self.written = True

    def entry(self, total_steps: int) -> dict | None:
        """result.json's `trace`: each rank's file (relative to the run folder) and the steps it covers.
        Called on rank 0 after every rank closed its tracer (and met in a collective since)."""
        if not self.cfg.trace:
            return None
        first = self.cfg.timing_warmup_steps + 1
        last = min(self.cfg.timing_warmup_steps + max(self.cfg.timeline_steps, 1), total_steps)
        if not self.written:
            return {"files": [], "steps": None, "why": f"the run ended within its {self.cfg.timing_warmup_steps} warm-up "
                                                      f"steps, before the traced ones"}
        files = [str(trace_path("", rank)) for rank in range(self.world)]
        return {"files": files, "steps": [first, last], "open_with": "https://ui.perfetto.dev or chrome://tracing"}
