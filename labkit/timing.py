"""Step timing and the summary figures, each defined once.

A step is split into phases: data (waiting for the batch), compute (forward +
backward), sync (the strategy's blocking communication) and optimizer. On a GPU
kernels run asynchronously, so the timer synchronizes the device at each boundary:
a phase's time then includes the kernels it launched.

Definitions (also in docs/EXPERIMENT_GUIDE.md):
- step_s: wall time of one step, all phases; warm-up steps are left out of summaries.
- throughput_img_s: global batch × measured steps / their summed step_s.
- sync_share_pct: summed sync_s / summed step_s — the time the loop spent blocked in
  the method's own communication. DDP's communication runs inside backward, so for
  DDP it shows up in compute, not here: exposed communication is a separate figure.
"""

import statistics
import time

import torch

PHASES = ("data_s", "compute_s", "sync_s", "optimizer_s")


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.phases = {}

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self):
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.begin = self.last = self._now()

    def mark(self, phase: str):
        """Close the current phase and add its time to `phase`."""
        now = self._now()
        self.phases[phase] += now - self.last
        self.last = now

    def stop(self) -> dict:
        return dict(self.phases, step_s=self.last - self.begin)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(steps: list[dict], warmup: int, global_batch: int) -> dict:
    """Summary figures over the measured (post-warm-up) steps of rank 0."""
    measured = steps[warmup:] if len(steps) > warmup else steps
    if not measured:
        return {}
    step_s = [s["step_s"] for s in measured]
    total = sum(step_s)
    return {
        "measured_steps": len(measured),
        "warmup_steps": len(steps) - len(measured),
        "throughput_img_s": global_batch * len(measured) / total,
        "step_time_median_s": statistics.median(step_s),
        "step_time_p90_s": percentile(step_s, 90),
        "data_time_median_s": statistics.median(s["data_s"] for s in measured),
        "compute_time_median_s": statistics.median(s["compute_s"] for s in measured),
        "sync_time_median_s": statistics.median(s["sync_s"] for s in measured),
        "sync_share_pct": 100 * sum(s["sync_s"] for s in measured) / total,
        "bytes_sent_per_step": statistics.median(s["bytes_sent"] for s in measured),
        "collectives_per_step": statistics.median(s["collectives"] for s in measured),
    }
