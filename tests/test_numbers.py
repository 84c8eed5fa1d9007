"""The figures are defined once and measured honestly: formulas, byte counts, exposed
communication, and small runs of the microbenchmark and the harness benchmark."""

import json

import pytest

from conftest import REPO, run_to
from labkit.measure.collectives import bandwidths
from labkit.measure.costmodel import fit, predict_sync_s


def test_bus_bandwidth_formulas_match_nccl_tests():
    # 100 MB in 0.1 s on 4 ranks: algbw 1 GB/s
    assert bandwidths("all_reduce", 10**8, 0.1, 4) == pytest.approx((1.0, 1.5))  # × 2(n−1)/n
    assert bandwidths("all_gather", 10**8, 0.1, 4) == pytest.approx((1.0, 0.75))  # × (n−1)/n
    assert bandwidths("reduce_scatter", 10**8, 0.1, 8) == pytest.approx((1.0, 0.875))
    assert bandwidths("broadcast", 10**8, 0.1, 4) == pytest.approx((1.0, 1.0))
    assert bandwidths("reduce", 5 * 10**7, 0.1, 2) == pytest.approx((0.5, 0.5))


def test_alpha_beta_fit_recovers_a_known_line():
    rows = [{"op": "all_reduce", "size_bytes": s, "time_s": 1e-4 + s * 2e-9} for s in (1e3, 1e5, 1e7)]
    fits = fit({"rows": rows})
    assert fits["all_reduce"]["alpha_s"] == pytest.approx(1e-4, rel=1e-3)
    assert fits["all_reduce"]["beta_s_per_byte"] == pytest.approx(2e-9, rel=1e-3)
    result = {"strategy": "bucketed", "world_size": 4,
              "summary": {"collectives_per_step": 2, "bytes_sent_per_step": 1.5e6}}  # S = 1e6 message bytes
    assert predict_sync_s(result, fits) == pytest.approx(2 * 1e-4 + 1e6 * 2e-9)


def model_bytes(checkpoint) -> int:
    return sum(t.numel() * t.element_size() for t in checkpoint["model"].values())  # simple_cnn: all trainable


@pytest.mark.parametrize("strategy,nproc,factor", [("ring", 4, 2 * 3 / 4), ("ring", 3, 2 * 2 / 3),
                                                   ("allreduce", 4, 2 * 3 / 4), ("ps", 4, 3)])
def test_bytes_per_step_match_the_analytic_count(tmp_path, strategy, nproc, factor):
    result, checkpoint = run_to(tmp_path / "run", strategy, nproc, "model=simple_cnn", max_steps=2)
    sent = result["steps"][-1]["bytes_sent"]  # rank 0; for ps, the server
    assert sent == pytest.approx(factor * model_bytes(checkpoint), rel=1e-3)


def test_exposed_communication_near_zero_without_sync_and_positive_with(tmp_path):
    alone, _ = run_to(tmp_path / "single", "single", 1, "calibration_steps=5", max_steps=8)
    shared, _ = run_to(tmp_path / "allreduce", "allreduce", 4, "calibration_steps=5", max_steps=8)
    assert abs(alone["summary"]["exposed_comm_pct"]) < 15
    assert shared["summary"]["exposed_comm_pct"] > 20 and shared["summary"]["sync_share_pct"] > 20
    events = shared["timeline"]
    assert {e["rank"] for e in events} == {0, 1, 2, 3} and {"compute_s", "sync_s"} <= {e["phase"] for e in events}


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
    outcome = harness(nproc=2, steps=6, warmup=2, repeats=1)
    assert outcome["plain_img_s"][0] > 0 and outcome["labkit_img_s"][0] > 0
    assert outcome["ratio_of_medians"] == pytest.approx(outcome["labkit_img_s"][0] / outcome["plain_img_s"][0])


def fake_result(strategy, steps, throughput, method=None, **config):
    return {"name": f"{strategy}-{steps}-{config}", "strategy": strategy, "method": method or strategy,
            "world_size": 4, "global_batch": 64, "status": "ok",
            "config": {"profile": "cpu", "model": "m", **config},
            "steps": [{"step": i + 1, "loss": 1.0} for i in range(steps)],
            "summary": {"throughput_img_s": throughput, "total_time_s": steps / 10}}


def test_comparison_holds_full_length_runs_and_tells_options_apart():
    from labkit.report.analysis import comparison_table, runs_frame, select_runs

    results = [fake_result("ddp", 60, 80.0), fake_result("ddp", 8, 50.0), fake_result("bucketed", 20, 70.0),
               fake_result("bucketed", 20, 60.0, method="bucketed fp16"), fake_result("ddp", 60, 90.0),
               fake_result("ddp", 90, 99.0, fault="1:5:kill")]
    chosen = select_runs(results)
    assert [r for r, _ in chosen.left_out] == [results[5], results[1]]  # a fault demo and a short check
    table = comparison_table(runs_frame(chosen.kept), baseline="ddp").set_index("method")
    assert table.loc["ddp", "throughput_img_s"] == 85.0 and table.loc["ddp", "steps"] == 60  # repeats averaged
    assert table.loc["bucketed fp16", "vs_baseline"] == pytest.approx(60 / 85)
