"""Accuracy against cost (labkit/report/tradeoffs.py): a gap is called only beyond the noise,
bytes are summed over the whole run, and memory is compared with the baseline's."""

import math

from labkit.report.tradeoffs import (accuracy_lines, binomial_se_pct, equal_length, memory_table, tradeoff_table)


def result(method, top1, sent_per_step=1000, steps=30, epochs=3, memory=None, max_steps=0):
    return {"name": f"{method}-{top1}", "method": method, "strategy": method.split()[0], "world_size": 4,
            "config": {"max_steps": max_steps},
            "epochs": [{"epoch": e, "val_top1": top1, "val_images": 300} for e in range(epochs)],
            "steps": [{"step": i + 1, "bytes_sent": sent_per_step} for i in range(steps)],
            "summary": {"total_time_s": 10.0, "step_time_median_s": 0.1}, "memory": memory or []}


def test_binomial_error_of_an_accuracy():
    assert math.isclose(binomial_se_pct(50.0, 300), 100 * math.sqrt(0.25 / 300))
    assert binomial_se_pct(None, 300) is None and binomial_se_pct(50.0, None) is None


def test_a_gap_inside_the_noise_is_not_a_verdict():
    # 300 images: the binomial error at 30 % is 2.6 points, so 2 points apart are not told apart
    table = tradeoff_table([result("ddp", 30.0), result("ddp", 31.0), result("localsgd H=5", 29.0, 200),
                            result("localsgd H=5", 28.5, 200), result("diloco H=5", 15.0, 200),
                            result("diloco H=5", 16.0, 200)])
    lines = {line.split(":")[0]: line for line in accuracy_lines(table, "ddp")}
    assert "not told apart" in lines["localsgd H=5"]
    assert "below ddp by 15.0 points" in lines["diloco H=5"]
    assert "0.20 × ddp's bytes" in lines["localsgd H=5"]  # summed over the run, not a median step


def test_no_accuracy_comparison_across_lengths():
    assert equal_length([result("ddp", 30.0), result("fsdp", 30.0)])
    assert not equal_length([result("ddp", 30.0), result("fsdp", 30.0, epochs=2)])
    assert not equal_length([result("ddp", 30.0, max_steps=5)])


def test_memory_against_the_baseline():
    def ranks(each, peak):
        return [{"params_bytes": each, "grads_bytes": each, "optimizer_state_bytes": each, "peak_bytes": peak,
                 "step_peak_bytes": peak, "start_bytes": 0, "peak_source": "rss"}] * 4
    full, sharded = ranks(100, 1000), ranks(25, 900)
    table = memory_table([result("ddp", 30.0, memory=full), result("fsdp", 30.0, memory=sharded)], "ddp")
    assert dict(zip(table.method, table.vs_baseline)) == {"ddp": 1.0, "fsdp": 0.25}
