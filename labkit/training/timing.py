"""Step timing and the summary figures, each defined once.

A step is split into phases: data (waiting for the batch), compute (forward +
backward), sync (the strategy's blocking communication) and optimizer. On a GPU
kernels run asynchronously, so the timer records a CUDA event on the current stream at
each boundary and reads them once per step: a phase holds the work queued in it on that
stream, and NCCL's own stream counts only where the loop waits for it — the same split
as on gloo, where a blocking call simply takes its time on the CPU.

Definitions (also in docs/EXPERIMENT_GUIDE.md):
- step_s: wall time of one step, all phases; warm-up steps are left out of summaries.
- throughput_img_s: the steady-state throughput, global batch ÷ the median measured step_s.
  A median, not a mean: a few steps slowed by another program on the machine do not move it.
- throughput_wall_img_s: global batch × measured steps ÷ their summed step_s (wall clock),
  beside it: what the run really achieved, disturbed steps included.
- disturbed_steps: measured steps longer than DISTURBED_FACTOR × the median step — the
  machine was busy with something else then (on 2 shared cores, one other program is enough).
- sync_share_pct: summed sync_s / summed step_s — the time the loop spent blocked in
  the method's own communication. DDP's communication runs inside backward, so for
  DDP it shows up in compute, not here: exposed communication is a separate figure.
"""

from __future__ import annotations

import statistics
import time

PHASES = ("data_s", "compute_s", "sync_s", "optimizer_s")
DISTURBED_FACTOR = 2.0  # a step over 2 × the median step was disturbed: no method's own step varies 2× in steady state


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
        import torch  # here, not at the top: the figures' definitions below are read without torch

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

    def so_far_s(self) -> float:
        """Seconds since the last mark: the current phase so far (what a straggler multiplies).
        On a GPU it waits for the work queued since then, as a loss.item() just before does."""
        if self.cuda:
            now = self._event()
            now.synchronize()
            return self.events[-1][1].elapsed_time(now) / 1e3
        return self._now() - self.last

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


def median_interval(values, z: float = 1.96) -> tuple[float, float]:
    """A distribution-free ~95 % confidence interval of the median, from the order statistics:
    the sorted values at ranks n/2 − z·√n/2 and 1 + n/2 + z·√n/2 (1-based, rounded, clamped to
    the ends; e.g. 10 and 21 of 30). It assumes no
    shape of the distribution, so it suits step times (skewed: a step can only be slowed).
    Few values give a wide interval — with 6 steps it is their whole range, as it should be."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * n ** 0.5 / 2
    low, high = max(1, round(n / 2 - half)), min(n, round(1 + n / 2 + half))
    return ordered[low - 1], ordered[high - 1]


def disturbed(step_s: list[float]) -> list[bool]:
    """Which steps were disturbed: longer than DISTURBED_FACTOR × the median step."""
    median = statistics.median(step_s)
    return [t > DISTURBED_FACTOR * median for t in step_s]


def per_period(steps: list[dict], period: int) -> list[dict]:
    """A method that synchronizes every `period` steps (local SGD: H) has cheap steps and one
    dear one per period; a median over single steps would report the cheap ones and hide the
    dear one. So its figures are taken over whole periods: one record per complete period
    (steps kH+1 … (k+1)H), each timing and count the period's mean per step."""
    if period <= 1:
        return steps
    summed = ("step_s", "data_s", "compute_s", "sync_s", "optimizer_s", "bytes_sent", "bytes_received", "collectives")
    windows = {}
    for s in steps:
        windows.setdefault((s["step"] - 1) // period, []).append(s)
    return [{**group[-1], **{key: sum(s.get(key, 0) for s in group) / period for key in summed if key in group[-1]}}
            for group in windows.values() if len(group) == period]


def summarize(steps: list[dict], warmup: int, global_batch: int, calibration: dict | float | None = None,
              overlaps_backward: bool | None = None, period: int = 1) -> dict:
    """Summary figures over the measured (post-warm-up) steps of rank 0, each defined so
    that it cannot come out physically impossible (docs/EXPERIMENT_GUIDE.md, "What every
    figure means"):

    - t_step = median(step − data wait). t_compute_only = the compute-only step, the smaller
      of the calibration's median (calibration.py: same work, no synchronization) and the
      median of the step's own compute + optimizer phases: those phases hold no blocking
      sync, so a calibration slower than them (the machine was busier then) cannot be right.
    - exposed_comm_s = t_step − t_compute_only: what communication added to the step,
      overlapped or not. With the bound above it is never below the blocking sync (up to
      the median of sums vs sum of medians) and never negative beyond the noise floor.
    - exposed_comm_noise_s: the spread (max − min) of the calibration rounds' medians plus
      the step's own noise, half the width of the ~95 % interval of median(step − data wait)
      over the undisturbed steps (median_interval); a difference from zero (or from the
      blocking sync) smaller than it is noise.
    - throughput_img_s = global batch ÷ median step (steady state); throughput_wall_img_s =
      images ÷ summed step time; disturbed_steps = steps over DISTURBED_FACTOR × the median.
    - achieved_busbw_gb_s = bytes sent per step ÷ median blocking sync time: only for a
      method whose communication all happens inside that sync. A method that communicates
      inside backward (`overlaps_backward`: DDP, PowerSGD, overlap) has no time of its own
      to divide by: null, with `achieved_busbw_reason`.
    `calibration` is calibrate()'s dict (or a bare compute-only time in seconds)."""
    measured = steps[warmup:] if len(steps) > warmup else steps
    measured = per_period(measured, period) or measured  # a run shorter than one period: its steps
    if not measured:
        return {}
    step_s = [s["step_s"] for s in measured]
    total = sum(step_s)
    median_step = statistics.median(step_s)
    flags = disturbed(step_s)
    steady = [s for s, bad in zip(measured, flags) if not bad]  # the method's own steps, for the noise
    low, high = median_interval([s["step_s"] for s in steady])
    no_data = [s["step_s"] - s["data_s"] for s in measured]
    step_no_data = statistics.median(no_data)
    sync = statistics.median(s["sync_s"] for s in measured)
    sent = statistics.median(s["bytes_sent"] for s in measured)
    summary = {
        "measured_steps": len(measured),
        "timing_warmup_steps": len(steps) - len(measured),
        "throughput_img_s": global_batch / median_step,  # steady state: a busy moment does not move it
        "throughput_low_img_s": global_batch / high,  # the ~95 % interval of the median step, as img/s
        "throughput_high_img_s": global_batch / low,
        "throughput_wall_img_s": global_batch * len(measured) / total,  # wall clock, disturbed steps included
        "disturbed_steps": sum(flags),
        "disturbed_threshold_s": DISTURBED_FACTOR * median_step,
        "step_time_median_s": median_step,
        "step_time_low_s": low,
        "step_time_high_s": high,
        "step_time_p90_s": percentile(step_s, 90),
        "data_time_median_s": statistics.median(s["data_s"] for s in measured),
        "compute_time_median_s": statistics.median(s["compute_s"] for s in measured),
        "sync_time_median_s": sync,
        "sync_share_pct": 100 * sum(s["sync_s"] for s in measured) / total,
        "bytes_sent_per_step": sent,
        "collectives_per_step": statistics.median(s["collectives"] for s in measured),
    }
    summary.update(exposed_figures(measured, step_no_data, calibration, overlaps_backward))
    summary.update(busbw_figures(sent, sync, overlaps_backward))
    return summary


def exposed_figures(measured: list[dict], step_no_data: float, calibration, overlaps_backward=None) -> dict:
    """compute_only_step_s, exposed_comm_s/_pct and their noise floor (see summarize)."""
    if isinstance(calibration, (int, float)):
        calibration = {"median_s": float(calibration), "round_medians_s": [float(calibration)], "spread_s": None}
    if not calibration or not calibration.get("median_s"):
        return {"compute_only_step_s": None, "exposed_comm_s": None, "exposed_comm_pct": None,
                "exposed_comm_noise_s": None, "exposed_comm_noise_pct": None,
                "exposed_comm_reason": "no compute-only calibration in this run (calibration_steps=0, or a rank "
                                       "without data): the exposed communication is not known"}
    calibrated = calibration["median_s"]
    step_compute = statistics.median(s["compute_s"] + s["optimizer_s"] for s in measured)
    # A blocking method's compute phases hold no communication, so they bound the compute-only
    # time too; a method that communicates inside backward has its communication in them.
    compute_only = calibrated if overlaps_backward else min(calibrated, step_compute)
    flags = disturbed([s["step_s"] for s in measured])
    low, high = median_interval([s["step_s"] - s["data_s"] for s, bad in zip(measured, flags) if not bad])
    step_noise = (high - low) / 2  # how well this run's steps pin their median down
    spread = calibration.get("spread_s")
    # A blocking method also times its compute in the run itself: where that ran slower than
    # the calibration, the calibration no longer describes the run, and the difference would
    # otherwise pass for communication (exposed above the blocking sync): it is noise too.
    disagreement = 0.0 if overlaps_backward else max(0.0, step_compute - calibrated)
    floor = (spread or 0.0) + step_noise + disagreement if spread is not None else None
    exposed = step_no_data - compute_only
    return {
        "compute_only_step_s": compute_only,
        "compute_only_source": "calibration" if overlaps_backward or calibrated <= step_compute else
        "the step's own compute + optimizer phases (the calibration was slower: the machine was busier then)",
        "compute_only_calibrated_s": calibrated,
        "compute_only_rounds_s": calibration.get("round_medians_s"),
        "compute_only_spread_s": spread,
        "step_noise_s": step_noise,
        "exposed_comm_s": exposed,
        "exposed_comm_pct": 100 * exposed / step_no_data,
        "exposed_comm_noise_s": floor,
        "exposed_comm_noise_pct": 100 * floor / step_no_data if floor is not None else None,
    }


def busbw_figures(sent: float, sync: float, overlaps_backward: bool | None) -> dict:
    """achieved_busbw_gb_s where the communication time is measured, else null with the reason."""
    reason = None
    if not sent:
        reason = "nothing sent"
    elif overlaps_backward is None:
        reason = "the method does not say whether it communicates inside backward (About.overlaps_backward)"
    elif overlaps_backward:
        reason = ("its communication runs inside backward (hooked into autograd), so no blocking sync time "
                  "holds it; see exposed_comm_s")
    elif sync <= 1e-6:
        reason = "no measurable blocking sync time"
    return {"achieved_busbw_gb_s": None if reason else sent / sync / 1e9, "achieved_busbw_reason": reason}
