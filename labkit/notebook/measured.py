"""Small figures the method notebooks (02–05b) build their lesson from, out of result.json alone.

Each returns plain numbers with an interval, so a notebook's closing claim is computed, never typed:

- `step_interval(result, phase)`: a phase's median per measured step and its ~95 % interval
  (timing.median_interval: distribution-free, from the order statistics of the steps);
- `ratio_interval(a, b)`: a's median step ÷ b's, its interval from the two medians' intervals
  (the smallest and the largest ratio they allow);
- `difference_interval(a, b, phase)`: a − b of a phase's median, its interval the same way;
- `to_target(result, target_pct)`: the first epoch whose validation top-1 reached the target, the
  training time and the bytes rank 0 had sent by then.

Imports no torch (the notebooks' kernels never do).
"""

from __future__ import annotations

import statistics

from labkit.training.timing import median_interval, per_period


def measured_steps(result: dict) -> list[dict]:
    """The run's steps after its warm-up (all of them when the run is shorter)."""
    steps = result.get("steps") or []
    warmup = (result.get("config") or {}).get("timing_warmup_steps") or 0
    return steps[warmup:] if len(steps) > warmup else steps


def step_interval(result: dict, phase: str = "step_s", period: int = 1) -> tuple[float, float, float]:
    """(median, low, high) of one phase over the measured steps, in seconds; `phase` may also be
    "step_no_data_s" (the step less its wait for data) or any per-step number (bytes_sent).
    `period` > 1 takes the median over whole periods of that many steps, each its mean step
    (timing.per_period): for a method whose steps alternate cheap and dear — an asynchronous
    server runs ahead, then waits at its staleness bound — a median over single steps lands on
    one kind or the other by chance, the mean over a period is its throughput."""
    steps = per_period(measured_steps(result), period)
    if phase == "step_no_data_s":
        values = [s["step_s"] - s.get("data_s", 0.0) for s in steps]
    else:
        values = [s[phase] for s in steps if s.get(phase) is not None]
    if not values:
        raise ValueError(f"{result.get('name')}: no measured step records {phase}")
    low, high = median_interval(values)
    return statistics.median(values), low, high


def ratio_interval(a: dict, b: dict, phase: str = "step_s", period: int = 1) -> tuple[float, float, float]:
    """a's median ÷ b's, with the lowest (a low ÷ b high) and highest (a high ÷ b low) ratio
    the two medians' intervals allow (over periods of `period` steps: step_interval)."""
    ma, la, ha = step_interval(a, phase, period)
    mb, lb, hb = step_interval(b, phase, period)
    return ma / mb, la / hb, ha / lb


def difference_interval(a: dict, b: dict, phase: str = "step_s") -> tuple[float, float, float]:
    """a's median − b's (seconds), with the smallest and largest difference the intervals allow."""
    ma, la, ha = step_interval(a, phase)
    mb, lb, hb = step_interval(b, phase)
    return ma - mb, la - hb, ha - lb


def to_target(result: dict, target_pct: float, margin_se: float = 0.0) -> dict | None:
    """{"epoch" (1-based), "time_s", "MB"} at the first epoch whose validation top-1 reached
    target_pct: the epochs' training time summed (validation left out: every method validates
    alike) and the bytes rank 0 sent in their steps. None when no epoch reached it.
    `margin_se`: reached only when top-1 − margin_se × its binomial standard error is at the
    target: +2 is the pessimistic reading (surely there), −2 the optimistic one (perhaps there),
    so the two bound where a validation set of this size can place the crossing."""
    steps_done, time_s = 0, 0.0
    steps = result.get("steps") or []
    for number, epoch in enumerate(result.get("epochs") or [], 1):
        steps_done += epoch.get("steps") or 0
        time_s += epoch.get("time_s") or 0.0
        top1, images = epoch.get("val_top1"), epoch.get("val_images")
        if top1 is None:
            continue
        se = 100 * ((top1 / 100) * (1 - top1 / 100) / images) ** 0.5 if images else 0.0
        if top1 - margin_se * se >= target_pct:
            return {"epoch": number, "time_s": time_s,
                    "MB": sum(s.get("bytes_sent", 0) for s in steps[:steps_done]) / 1e6}
    return None


def disturbed(result: dict) -> int:
    """Measured steps the run itself counts as disturbed (over 2 × its median step)."""
    return int((result.get("summary") or {}).get("disturbed_steps") or 0)
