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
    """Steps are timed back to back: a step ends where the next begins, so the loop's own
    bookkeeping between steps lands in the next step's data_s and no time goes unseen.

    On CPU each mark reads perf_counter. On a GPU kernels run asynchronously, so each mark
    records a CUDA event on the current stream instead: it completes when the work queued
    before it on that stream has run, and waits for nothing else — not NCCL's own stream,
    whose all-reduce overlapping backward then stays out of compute, as on gloo, and shows
    where the loop really waits for it (a strategy's wait, DDP's end of backward). The
    events are read once per step, after one synchronize on the last of them in stop()."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.phases, self.intervals, self.record_intervals, self.steps_done = {}, [], False, 0
        self.wall_offset = time.time() - time.perf_counter()  # perf_counter → wall clock, for timelines
        self.events = []  # CUDA: (phase, event) marks of this step, the first one its start

    def _now(self) -> float:
        return time.perf_counter()

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # on the current stream
        return event

    def start(self):
        """Begin the first step of an epoch."""
        self.begin = self.last = self._now()
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.events = [(None, self._event())] if self.cuda else []

    def mark(self, phase: str):
        """Close the current phase and add its time to `phase`."""
        if self.cuda:  # read in stop()
            self.events.append((phase, self._event()))
            return
        now = self._now()
        self.phases[phase] += now - self.last
        if self.record_intervals:
            self.intervals.append((self.steps_done + 1, phase, self.last + self.wall_offset, now + self.wall_offset))
        self.last = now

    def _read_events(self):
        """CUDA: the phases from this step's events, after one synchronize on the last."""
        last = self.events[-1][1]
        last.synchronize()  # the one wait of the step: for the work queued before the last mark
        self.last = self._now()  # the step's end on the host clock, to place the intervals
        durations = [(phase, start.elapsed_time(end) / 1e3)  # ms → s, measured by the GPU
                     for (_, start), (phase, end) in zip(self.events, self.events[1:])]
        self.begin = self.last - sum(seconds for _, seconds in durations)
        at = self.begin
        for phase, seconds in durations:
            self.phases[phase] += seconds
            if self.record_intervals:
                self.intervals.append((self.steps_done + 1, phase, at + self.wall_offset,
                                       at + seconds + self.wall_offset))
            at += seconds
        self.events = [(None, last)]  # the next step begins where this one ended

    def stop(self) -> dict:
        """End this step (and begin the next at the same instant)."""
        if self.cuda:
            self._read_events()
        record = dict(self.phases, step_s=self.last - self.begin)
        self.steps_done += 1
        self.begin, self.phases = self.last, dict.fromkeys(PHASES, 0.0)
        return record


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(steps: list[dict], warmup: int, global_batch: int, compute_only_s: float | None = None) -> dict:
    """Summary figures over the measured (post-warm-up) steps of rank 0.

    exposed_comm_pct = 1 − t_compute_only / t_step, with t_step the median step time less
    its data wait and t_compute_only the median step of the calibration phase (same model,
    batch and device, no synchronization): the share of the step that communication added,
    whether or not the method overlaps it with backward."""
    measured = steps[warmup:] if len(steps) > warmup else steps
    if not measured:
        return {}
    step_s = [s["step_s"] for s in measured]
    total = sum(step_s)
    step_no_data = statistics.median(s["step_s"] - s["data_s"] for s in measured)
    sync = statistics.median(s["sync_s"] for s in measured)
    sent = statistics.median(s["bytes_sent"] for s in measured)
    return {
        "compute_only_step_s": compute_only_s,
        "exposed_comm_s": step_no_data - compute_only_s if compute_only_s else None,
        "exposed_comm_pct": 100 * (1 - compute_only_s / step_no_data) if compute_only_s else None,
        "achieved_busbw_gb_s": sent / sync / 1e9 if sync > 1e-6 and sent else None,
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
