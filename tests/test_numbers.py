"""The figures are defined once and measured honestly: formulas, byte counts, exposed
communication, and small runs of the microbenchmark and the harness benchmark."""

import json

import pandas as pd
import pytest

from conftest import run_to
from labkit.measure.collectives import bandwidths
from labkit.report.costmodel import fit, predict_sync_s


def test_bus_bandwidth_formulas_match_nccl_tests():
    # 100 MB in 0.1 s on 4 ranks: algbw 1 GB/s
    assert bandwidths("all_reduce", 10**8, 0.1, 4) == pytest.approx((1.0, 1.5))  # × 2(n−1)/n
    assert bandwidths("all_gather", 10**8, 0.1, 4) == pytest.approx((1.0, 0.75))  # × (n−1)/n
    assert bandwidths("reduce_scatter", 10**8, 0.1, 8) == pytest.approx((1.0, 0.875))
    assert bandwidths("broadcast", 10**8, 0.1, 4) == pytest.approx((1.0, 1.0))
    assert bandwidths("reduce", 5 * 10**7, 0.1, 2) == pytest.approx((0.5, 0.5))


def test_alpha_beta_fit_recovers_a_known_line_and_predicts_from_the_ops():
    rows = [{"op": "all_reduce", "size_bytes": s, "time_s": 1e-4 + s * 2e-9} for s in (1e3, 1e5, 1e7)]
    fits = fit({"rows": rows})
    assert fits["all_reduce"]["alpha_s"] == pytest.approx(1e-4, rel=1e-3)
    assert fits["all_reduce"]["beta_s_per_byte"] == pytest.approx(2e-9, rel=1e-3)
    # what the strategy counted per step: 2 all-reduces of 1e6 message bytes in all; warm-up step left out
    steps = [{"ops": {"all_reduce": [9, 9e9]}}] + [{"ops": {"all_reduce": [2, 1e6]}}] * 3
    result = {"strategy": "bucketed", "world_size": 4, "summary": {"timing_warmup_steps": 1}, "steps": steps}
    assert predict_sync_s(result, fits) == pytest.approx(2 * 1e-4 + 1e6 * 2e-9)
    # both directions of a parameter server add up: push (3 receives) and pull (3 sends) of S each
    fits["send_recv"] = {"alpha_s": 1e-3, "beta_s_per_byte": 1e-9}
    ps = {"summary": {"timing_warmup_steps": 0}, "steps": [{"ops": {"send_recv": [6, 6e6]}}]}
    assert predict_sync_s(ps, fits) == pytest.approx(6e-3 + 6e-3)
    assert predict_sync_s({"summary": {}, "steps": [{"ops": {"all_gather": [1, 1e6]}}]}, fits) is None  # no fit


def test_gamma_term_adds_the_methods_own_passes_at_the_nearest_measured_size():
    """γ(S) is read at the measured size nearest to a pass's mean size (a fresh 45 MB buffer
    reads the 32 MB figure, over the allocator's threshold, not the 16 MB one), the γ part is
    added to the α–β part and shown apart in the table; a benchmark without passes leaves γ
    missing and says so."""
    from labkit.report.costmodel import LOCAL, gamma_s_per_byte, prediction_table, prediction_text

    sizes = [2**20, 16 * 2**20, 32 * 2**20]
    local_rows = ([{"kind": "in_place", "size_bytes": s, "time_s": s * 2e-10} for s in sizes] +
                  [{"kind": "fresh", "size_bytes": s, "time_s": s * g} for s, g in zip(sizes, (3e-10, 3e-10, 2e-9))])
    rows = [{"op": "all_reduce", "size_bytes": s, "time_s": 1e-4 + s * 2e-9} for s in (1e3, 1e5, 1e7)]
    fits = fit({"rows": rows, "local_rows": local_rows})
    assert fits[LOCAL]["fresh"]["size_bytes"] == sizes
    assert gamma_s_per_byte("fresh", 45e6, fits) == pytest.approx(2e-9)  # nearest by ratio: 32 MB
    assert gamma_s_per_byte("fresh", 20e6, fits) == pytest.approx(3e-10)  # 16 MB
    assert gamma_s_per_byte("in_place", 100, fits) == pytest.approx(2e-10)  # below the grid: its first size
    # one step of a bucketed-like method: 2 all-reduces of 44 MB in all; 2 fresh passes of 22 MB, 2 in place
    step = {"ops": {"all_reduce": [2, 44e6]}, "local_ops": {"fresh": [2, 44e6], "in_place": [2, 44e6]}}
    result = {"strategy": "bucketed", "world_size": 4, "steps": [step] * 3,
              "summary": {"timing_warmup_steps": 1, "sync_time_median_s": 0.2, "achieved_busbw_gb_s": 0.3}}
    wire, local = 2 * 1e-4 + 44e6 * 2e-9, 44e6 * 3e-10 + 44e6 * 2e-10
    assert predict_sync_s(result, fits) == pytest.approx(wire + local)
    row = prediction_table([result], fits)[0]
    assert row["wire_s"] == pytest.approx(wire) and row["local_s"] == pytest.approx(local)
    assert row["ratio"] == pytest.approx((wire + local) / 0.2)
    text = prediction_text([row])
    assert "γ ms" in text.splitlines()[0] and f"{1e3 * local:.1f}" in text
    # `bench`: what the benchmark measured at the run's own sizes (22 MB a call: above its largest
    # size, 10 MB, so at that size's time per byte), the line's share of a miss
    assert row["bench_wire_s"] == pytest.approx(2 * (1e-4 + 1e7 * 2e-9) * 22e6 / 1e7)
    slow = [*rows[:-1], {**rows[-1], "time_s": 2 * rows[-1]["time_s"]}]  # the largest size twice the line
    assert prediction_table([result], fit({"rows": slow, "local_rows": local_rows}))[0]["bench_wire_s"] == \
        pytest.approx(2 * 2 * (1e-4 + 1e7 * 2e-9) * 22e6 / 1e7)  # the line misses it, the column shows it
    # an older benchmark (no local passes): the α–β part alone, the γ part missing and said
    old = prediction_table([result], fit({"rows": rows}))[0]
    assert old["predicted_s"] == pytest.approx(wire) and old["local_s"] is None
    assert "no γ" in prediction_text([old])


def test_relative_fit_lets_small_and_large_messages_both_count():
    """A 10 % error at the largest size swings an ordinary least-squares α below zero (the large
    sizes dominate the squared error); the relative fit keeps α."""
    sizes = [1e3, 1e4, 1e5, 1e6, 1e7, 6.4e7]
    rows = [{"op": "send_recv", "size_bytes": s, "time_s": (1e-4 + s * 1e-9) * (1.1 if s == 6.4e7 else 1.0)}
            for s in sizes]
    fits = fit({"rows": rows})["send_recv"]
    assert fits["alpha_s"] == pytest.approx(1e-4, rel=0.1)
    assert fits["max_rel_error"] < 0.1
    import numpy as np
    beta, alpha = np.polyfit(sizes, [r["time_s"] for r in rows], 1)
    assert alpha < 0  # what the unweighted fit gets wrong: a negative latency


def test_summary_definitions_cannot_produce_impossible_numbers():
    """Synthetic steps: a calibration slower than the step's own compute is not believed
    (exposed is then at least the blocking sync), the noise floor is the calibration's
    spread plus the step's own noise (the half-width of its median's interval: 0 for identical steps; plus, for a blocking method, how much slower its own compute
    ran than the calibration: exposed then stays within sync + floor), and a method that communicates inside backward gets no
    bus bandwidth, with the reason."""
    from labkit.training.timing import summarize

    steps = [dict(step_s=1.0, data_s=0.1, compute_s=0.5, sync_s=0.3, optimizer_s=0.1, bytes_sent=3e8,
                  collectives=1) for _ in range(6)]
    slow = {"median_s": 0.8, "round_medians_s": [0.75, 0.8, 0.85], "spread_s": 0.1}
    s = summarize(steps, 2, 64, slow, overlaps_backward=False)
    assert s["compute_only_step_s"] == pytest.approx(0.6) and s["compute_only_calibrated_s"] == 0.8
    assert s["exposed_comm_s"] == pytest.approx(0.3)
    assert s["exposed_comm_s"] >= s["sync_time_median_s"] - s["exposed_comm_noise_s"]
    assert s["exposed_comm_noise_s"] == pytest.approx(0.1) and s["exposed_comm_noise_pct"] == pytest.approx(100 / 9)
    assert s["achieved_busbw_gb_s"] == pytest.approx(1.0) and s["achieved_busbw_reason"] is None
    # A calibration faster than the run's own compute (0.4 < 0.6): the gap joins the floor, so
    # a blocking method's exposed time (0.5) stays within its sync (0.3) plus the floor.
    quick = summarize(steps, 2, 64, {"median_s": 0.4, "round_medians_s": [0.38, 0.4, 0.43], "spread_s": 0.05}, False)
    assert quick["exposed_comm_s"] == pytest.approx(0.5) and quick["exposed_comm_noise_s"] == pytest.approx(0.25)
    assert quick["exposed_comm_s"] <= quick["sync_time_median_s"] + quick["exposed_comm_noise_s"]
    fast = summarize(steps, 2, 64, {"median_s": 0.5, "round_medians_s": [0.5] * 3, "spread_s": 0.0}, True)
    assert fast["exposed_comm_s"] == pytest.approx(0.4) and fast["compute_only_source"] == "calibration"
    assert fast["achieved_busbw_gb_s"] is None and "backward" in fast["achieved_busbw_reason"]
    none = summarize(steps, 2, 64, None, None)
    assert none["exposed_comm_s"] is None and none["exposed_comm_reason"] and none["achieved_busbw_gb_s"] is None


def steady_steps(n=30, seed=0):
    """n steps as a loop on a quiet machine records them: ~0.34 s each, a few % of jitter."""
    import random

    rng = random.Random(seed)
    return [dict(step_s=0.34 * (1 + 0.03 * rng.random()), data_s=0.002, compute_s=0.30, sync_s=0.0,
                 optimizer_s=0.02, bytes_sent=0, collectives=0) for _ in range(n)]


def test_disturbed_steps_do_not_move_the_throughput_and_are_counted():
    """Issue 22's run: steps 6–9 took 2.4, 3.0, 1.9 and 3.4 s while every other took ~0.34 s.
    The steady-state throughput stays within 5 % of the quiet run's; the wall-clock figure
    beside it shows the loss; the four steps are counted as disturbed (> 2 × the median)."""
    from labkit.training.timing import DISTURBED_FACTOR, summarize

    clean = steady_steps()
    busy = [dict(s) for s in clean]
    for index, seconds in zip((5, 6, 7, 8), (2.4, 3.0, 1.9, 3.4)):
        busy[index]["step_s"] = seconds
    quiet, noisy = summarize(clean, 2, 64), summarize(busy, 2, 64)
    assert noisy["throughput_img_s"] == pytest.approx(quiet["throughput_img_s"], rel=0.05)
    assert noisy["disturbed_steps"] == 4 and quiet["disturbed_steps"] == 0
    assert noisy["measured_steps"] == 28
    assert noisy["throughput_wall_img_s"] < 0.6 * quiet["throughput_wall_img_s"]  # ~93 img/s, as in the issue
    assert quiet["throughput_wall_img_s"] == pytest.approx(quiet["throughput_img_s"], rel=0.05)
    assert noisy["disturbed_threshold_s"] == pytest.approx(DISTURBED_FACTOR * noisy["step_time_median_s"])
    # the interval of the median comes from the undisturbed steps, and holds the median
    assert noisy["throughput_low_img_s"] <= noisy["throughput_img_s"] <= noisy["throughput_high_img_s"]
    assert noisy["throughput_low_img_s"] > 0.9 * quiet["throughput_img_s"]


def test_the_noise_floor_comes_from_the_step_distribution():
    """The step's own noise is the half-width of its median's ~95 % interval: order statistics
    10 and 21 of 30 steps; 0 for identical steps; a disturbed step does not widen it."""
    from labkit.training.timing import median_interval, summarize

    assert median_interval(list(range(1, 31))) == (10, 21) and median_interval([1, 2, 3, 4, 5, 6]) == (1, 6)
    steps = steady_steps()
    calibration = {"median_s": 0.32, "round_medians_s": [0.32] * 3, "spread_s": 0.0}
    s = summarize(steps, 0, 64, calibration, overlaps_backward=True)
    ordered = sorted(x["step_s"] - x["data_s"] for x in steps)
    assert s["step_noise_s"] == pytest.approx((ordered[20] - ordered[9]) / 2)
    assert s["exposed_comm_noise_s"] == pytest.approx(s["step_noise_s"])
    steps[3]["step_s"] = 5.0
    assert summarize(steps, 0, 64, calibration, True)["step_noise_s"] < 0.01


def test_lr_warmup_is_a_function_of_the_step():
    from labkit.config import RunConfig

    cfg = RunConfig(lr=0.02, lr_warmup_steps=10)
    assert [cfg.lr_at(k) for k in (1, 5, 10, 11, 100)] == pytest.approx([0.002, 0.01, 0.02, 0.02, 0.02])
    assert RunConfig(lr=0.02).lr_at(1) == 0.02


def model_bytes(checkpoint) -> int:
    return sum(t.numel() * t.element_size() for t in checkpoint["model"].values())  # simple_cnn: all trainable


@pytest.mark.parametrize("strategy,nproc,factor", [("ring", 4, 2 * 3 / 4), ("ring", 3, 2 * 2 / 3),
                                                   ("allreduce", 4, 2 * 3 / 4), ("ps", 4, 3)])
def test_bytes_per_step_match_the_analytic_count(tmp_path, strategy, nproc, factor):
    result, checkpoint = run_to(tmp_path / "run", strategy, nproc, "model=simple_cnn", max_steps=2)
    sent = result["steps"][-1]["bytes_sent"]  # rank 0; for ps, the server
    assert sent == pytest.approx(factor * model_bytes(checkpoint), rel=1e-3)


def powersgd_values(checkpoint, rank=1, min_compression_rate=2) -> int:
    """Values PowerSGD puts on the wire per step once compressing (Vogels et al.): each
    gradient seen as a matrix n × m is sent as P (n×r) and Q (m×r) where that is at least
    `min_compression_rate` times smaller (PowerSGDState's default), the rest as it is."""
    values = 0
    for tensor in checkpoint["model"].values():
        n = tensor.shape[0]
        m = tensor.numel() // n
        r = min(n, m, rank)
        values += (n + m) * r if (n + m) * r * min_compression_rate < n * m else n * m
    return values


# float64: 8 bytes a value on the wire, not an assumed 4; a fp16 hook sends 2 whatever the dtype.
# 2 ranks: the ring's factor 2(n−1)/n is 1, so the count is numel × element size itself.
@pytest.mark.parametrize("option", ["ddp_hook=fp16", "ddp_hook=bf16"])
def test_a_ddp_hook_counts_two_bytes_a_value_in_float64(tmp_path, option):
    result, checkpoint = run_to(tmp_path / "run", "ddp", 2, "model=simple_cnn", "dtype=float64", option, max_steps=2)
    numel = sum(t.numel() for t in checkpoint["model"].values())
    assert next(iter(checkpoint["model"].values())).element_size() == 8  # really float64
    assert result["steps"][-1]["ops"]["all_reduce"][1] == numel * 2  # n = 2: each all-reduced byte sent once


def test_powersgd_counts_the_bytes_of_its_dtype_in_float64(tmp_path):
    # steps 1 and 2 are plain all-reduce (powersgd_start_iter=2), step 3 compresses
    result, checkpoint = run_to(tmp_path / "run", "powersgd", 2, "model=simple_cnn", "dtype=float64",
                                "powersgd_start_iter=2", max_steps=3)
    first, last = result["steps"][0], result["steps"][-1]
    assert first["bytes_sent"] == model_bytes(checkpoint)  # every float64 gradient once
    assert last["bytes_sent"] == powersgd_values(checkpoint) * 8 < model_bytes(checkpoint) / 10
    assert last["collectives"] == 3  # one bucket: vectors, P, Q


def test_collective_microbenchmark_small(tmp_path):
    from labkit.measure.bench import run_collectives

    bench = run_collectives(2, tmp_path, max_mb=0.07, repeats=2)
    ops = {row["op"] for row in bench["rows"]}
    assert ops == {"all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "send_recv"}
    for row in bench["rows"]:
        assert row["time_s"] > 0 and row["busbw_gb_s"] == pytest.approx(bandwidths(row["op"], row["size_bytes"],
                                                                                   row["time_s"], 2)[1])
    assert (tmp_path / "collectives.png").exists() and json.loads((tmp_path / "collectives.json").read_text())["fits"]


def test_harness_benchmark_small(tmp_path, monkeypatch):
    from labkit.measure.bench import harness

    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path))
    outcome = harness(nproc=2, steps=6, timing_warmup=2, repeats=1)
    assert outcome["plain_img_s"][0] > 0 and outcome["labkit_img_s"][0] > 0
    assert outcome["ratio_of_medians"] == pytest.approx(outcome["labkit_img_s"][0] / outcome["plain_img_s"][0])


def fake_result(strategy, steps, throughput, method=None, **config):
    return {"name": f"{strategy}-{steps}-{config}", "strategy": strategy, "method": method or strategy,
            "world_size": 4, "global_batch": 64, "status": "ok",
            "config": {"profile": "cpu", "model": "m", **config},
            "steps": [{"step": i + 1, "loss": 1.0} for i in range(steps)],
            "summary": {"throughput_img_s": throughput, "total_time_s": steps / 10}}


def test_comparison_holds_full_length_runs_and_tells_options_apart():
    from labkit.report.frames import comparison_table, runs_frame
    from labkit.report.selection import select_runs

    results = [fake_result("ddp", 60, 80.0), fake_result("ddp", 8, 50.0), fake_result("bucketed", 20, 70.0),
               fake_result("bucketed", 20, 60.0, method="bucketed fp16"), fake_result("ddp", 60, 90.0),
               fake_result("ddp", 90, 99.0, fault="1:5:kill"), fake_result("ring", 60, 68.0)]
    chosen = select_runs(results)
    assert [r for r, _ in chosen.left_out] == [results[5], results[1]]  # a fault demo and a short check
    table = comparison_table(runs_frame(chosen.kept), baseline="ddp").set_index("method")
    assert table.loc["ddp", "throughput_img_s"] == 80.0 and table.loc["ddp", "steps"] == 60  # median: the lower middle
    assert table.loc["ring", "vs_baseline"] == pytest.approx(68 / 80)  # the same 60-step setup as ddp's
    # 20 steps against ddp's 60: another setup, so no ratio (issue 22: "vs base" divided 5-step runs by a 30-step one)
    assert pd.isna(table.loc["bucketed fp16", "vs_baseline"])


# -- the cpu profile's own runs: the figures of every method, and the recipe ------------------------
# One short run per method at the profile's defaults (6 steps: 2 warm-up + 4 measured, with the
# compute-only calibration), shared by every test below; float64 runs of the exact methods beside.
# LABKIT_NUMBERS_OUT=DIR keeps the runs, the benchmark and the predicted-vs-measured table in
# DIR/<time>/ (docs/BENCHMARKS.md quotes them); otherwise they live in pytest's tmp folders.

BLOCKING = ("allreduce", "ps", "ring", "bucketed", "ps_sharded")  # all their communication in sync_s
OVERLAPPED = ("ddp", "overlap")  # communicate inside backward (powersgd is a ddp: tests/test_equivalence.py)
STEPS = 6


@pytest.fixture(scope="module")
def numbers_dir(tmp_path_factory):
    import os
    import time
    from pathlib import Path

    kept = os.environ.get("LABKIT_NUMBERS_OUT")
    return Path(kept) / time.strftime("%Y%m%d-%H%M%S") if kept else tmp_path_factory.mktemp("numbers")


@pytest.fixture(scope="module")
def profile_runs(numbers_dir):
    base = numbers_dir / "runs"
    runs = {}
    for strategy in ("single", *OVERLAPPED, *BLOCKING):
        runs[strategy] = run_to(base / strategy, strategy, 1 if strategy == "single" else 4, "calibration_steps=3",
                                max_steps=STEPS)
    return runs


@pytest.fixture(scope="module")
def bench(numbers_dir):
    """The collective microbenchmark on 4 ranks, over the sizes the methods send (to 64 MB)."""
    from labkit.measure.bench import run_collectives

    return run_collectives(4, numbers_dir / "bench", max_mb=64, repeats=2,
                           ops=("all_reduce", "reduce_scatter", "all_gather", "send_recv"))


@pytest.mark.slow
def test_exposed_communication_is_possible_for_every_method(profile_runs):
    """exposed ≥ blocking sync − noise floor; no figure negative beyond the floor; the floor
    is measured (three calibration rounds) and shown."""
    for strategy, (result, _) in profile_runs.items():
        s = result["summary"]
        floor = s["exposed_comm_noise_s"]
        assert floor is not None and floor >= 0 and len(s["compute_only_rounds_s"]) == 3, strategy
        assert s["exposed_comm_s"] >= s["sync_time_median_s"] - floor, (strategy, s)
        assert s["exposed_comm_s"] >= -floor, (strategy, s)
        for key, value in s.items():
            if isinstance(value, (int, float)) and not key.startswith("exposed_comm"):
                assert value >= 0, (strategy, key, value)
    single = profile_runs["single"][0]["summary"]
    assert abs(single["exposed_comm_pct"]) < 15 + single["exposed_comm_noise_pct"]  # no communication to add
    allreduce = profile_runs["allreduce"][0]["summary"]
    assert allreduce["exposed_comm_pct"] > 20 and allreduce["sync_share_pct"] > 20


@pytest.mark.slow
def test_bus_bandwidth_only_where_communication_time_is_measured(profile_runs, bench):
    best = {}
    for row in bench["rows"]:
        best[row["op"]] = max(best.get(row["op"], 0), row["busbw_gb_s"])
    for strategy in OVERLAPPED:
        s = profile_runs[strategy][0]["summary"]
        assert s["achieved_busbw_gb_s"] is None and s["achieved_busbw_reason"], strategy
    for strategy in BLOCKING:
        result = profile_runs[strategy][0]
        s = result["summary"]
        assert s["achieved_busbw_gb_s"] is not None, (strategy, s["achieved_busbw_reason"])
        fastest = max(best[op] for op in result["steps"][-1]["ops"])
        assert s["achieved_busbw_gb_s"] <= 1.5 * fastest, (strategy, s["achieved_busbw_gb_s"], fastest)


@pytest.mark.slow
def test_cost_model_predicts_the_blocking_methods(profile_runs, bench, numbers_dir):
    """Predicted (α–β per op, from the strategy's own op counts, plus γ for the passes over its
    buffers it counts) vs measured blocking sync. The model holds the bytes on the wire and the
    method's own passes, so it may fall short of the measurement (the wait for the last rank,
    load that changed between benchmark and run: docs/BENCHMARKS.md) but never exceed it by more than the
    tolerance, nor fall an order of magnitude short (an op counted once instead of 62
    times, a push or pull left out). The table, with the measured wait for the last rank,
    is printed and kept: the ±25 % target is judged there, against the machine's load."""
    from labkit.report.costmodel import TOLERANCE, prediction_table, prediction_text

    fits = fit(bench)
    table = prediction_text(prediction_table([r for r, _ in profile_runs.values()], fits))
    print(table)
    (numbers_dir / "predictions.txt").write_text(table + "\n")
    # ps alone may exceed it: the model adds its server's 3 sends (and 3 receives) one after
    # another, while gloo moves them at once (docs/BENCHMARKS.md: 1.03 in one run, 1.42 for another's sync)
    over = {"ps": 1.5}
    for strategy in BLOCKING:
        result = profile_runs[strategy][0]
        ratio = predict_sync_s(result, fits) / result["summary"]["sync_time_median_s"]
        assert 0.1 < ratio <= over.get(strategy, 1 + TOLERANCE), (strategy, ratio)


def relative_distance(a, b) -> float:
    """max |a − b| ÷ max |b| over the trainable parameters (report/distance.py's definition)."""
    keys = [k for k in b["model"] if b["model"][k].is_floating_point() and "running_" not in k]
    diff = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in keys)
    return diff / max(b["model"][k].double().abs().max().item() for k in keys)


@pytest.mark.slow
def test_recipe_keeps_the_exact_methods_with_ddp_in_float32(profile_runs):
    """The cpu profile's own configuration (its lr warm-up included), 6 steps, float32:
    allreduce and ps end within 1e-3 (relative) of DDP's parameters."""
    ddp = profile_runs["ddp"][1]
    for strategy in ("allreduce", "ps"):
        assert relative_distance(profile_runs[strategy][1], ddp) < 1e-3, strategy


@pytest.mark.slow
def test_recipe_in_float64_agrees_to_rounding(tmp_path_factory):
    base = tmp_path_factory.mktemp("float64")
    runs = {s: run_to(base / s, s, 4, "dtype=float64", max_steps=STEPS)[1] for s in ("ddp", "allreduce", "ps")}
    for strategy in ("allreduce", "ps"):
        assert relative_distance(runs[strategy], runs["ddp"]) < 1e-9, strategy


def test_single_trains_on_the_recipes_global_batch_and_schedule():
    from labkit.profiles import make_config

    single, ddp = make_config("cpu", strategy="single"), make_config("cpu", strategy="ddp")
    assert single.nproc == 1 and single.global_batch == ddp.global_batch == single.batch_size
    assert [single.lr_at(k) for k in range(1, 50)] == [ddp.lr_at(k) for k in range(1, 50)]
    assert make_config("cpu", strategy="single", batch_size=8).batch_size == 8  # said explicitly: kept
