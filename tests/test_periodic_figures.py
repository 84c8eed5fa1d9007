"""A method that synchronizes every H steps (local SGD, DiLoCo) is summarized over whole
periods: its dear sync step must not be outvoted by the cheap ones (timing.per_period)."""

from labkit.training.timing import per_period, summarize


def step(n, seconds, sent):
    return dict(step=n, step_s=seconds, data_s=0.0, compute_s=0.1, sync_s=seconds - 0.1, optimizer_s=0.0,
                bytes_sent=sent, bytes_received=sent, collectives=int(sent > 0))


def test_a_period_of_four_counts_its_sync_step():
    # every 4th step averages the model: 0.5 s and 1 MB; the other three 0.1 s and nothing
    steps = [step(n, 0.5 if n % 4 == 0 else 0.1, 1e6 if n % 4 == 0 else 0) for n in range(1, 31)]
    per_step = summarize(steps, warmup=2, global_batch=64)
    per_h = summarize(steps, warmup=2, global_batch=64, period=4)
    assert per_step["step_time_median_s"] == 0.1 and per_step["bytes_sent_per_step"] == 0  # what a median hides
    assert abs(per_h["step_time_median_s"] - 0.2) < 1e-12  # (3 × 0.1 + 0.5) / 4
    assert abs(per_h["bytes_sent_per_step"] - 0.25e6) < 1e-6
    assert abs(per_h["throughput_img_s"] - 64 / 0.2) < 1e-9
    assert per_h["measured_steps"] == 6  # whole periods only: steps 5-8 … 25-28


def test_period_one_is_the_step_list_itself():
    steps = [step(n, 0.1, 10) for n in range(1, 6)]
    assert per_period(steps, 1) is steps
