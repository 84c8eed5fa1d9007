"""The notebooks' small figures (labkit/notebook/measured.py), on synthetic results: no runs."""

import pytest

from labkit.notebook.measured import ratio_interval, step_interval


def result(step_times, warmup=2):
    return {"name": "r", "config": {"timing_warmup_steps": warmup},
            "steps": [{"step": i + 1, "step_s": t} for i, t in enumerate(step_times)]}


def test_a_period_mean_is_the_throughput_of_steps_that_alternate():
    # an asynchronous server: 4 cheap steps (running ahead), then one dear one (waiting at its bound)
    bounded = result([0.1, 0.1] + [0.1, 0.1, 0.1, 0.1, 1.1] * 12)
    synchronous = result([0.1, 0.1] + [0.4] * 60)
    # single steps: the median lands on the cheap ones and hides the waits
    assert step_interval(bounded)[0] == pytest.approx(0.1)
    # over whole periods of 5: each period's mean is (4 × 0.1 + 1.1) / 5 = 0.3 s, the real rate
    median, low, high = step_interval(bounded, period=5)
    assert median == low == high == pytest.approx(0.3)
    ratio, low, high = ratio_interval(bounded, synchronous, period=5)
    assert ratio == pytest.approx(0.75) and high < 1


def test_incomplete_periods_are_left_out():
    # periods are whole windows of step numbers (steps 4–6 here); step 7 alone begins the next one
    run = result([0.1, 0.1, 0.1] + [0.2, 0.2, 0.2, 5.0], warmup=3)
    assert step_interval(run, period=3)[0] == pytest.approx(0.2)
